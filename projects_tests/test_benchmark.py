"""Smoke tests of tools/benchmark.py at tiny sizes: every code path, no timing assertions."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("r2ios_benchmark", REPO / "tools/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_speed_writes_rows_ratios_and_goals(bench, tmp_path):
    argv = ["--speed", "--widths", "0.0625", "--proposals", "16", "32", "--iterations", "1", "4"]
    argv += ["--repeats", "1", "--image-size", "64", "96", "--train-images", "1"]
    argv += ["--results-dir", str(tmp_path), "--tag", "test"]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "speed_cpu_test.json").read_text())
    assert (tmp_path / "speed_cpu_test.md").read_text().startswith("# Speed and memory")
    # per proposal count: baseline, T=1, T=4 with skip on and off
    assert len(result["inference"]) == 2 * 4
    for row in result["inference"]:
        if row["method"] == "baseline":
            assert row["heads_ratio_to_baseline"] == pytest.approx(1.0)
        else:
            assert row["active_per_iteration"][0] == row["proposals"]
    assert abs(result["widths"][0]["bg_fraction_t1_r2ios"] - 0.9) < 0.1
    skip_off = [r for r in result["inference"] if r["T"] == 4 and r["skip_background"] is False]
    assert all(r["active_per_iteration"] == [r["proposals"]] * 4 for r in skip_off)
    assert [(r["method"], r["T"], r["gate"]) for r in result["train"]] == [
        ("baseline", None, None),
        ("R2-IOS", 1, False),
        ("R2-IOS", 4, False),
        ("R2-IOS", 4, True),
    ]
    assert any("GPU" in g["goal"] and g["met"] is None for g in result["goals"])
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"] == torch.__version__


def test_peak_memory_sees_a_large_cpu_allocation(bench):
    with bench.PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del x
    if mem.delta is None:
        pytest.skip("this kernel does not allow resetting the peak RSS")
    assert mem.delta >= 48


def test_schedule_opts_scale_the_yaml_schedule(bench):
    path = REPO / "configs/synthetic/r2ios_tiny_stage1.yaml"
    solver = bench._yaml_solver(path)
    opts, n = bench.schedule_opts(path, 0.5, None)
    assert n == round(solver.MAX_ITER * 0.5)
    values = dict(zip(opts[::2], opts[1::2]))
    assert all(s < n for s in eval(values["SOLVER.STEPS"]))  # noqa: S307 (our own tuple)
    assert bench.schedule_opts(path, 0.5, 7)[1] == 7


def _fake_run_logged(calls):
    """Stands in for the train_net.py subprocess: writes model_final.pth or sds_results.json."""

    def run(cmd, log, threads=0):
        calls.append(cmd)
        out = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        if "--eval-only" in cmd:
            seed = int(cmd[cmd.index("SEED") + 1])
            t = int(cmd[cmd.index("MODEL.R2IOS.TEST_NUM_ITERATIONS") + 1])
            segm = {m: 10.0 * t + seed for m in ("APr50", "APr60", "APr70", "APr_vol")}
            path = out / "inference" / "r2ios_synthetic_val" / "sds_results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"results": {"segm": segm, "bbox": {"AP50": 1.0}}}))
        else:
            out.mkdir(parents=True)
            (out / "model_final.pth").write_bytes(b"")
        return 0.0

    return run


def test_ablation_shares_stage1_models_reuses_results_and_aggregates(bench, tmp_path, monkeypatch):
    calls, prepared = [], []
    monkeypatch.setattr(bench, "_run_logged", _fake_run_logged(calls))
    monkeypatch.setattr(bench, "prepare_synthetic_data", lambda: prepared.append(True))
    argv = ["--ablation", "--seeds", "0", "2", "--jobs", "2", "--stage1-iters", "4"]
    argv += ["--stage2-iters", "2", "--work-dir", str(tmp_path / "work")]
    argv += ["--results-dir", str(tmp_path / "res")]
    assert bench.main(argv) == 0
    assert prepared  # the ablation makes its data and proposals on a fresh clone
    trainings = [c for c in calls if "--eval-only" not in c]
    outputs = sorted(Path(c[c.index("OUTPUT_DIR") + 1]).name for c in trainings)
    # per seed: 9 stage-1 models (8 R2-IOS, the Mask R-CNN heads baseline) and 5 stage-2
    # models; recursive_4 and R2-IOS share s1_T4, recursive_1 and "recursive only in testing"
    # share s1_T1
    assert len(trainings) == 2 * 14 and len(set(outputs)) == 14
    baseline = [c for c in trainings if "s1_mask_rcnn" in c[c.index("OUTPUT_DIR") + 1]]
    assert len(baseline) == 2
    for c in baseline:  # its own config, as many iterations as both R2-IOS stages (4 + 2)
        assert c[c.index("--config-file") + 1].endswith("mask_rcnn_heads_tiny.yaml")
        assert c[c.index("SOLVER.MAX_ITER") + 1] == "6"
    assert len([c for c in calls if "--eval-only" in c]) == 2 * len(bench.VARIANTS)
    result = json.loads((tmp_path / "res" / "ablation.json").read_text())
    only_test = next(v for v in result["variants"] if v["name"] == "recursive_only_testing")
    assert only_test["mean"]["APr50"] == pytest.approx(41.0)  # T = 4, seeds 0 and 2
    assert only_test["std"]["APr50"] == pytest.approx(2**0.5)
    assert "recursive_only_testing" in (tmp_path / "res" / "ablation.md").read_text()

    calls.clear()  # a second run finds every result and trains nothing
    assert bench.main(argv) == 0
    assert calls == []


def test_quick_ablation_runs_the_documented_variants(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "_run_logged", _fake_run_logged(calls))
    monkeypatch.setattr(bench, "prepare_synthetic_data", lambda: None)
    argv = ["--ablation", "--quick", "--work-dir", str(tmp_path / "work")]
    argv += ["--results-dir", str(tmp_path / "res")]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "res" / "ablation_quick.json").read_text())
    assert [v["name"] for v in result["variants"]] == bench.QUICK_VARIANTS
    assert result["seeds"] == [0]
    # s1_T1, s1_T4, s2_T4 and the baseline
    assert len([c for c in calls if "--eval-only" not in c]) == 4
