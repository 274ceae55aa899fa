"""Smoke tests of the benchmark tools at tiny sizes: every code path, no timing assertions,
no real training (``train_net.py`` subprocesses are replaced by a fake step)."""

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_r2ios_cfg

import r2ios_d2.engine.runs as runs
from r2ios_d2.benchmarking.records import PeakMemory, cpu_description, cpu_details, result_header

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tools():
    """The modules ``benchmark``, ``benchmark_speed`` and ``ablation`` of ``tools/``."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import ablation
        import benchmark
        import benchmark_speed

        yield benchmark, benchmark_speed, ablation
    finally:
        sys.path.remove(str(REPO / "tools"))
        for name in ("ablation", "benchmark", "benchmark_speed"):
            sys.modules.pop(name, None)


@pytest.fixture()
def speed(tools):
    return tools[1]


@pytest.fixture()
def ablation(tools):
    return tools[2]


def test_speed_writes_rows_ratios_and_goals(speed, tmp_path):
    argv = ["--widths", "0.0625", "--proposals", "16", "32", "--iterations", "1", "4"]
    argv += ["--repeats", "1", "--image-size", "64", "96", "--train-images", "1"]
    argv += ["--results-dir", str(tmp_path), "--tag", "test", "--no-demo"]
    assert speed.main(argv) == 0
    result = json.loads((tmp_path / "speed_cpu_test.json").read_text())
    assert (tmp_path / "speed_cpu_test.md").read_text().startswith("# Speed and memory")
    # per proposal count: baseline, T=1, T=4 with skip on and off, and with the refine budget
    assert len(result["inference"]) == 2 * 5
    for row in result["inference"]:
        if row["method"] == "baseline":
            assert row["heads_ratio_to_baseline"] == pytest.approx(1.0)
            assert row["active_per_iteration"] is None
        else:  # what the heads put into the EventStorage
            assert row["active_per_iteration"][0] == row["proposals"]
    assert abs(result["widths"][0]["bg_fraction_t1_r2ios"] - 0.9) < 0.1
    skip_off = [r for r in result["inference"] if r["T"] == 4 and r["skip_background"] is False]
    assert all(r["active_per_iteration"] == [r["proposals"]] * 4 for r in skip_off)
    skip_on = [r for r in result["inference"] if r["T"] == 4 and r["skip_background"]]
    assert all(len(r["active_per_iteration"]) <= 4 for r in skip_on)
    assert all(r["active_per_iteration"][1] < r["proposals"] for r in skip_on)
    for n in (16, 32):  # the budget refines a subset of what skip-background alone refines
        budget, plain = (
            next(r for r in skip_on if r["proposals"] == n and bool(r["refine_nms"]) == b)
            for b in (True, False)
        )
        assert budget["refine_nms"] == 0.5
        assert budget["active_per_iteration"][0] == plain["active_per_iteration"][0]
        assert sum(budget["active_per_iteration"]) <= sum(plain["active_per_iteration"])
    assert sum("TEST_REFINE_NMS 0.5" in g["goal"] for g in result["goals"]) == 2
    # The bound from the layers alone: on the rows whose later iterations ran, from T = 1's
    # total; between T = 1's and the measured T = 4's is not asserted (timings).
    for row in result["inference"]:
        later = any((row["active_per_iteration"] or [0])[1:])
        assert ("layers_alone_after_first_ms" in row) == (row["method"] == "R2-IOS" and later)
        if "layers_alone_after_first_ms" in row:
            t1 = next(
                r
                for r in result["inference"]
                if r["T"] == 1 and r["method"] == "R2-IOS" and r["proposals"] == row["proposals"]
            )
            least = t1["total_ms"] + row["layers_alone_after_first_ms"]
            assert row["layers_alone_after_first_ms"] > 0
            assert row["least_ratio_to_T1"] == pytest.approx(least / t1["total_ms"])
            base = row["total_ms"] / row["total_ratio_to_baseline"]
            assert row["least_ratio_to_baseline"] == pytest.approx(least / base)
    inference_goals = [g for g in result["goals"] if g["goal"].startswith("inference")]
    assert inference_goals and all("layers alone: ≥ " in g["measured"] for g in inference_goals)
    assert [(r["method"], r["T"], r["gate"]) for r in result["train"]] == [
        ("baseline", None, None),
        ("R2-IOS", 1, False),
        ("R2-IOS", 4, False),
        ("R2-IOS", 4, True),
    ]
    assert any("GPU" in g["goal"] and g["met"] is None for g in result["goals"])
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"] == torch.__version__
    assert result["cpu_linear"].startswith("onednn")  # the configs' default, in the note too
    assert f"Fully connected layers of every model: {result['cpu_linear']}" in result["note"]


def test_speed_puts_every_model_on_the_chosen_cpu_linear_backend(speed, tmp_path, monkeypatch):
    from torch import nn

    seen = []
    real = speed.build_model

    def build_and_record(cfg):  # R2-IOS and the baseline train model (the baseline inference
        model = real(cfg)  # heads are built apart: checked below through set_cpu_linear)
        seen.append(model)
        return model

    calls = []
    set_real = speed.set_cpu_linear
    monkeypatch.setattr(speed, "build_model", build_and_record)
    monkeypatch.setattr(
        speed,
        "set_cpu_linear",
        lambda m, b, mb: calls.append((type(m).__name__, b, mb)) or set_real(m, b, mb),
    )
    argv = ["--widths", "0.0625", "--proposals", "16", "--iterations", "1", "4", "--repeats", "1"]
    argv += ["--image-size", "64", "96", "--train-images", "1", "--results-dir", str(tmp_path)]
    argv += ["--tag", "torch", "--no-demo", "--cpu-linear", "torch"]
    assert speed.main(argv) == 0
    result = json.loads((tmp_path / "speed_cpu_torch.json").read_text())
    assert result["cpu_linear"] == "torch"
    # the baseline's inference heads and its whole train model (the R2-IOS heads set their own)
    assert calls == [("StandardROIHeads", "torch", 32.0), ("R2IOSRCNN", "torch", 32.0)]
    linears = {type(m) for net in seen for m in net.modules() if isinstance(m, nn.Linear)}
    assert len(seen) == 3 and linears == {nn.Linear}  # R2-IOS twice, the baseline once


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: {model}
model name\t: AMD EPYC
flags\t\t: fpu sse2 {flags} fma

processor\t: 1
model name\t: another CPU
flags\t\t: avx512f
"""


@pytest.mark.parametrize(
    "family, model, flags, features, details",
    [
        ("25", "1", "avx2", ["avx2"], " (family 25 model 1, AVX2, no AVX-512)"),
        (
            "25",
            "17",
            "avx2 avx512f avx512bw avx512_bf16",
            ["avx512f", "avx512_bf16", "avx2"],
            " (family 25 model 17, AVX-512 (avx512_bf16))",
        ),
        ("6", "85", "avx", [], " (family 6 model 85, no AVX2)"),
    ],
)
def test_results_name_the_cpus_vector_extensions(family, model, flags, features, details):
    text = _CPUINFO.format(family=family, model=model, flags=flags)
    cpu = cpu_description(text)  # the first processor's fields only
    assert cpu == {
        "cpu_model": "AMD EPYC",
        "cpu_family": family,
        "cpu_model_number": model,
        "cpu_features": features,
    }
    machine = {"command": "x", "date": "d", "cpu_count": 2, "torch": "t", "torch_threads": 1}
    machine.update(detectron2="v", **cpu)
    assert cpu_details(machine) == details
    assert f"2 × AMD EPYC{details}; torch t" in result_header({"machine": machine})
    # results written before the features were recorded keep their header
    old = {k: v for k, v in machine.items() if k not in ("cpu_family", "cpu_features")}
    old.pop("cpu_model_number")
    assert cpu_details(old) == "" and "2 × AMD EPYC; torch" in result_header({"machine": old})


def test_peak_memory_sees_a_large_cpu_allocation():
    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del x
    if mem.delta is None:
        pytest.skip("this kernel does not allow resetting the peak RSS")
    assert mem.delta >= 48


def test_ablation_schedule_scales_the_yaml_schedule(ablation):
    path = REPO / "configs/synthetic/r2ios_tiny_stage1.yaml"
    max_iter = ablation.yaml_max_iter(path)
    opts, n = ablation.ablation_schedule(path, 0.5, None)
    assert n == round(max_iter * 0.5)
    values = dict(zip(opts[::2], opts[1::2]))
    assert all(s < n for s in eval(values["SOLVER.STEPS"]))  # noqa: S307 (our own tuple)
    assert values["SOLVER.CHECKPOINT_PERIOD"] == str(10 * n)
    assert ablation.ablation_schedule(path, 0.5, 7)[1] == 7
    # the YAML's own length still gives explicit overrides (recorded in the result)
    assert ablation.ablation_schedule(path, 1.0, None)[0][:2] == ["SOLVER.MAX_ITER", str(max_iter)]


def test_rows_take_their_overrides_from_the_yaml_files(ablation):
    only_test = ablation.recipe("ablations/recursive_only_testing.yaml")
    assert only_test.config.name == "r2ios_tiny_stage1.yaml"
    assert list(only_test.train_opts) == ["MODEL.R2IOS.NUM_ITERATIONS", "1"]
    assert ablation.eval_opts(only_test)[-2:] == ["MODEL.R2IOS.TEST_NUM_ITERATIONS", "4"]
    literal = ablation.recipe("ablations/paper_literal.yaml")
    assert literal.config.name == "r2ios_tiny_stage2.yaml"
    assert "MODEL.WEIGHTS" not in literal.train_opts and "OUTPUT_DIR" not in literal.train_opts
    assert dict(zip(literal.train_opts[::2], literal.train_opts[1::2])) == {
        "MODEL.R2IOS.SEG_AWARE_INPUT": "logits",
        "MODEL.R2IOS.SEG_AWARE_SCALE": "1.0",
        "MODEL.R2IOS.SEG_AWARE_GRAD_SCALE": "1.0",
        "MODEL.R2IOS.CONF_LOSS_WEIGHT": "0.0",
        "MODEL.R2IOS.TRAIN_MOVE_BACKGROUND": "False",
    }
    baseline = ablation.recipe("synthetic/mask_rcnn_heads_tiny.yaml")
    assert baseline.train_opts == () and ablation.tested_iterations(baseline) == 1
    # every YAML of configs/ablations is used by a row
    used = {f for r in ablation.ROWS for f in (r.stage1, r.stage2) if f}
    assert {f"ablations/{p.name}" for p in (REPO / "configs/ablations").glob("*.yaml")} <= used


def test_rows_sharing_a_model_must_train_it_alike(ablation):
    ablation.check_shared_models(ablation.ROWS)
    bad = [ablation.ROWS[0], ablation.Row("x", None, "T1", "ablations/recursive_2.yaml")]
    with pytest.raises(ValueError, match="share model T1"):
        ablation.check_shared_models(bad)


class _FakeStep:
    """Stands in for a train_net.py subprocess: writes model_final.pth or sds_results.json."""

    calls = []

    def __init__(self, cmd, log_file, cwd=None, threads=None):
        cmd = [str(c) for c in cmd]
        self.calls.append(cmd)
        out = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        if "--eval-only" in cmd:
            seed = int(cmd[cmd.index("SEED") + 1])
            t = int(cmd[cmd.index("MODEL.R2IOS.TEST_NUM_ITERATIONS") + 1])
            segm = {m: 10.0 * t + seed for m in ("APr50", "APr60", "APr70", "APr_vol")}
            path = runs.results_file(out)
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"results": {"segm": segm, "bbox": {"AP50": 1.0}}}))
        else:
            out.mkdir(parents=True)
            (out / "model_final.pth").write_bytes(b"")

    def wait(self) -> float:
        return 0.0


@pytest.fixture()
def fake_steps(monkeypatch):
    _FakeStep.calls = []
    monkeypatch.setattr(runs, "Step", _FakeStep)
    return _FakeStep.calls


def test_ablation_shares_stage1_models_reuses_results_and_aggregates(
    ablation, tmp_path, monkeypatch, fake_steps
):
    prepared = []
    monkeypatch.setattr(ablation, "prepare_synthetic_data", lambda: prepared.append(True))
    argv = ["--seeds", "0", "2", "--jobs", "2", "--stage1-iters", "4"]
    argv += ["--stage2-iters", "2", "--work-dir", str(tmp_path / "work")]
    argv += ["--results-dir", str(tmp_path / "res")]
    assert ablation.main(argv) == 0
    assert prepared  # the ablation makes its data and proposals on a fresh clone
    trainings = [c for c in fake_steps if "--eval-only" not in c]
    outputs = sorted(Path(c[c.index("OUTPUT_DIR") + 1]).name for c in trainings)
    # per seed: 10 stage-1 models (9 R2-IOS, the Mask R-CNN heads baseline) and 6 stage-2
    # models; recursive_4 and R2-IOS share s1_T4, recursive_1 and "recursive only in testing"
    # share s1_T1
    assert len(trainings) == 2 * 16 and len(set(outputs)) == 16
    baseline = [c for c in trainings if "s1_mask_rcnn" in c[c.index("OUTPUT_DIR") + 1]]
    assert len(baseline) == 2
    for c in baseline:  # its own config, as many iterations as both R2-IOS stages (4 + 2)
        assert c[c.index("--config-file") + 1].endswith("mask_rcnn_heads_tiny.yaml")
        assert c[c.index("SOLVER.MAX_ITER") + 1] == "6"
    assert len([c for c in fake_steps if "--eval-only" in c]) == 2 * len(ablation.ROWS)
    result = json.loads((tmp_path / "res" / "ablation.json").read_text())
    assert [v["name"] for v in result["variants"]] == [r.name for r in ablation.ROWS]
    only_test = next(v for v in result["variants"] if v["name"] == "recursive_only_testing")
    assert only_test["mean"]["APr50"] == pytest.approx(41.0)  # T = 4, seeds 0 and 2
    assert only_test["std"]["APr50"] == pytest.approx(2**0.5)
    assert (only_test["stage1_model"], only_test["stage2_gate"]) == ("T1", False)
    assert "recursive_only_testing" in (tmp_path / "res" / "ablation.md").read_text()

    fake_steps.clear()  # a second run finds every result and trains nothing
    assert ablation.main(argv) == 0
    assert fake_steps == []


def test_quick_ablation_runs_the_documented_variants(ablation, tmp_path, monkeypatch, fake_steps):
    monkeypatch.setattr(ablation, "prepare_synthetic_data", lambda: None)
    argv = ["--quick", "--work-dir", str(tmp_path / "work")]
    argv += ["--results-dir", str(tmp_path / "res")]
    assert ablation.main(argv) == 0
    result = json.loads((tmp_path / "res" / "ablation_quick.json").read_text())
    assert [v["name"] for v in result["variants"]] == ablation.QUICK_VARIANTS
    assert result["seeds"] == [0]
    # s1_T1, s1_T4, s2_T4 and the baseline
    assert len([c for c in fake_steps if "--eval-only" not in c]) == 4


def test_benchmark_dispatches_to_both_tools(tools, monkeypatch):
    benchmark, speed, ablation = tools
    ran = []
    monkeypatch.setattr(speed, "run", lambda args: ran.append(("speed", args.quick, args.jobs)))
    monkeypatch.setattr(ablation, "run", lambda args: ran.append(("ablation", args.seeds)))
    assert benchmark.main(["--speed", "--ablation", "--quick", "--seeds", "3"]) == 0
    assert ran == [("speed", True, 2), ("ablation", [3])]
    with pytest.raises(SystemExit):
        benchmark.main(["--quick"])


def test_speed_demo_part_writes_trained_ratios_profile_and_train_steps(
    speed, tmp_path, monkeypatch
):
    """The demo part on tiny versions of the demo's configs, with a saved checkpoint as the
    "trained" weights and synthetic images instead of the demo's dataset."""
    from detectron2.modeling import build_model

    import r2ios_d2.benchmarking.speed_demo as speed_demo
    from r2ios_d2.benchmarking.speed_setup import random_proposals, train_batch

    tiny = ["MODEL.VGG.WIDTH", "0.0625", "MODEL.ROI_BOX_HEAD.FC_DIM", "32"]
    tiny += ["MODEL.R2IOS.AE_HIDDEN_DIM", "32", "MODEL.R2IOS.MASK_SIZE", "20"]
    tiny += ["MODEL.ROI_MASK_HEAD.CONV_DIM", "8"]
    demo_cfg = speed_demo.demo_cfg
    monkeypatch.setattr(
        speed_demo,
        "demo_cfg",
        lambda name, device, opts=(): demo_cfg(name, device, tiny + list(opts)),
    )
    images = []
    for i in range(2):
        x = {"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)}
        x.update(height=128, width=192, image_id=i, proposals=random_proposals(12, 64, 96, "cpu"))
        images.append(x)
    inputs = speed_demo.DemoInputs(images, "synthetic")
    monkeypatch.setattr(speed_demo, "load_demo_inputs", lambda cfg, n: inputs)
    batches = [train_batch(64, 96, 2, 16, 5, "cpu")]
    monkeypatch.setattr(speed_demo, "load_demo_train_batches", lambda cfg, n: batches)
    weights = tmp_path / "stage2.pth"
    torch.save({"model": build_model(speed_demo.demo_cfg("stage2", "cpu")).state_dict()}, weights)

    # not the checkpoints of a real demo run, if demo_output/ has them
    monkeypatch.setattr(speed_demo, "default_weights", lambda name: None)
    argv = ["--quick", "--widths", "0.0625", "--proposals", "16", "--iterations", "1", "4"]
    argv += ["--image-size", "64", "96", "--train-images", "1"]
    argv += ["--demo-stage1-weights", str(weights), "--demo-stage2-weights", str(weights)]
    argv += ["--results-dir", str(tmp_path), "--tag", "demo"]
    assert speed.main(argv) == 0
    demo = json.loads((tmp_path / "speed_cpu_quick_demo.json").read_text())["demo"]
    assert {(r["stage"], r["proposals"], r["case"]) for r in demo["inference"]} == {
        (stage, source, case)
        for stage in ("stage1", "stage2")
        for source in ("selective_search", "random_16")
        for case in ("R2-IOS T=1", "R2-IOS T=4", "R2-IOS T=4, all refined", "stock heads")
    }
    for r in demo["inference"]:
        assert r["ms_per_image"] > r["heads_ms"] > 0 and r["profile_ms"]["backbone"] > 0
        if r["case"].startswith("R2-IOS"):
            # The demo configs' mask from the output box is its own stage, not an iteration.
            assert "output_box_masks" in r["profile_ms"]
            assert ("mask_head_ae t2" in r["profile_ms"]) == r["case"].startswith("R2-IOS T=4")
            assert "mask_head_ae t5" not in r["profile_ms"]
        if r["case"] == "R2-IOS T=1":
            assert r["iterations_after_first_ms"] == 0
        # The layers of iterations 2..T alone: a lower bound on T = 4 from T = 1's time.
        if r["case"].startswith("R2-IOS T=4") and any(r["active_per_iteration"][1:]):
            t1 = next(
                x["ms_per_image"]
                for x in demo["inference"]
                if (x["stage"], x["proposals"], x["case"])
                == (r["stage"], r["proposals"], "R2-IOS T=1")
            )
            floor = r["layers_alone_after_first_ms"]
            assert floor > 0
            assert r["least_ratio_to_T1"] == pytest.approx((t1 + floor) / t1)
            assert r["least_ratio_to_stock"] == pytest.approx(
                r["least_ratio_to_T1"] * t1 * r["ratio_to_stock"] / r["ms_per_image"]
            )
        elif not r["case"].startswith("R2-IOS T=4"):
            assert r["layers_alone_after_first_ms"] is None and r["least_ratio_to_T1"] is None
        if r["case"].startswith("R2-IOS T=4"):
            assert r["active_per_iteration"][0] == (32 if r["proposals"] == "random_16" else 24)
            assert "box_head t1" in r["profile_ms"] and "nms" in r["profile_ms"]
        elif r["case"] == "stock heads":
            assert r["ratio_to_stock"] == pytest.approx(1.0) and "paste" in r["profile_ms"]
    # The demo recipe's budget refines a subset of the proposals that refining all does.
    for stage in ("stage1", "stage2"):
        for source in ("selective_search", "random_16"):
            budget, every = (
                next(
                    r["active_per_iteration"]
                    for r in demo["inference"]
                    if (r["stage"], r["proposals"], r["case"]) == (stage, source, case)
                )
                for case in ("R2-IOS T=4", "R2-IOS T=4, all refined")
            )
            assert budget[0] == every[0] and sum(budget) <= sum(every)
    # The configs' CPU_LINEAR ("onednn"), then the stock heads and stage 2 on torch's F.linear,
    # then stage 2 with torchvision's RoIAlign backward (the stock heads' own) and the stock
    # heads with R2-IOS's matrix products.
    models = ["stock", "stage1", "stage2", "stock (torch)", "stage2 (torch)"]
    models += ["stage2 (torchvision RoIAlign grad)", "stock (matmul RoIAlign grad)"]
    assert [r["model"] for r in demo["train"]] == models
    linears = ["onednn"] * 3 + ["torch"] * 2 + ["onednn"] * 2
    assert [r["cpu_linear"] for r in demo["train"]] == linears
    grads = ["torchvision", "matmul", "matmul", "torchvision", "matmul", "torchvision", "matmul"]
    assert [r["cpu_roi_align_grad"] for r in demo["train"]] == grads
    assert [(r["T"], r["gate"]) for r in demo["train"]] == [
        (None, None),
        (4, False),
        (4, True),
        (None, None),
        (4, True),
        (4, True),
        (None, None),
    ]
    stock = {
        (r["cpu_linear"], r["cpu_roi_align_grad"]): r["step_ms"]
        for r in demo["train"]
        if r["T"] is None
    }
    for r in demo["train"]:
        assert r["step_ms"] == pytest.approx(statistics.median(r["step_ms_all"]))  # one batch
    for r in demo["train"]:  # against the stock heads on its own linear backend
        ref = stock[r["cpu_linear"], "torchvision"]
        assert r["ratio_to_stock"] == pytest.approx(r["step_ms"] / ref)
        same = stock.get((r["cpu_linear"], r["cpu_roi_align_grad"]))
        if same is None:  # stage 2 on torch's F.linear with the products: no such stock row
            assert r["ratio_to_stock_same_roi_grad"] is None
        else:
            assert r["ratio_to_stock_same_roi_grad"] == pytest.approx(r["step_ms"] / same)
    assert all({"backbone", "roi_heads", "backward"} <= set(r["profile_ms"]) for r in demo["train"])
    assert demo["skipped"] == []
    md = (tmp_path / "speed_cpu_quick_demo.md").read_text()
    assert "Demo models, inference with trained weights" in md and "box_head t1" in md
    goals = json.loads((tmp_path / "speed_cpu_quick_demo.json").read_text())["goals"]
    assert sum("trained demo" in g["goal"] for g in goals) == 2 * 3
    assert all("layers alone: ≥ " in g["measured"] for g in goals if "trained demo" in g["goal"])
    assert "least ×T=1" in md
    assert sum("demo config" in g["goal"] for g in goals) == 2 * 2  # and on the same backward


def test_stage_profile_times_module_calls_per_pass_and_leaves_out_those_of_a_containing_stage():
    from r2ios_d2.benchmarking.speed_profile import StageProfile

    class Holder:
        def __init__(self):
            self.layer = torch.nn.Linear(2, 2)

        def again(self, x):
            return self.layer(x)

    holder, x = Holder(), torch.zeros(1, 2)
    profile = StageProfile("cpu", {"layer": holder.layer})
    profile.wrap(holder, "again", "outside_iterations", contains_modules=True)
    with profile:
        for _ in range(2):
            profile.new_pass()
            holder.layer(x)
            holder.layer(x)
            holder.again(x)
    assert sorted(profile.ms) == ["layer t1", "layer t2", "outside_iterations"]
    assert profile.passes == 2 and all(v >= 0 for v in profile.per_pass().values())
    assert "again" not in holder.__dict__  # unwrapped after the block


def test_demo_train_step_is_the_mean_of_each_batchs_median():
    from r2ios_d2.benchmarking.speed_demo import _per_batch_median_mean

    # two batches of different cost, three round-robin repeats, one outlier in batch 0
    times = [10.0, 100.0, 11.0, 101.0, 50.0, 102.0]
    assert _per_batch_median_mean(times, 2) == pytest.approx((11.0 + 101.0) / 2)
    assert _per_batch_median_mean([3.0, 1.0, 2.0], 1) == 2.0


def test_layers_alone_run_the_heads_layers_on_the_given_number_of_rows():
    """One iteration's layers (box head, mask head's layers, predictor), each once per run on
    ``rows`` rows, with boxes repeated where fewer are given; the heads are left as they were."""
    from detectron2.modeling import build_model

    from r2ios_d2.benchmarking.speed_demo import layers_alone_ms
    from r2ios_d2.benchmarking.speed_setup import random_proposals

    model = build_model(tiny_r2ios_cfg()).eval()
    heads = model.roi_heads
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
    boxes = random_proposals(3, 64, 96, "cpu").proposal_boxes.tensor
    seen = []
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args: seen.append((type(mod).__name__, len(args[0])))
        )
        for m in (heads.box_head, heads.box_predictor)
    ]
    try:
        ms = layers_alone_ms(heads, feats, boxes, 7, "cpu", repeats=4)
    finally:
        for h in handles:
            h.remove()
    assert ms > 0
    assert len(seen) == 2 * 5 and all(n == 7 for _, n in seen)  # warm-up + 4 repeats
    assert not heads.training and heads.mask_head._derived is None
