"""tools/heldout.py (``tools/benchmark.py --heldout``) and the ablation on a held-out variant:
options, the commands they run (``train_net.py`` replaced by a fake step) and the tables."""

import json
import re
import sys
from pathlib import Path

import pytest

import r2ios_d2.engine.runs as runs
from r2ios_d2.data.synthetic import HELDOUT_VARIANTS

REPO = Path(__file__).resolve().parents[2]
PLUMBING = {"OUTPUT_DIR", "MODEL.WEIGHTS", "SEED"}
DATA = {"DATASETS.TRAIN", "DATASETS.TEST", "MODEL.ROI_HEADS.NUM_CLASSES"}


@pytest.fixture(scope="module")
def tools():
    """The modules ``heldout``, ``ablation`` and ``benchmark`` of ``tools/``."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import ablation
        import benchmark
        import heldout

        yield heldout, ablation, benchmark
    finally:
        sys.path.remove(str(REPO / "tools"))
        for name in ("ablation", "benchmark", "benchmark_speed", "heldout"):
            sys.modules.pop(name, None)


@pytest.fixture()
def heldout(tools):
    return tools[0]


class _FakeStep:
    """Stands in for a train_net.py subprocess: writes model_final.pth, or the results of the
    dataset of the command's last DATASETS.TEST (APr50 = 10 x the number of classes + seed)."""

    calls = []

    def __init__(self, cmd, log_file, cwd=None, threads=None):
        cmd = [str(c) for c in cmd]
        self.calls.append(cmd)
        out = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        if "--eval-only" in cmd:
            test = [cmd[i + 1] for i, c in enumerate(cmd) if c == "DATASETS.TEST"][-1]
            dataset = re.search(r'"([^"]+)"', test).group(1)
            k = int(cmd[len(cmd) - 1 - cmd[::-1].index("MODEL.ROI_HEADS.NUM_CLASSES") + 1])
            seed = int(cmd[cmd.index("SEED") + 1])
            segm = {m: 10.0 * k + seed for m in ("APr50", "APr60", "APr70", "APr_vol")}
            path = runs.results_file(out, dataset)
            path.parent.mkdir(parents=True)
            result = {"segm": segm, "bbox": {"AP50": 1.0, "AP70": 0.5}}
            path.write_text(json.dumps({"results": result}))
        else:
            out.mkdir(parents=True)
            (out / "model_final.pth").write_bytes(b"")

    def wait(self) -> float:
        return 2.0


@pytest.fixture()
def fake_steps(monkeypatch):
    _FakeStep.calls = []
    monkeypatch.setattr(runs, "Step", _FakeStep)
    return _FakeStep.calls


def _opts(cmd):
    """The ``KEY value`` overrides of a train_net.py command (after its flags)."""
    start = cmd.index("OUTPUT_DIR") if "--eval-only" not in cmd else cmd.index("MODEL.WEIGHTS")
    rest = cmd[start:]
    return list(zip(rest[::2], rest[1::2]))


def test_parser_and_variant_selection(heldout):
    args = heldout.build_parser().parse_args(
        [
            "--variants",
            "dense",
            "texture4",
            "--seeds",
            "0",
            "1",
            "--scale",
            "0.5",
            "--jobs",
            "3",
            "--configs-dir",
            "configs/other",
            "--tag",
            "x",
        ]  # fmt: skip
    )
    assert (args.seeds, args.scale, args.jobs, args.configs_dir) == (
        [0, 1],
        0.5,
        3,
        "configs/other",
    )
    assert heldout.select_variants(args) == ["texture4", "dense"]  # table order
    defaults = heldout.build_parser().parse_args([])
    assert heldout.select_variants(defaults) == list(HELDOUT_VARIANTS)
    assert defaults.jobs == 2 and defaults.configs_dir == "configs/synthetic"
    with pytest.raises(SystemExit):
        heldout.select_variants(heldout.build_parser().parse_args(["--variants", "nope"]))


def test_benchmark_dispatches_heldout_with_shared_options(tools, monkeypatch):
    heldout, ablation, benchmark = tools
    ran = []
    monkeypatch.setattr(heldout, "run", lambda a: ran.append((a.heldout_variants, a.seeds, a.jobs)))
    monkeypatch.setattr(ablation, "run", lambda a: ran.append(("ablation", a.dataset_variant)))
    assert benchmark.main(["--heldout", "--seeds", "3"]) == 0
    assert benchmark.main(["--heldout", "dense", "--jobs", "1"]) == 0
    assert benchmark.main(["--ablation", "--dataset-variant", "texture4"]) == 0
    assert ran == [(None, [3], 2), (["dense"], None, 1), ("ablation", "texture4")]


def test_summary_is_mean_and_std_over_variants(heldout):
    def run(variant, seed, row, apr50, secs):
        segm = {"APr50": apr50, "APr60": 1.0, "APr70": 2.0, "APr_vol": 3.0}
        return {"variant": variant, "seed": seed, "row": row, "segm": segm,
                "bbox": {"AP50": 4.0, "AP70": None}, "train_seconds": secs}  # fmt: skip

    per_run = [
        run("a", 0, "r2ios", 10.0, 100.0),
        run("a", 1, "r2ios", 20.0, 300.0),  # variant a: mean 15 over its seeds
        run("b", 0, "r2ios", 35.0, None),
        run("a", 0, "mask_rcnn_heads", 5.0, 50.0),
    ]
    rows = [r for r in heldout.ROWS if r.name in ("r2ios", "mask_rcnn_heads")]
    s = heldout.summarize(per_run, rows, ["a", "b"])
    r2ios = s["mean_over_variants"][0]
    assert r2ios["row"] == "r2ios" and r2ios["n_variants"] == 2
    assert r2ios["mean"]["APr50"] == pytest.approx(25.0)  # (15 + 35) / 2
    assert r2ios["std"]["APr50"] == pytest.approx(2**0.5 * 10)
    assert r2ios["mean"]["train_seconds"] == pytest.approx(200.0)  # b's is unknown
    assert r2ios["mean"]["box_AP70"] is None
    a = next(p for p in s["per_variant"] if p["variant"] == "a" and p["row"] == "r2ios")
    assert a["APr50"] == pytest.approx(15.0) and a["n_seeds"] == 2
    heads = s["mean_over_variants"][1]
    assert heads["n_variants"] == 1 and heads["std"]["APr50"] is None  # one variant: no std
    md = heldout.heldout_tables(s)
    assert "25.0 ± 14.1" in md and "| 200 " in md and "| 5.0 " in md and "–" in md
    assert md.count("R2-IOS stage 2 (gate)") == 3  # the mean table and a, b


def test_heldout_changes_only_datasets_and_classes(heldout, tmp_path, monkeypatch, fake_steps):
    prepared = []
    monkeypatch.setattr(heldout, "prepare_data", lambda v: prepared.append(list(v)))
    argv = ["--variants", "texture4", "dense", "--work-dir", str(tmp_path / "work")]
    argv += ["--results-dir", str(tmp_path / "res")]
    assert heldout.main(argv) == 0
    assert prepared == [["texture4", "dense"]]
    trainings = [c for c in fake_steps if "--eval-only" not in c]
    evals = [c for c in fake_steps if "--eval-only" in c]
    assert len(trainings) == 2 * 3 and len(evals) == 2 * len(heldout.ROWS)
    for cmd in trainings + evals:
        opts = dict(_opts(cmd))
        # at the full schedule only the datasets, NUM_CLASSES and plumbing differ
        extra = {
            "eval_r2ios_per_proposal": {"MODEL.R2IOS.OUTPUT_MODE"},
            "eval_r2ios_test_t1": {"MODEL.R2IOS.TEST_NUM_ITERATIONS"},
            "eval_r2ios_refine_all": {"MODEL.R2IOS.TEST_REFINE_NMS"},
        }.get(Path(opts["OUTPUT_DIR"]).name, set())
        assert set(opts) == DATA | PLUMBING | extra or set(opts) == DATA | PLUMBING - {
            "MODEL.WEIGHTS"
        }
        variant = "texture4" if "texture4" in opts["DATASETS.TRAIN"] else "dense"
        assert f"/{variant}/seed0/" in opts["OUTPUT_DIR"]
        k = str(len(HELDOUT_VARIANTS[variant].spec.classes))
        assert opts["MODEL.ROI_HEADS.NUM_CLASSES"] == k
        if "--eval-only" in cmd:
            assert opts["DATASETS.TEST"] == f'("r2ios_heldout_{variant}_val",)'
            assert opts["MODEL.WEIGHTS"].endswith("model_final.pth")
        else:
            assert opts["DATASETS.TEST"] == "()"  # trainings do not evaluate
    stage2 = [c for c in trainings if c[c.index("--config-file") + 1].endswith("stage2.yaml")]
    for cmd in stage2:
        opts = dict(_opts(cmd))
        assert opts["MODEL.WEIGHTS"] == str(
            Path(opts["OUTPUT_DIR"]).parent / "stage1" / "model_final.pth"
        )
    heads = [c for c in trainings if "mask_rcnn_heads_tiny" in c[c.index("--config-file") + 1]]
    assert len(heads) == 2  # its YAML already runs as many iterations as both stages
    it = heldout.iterations(REPO / "configs/synthetic", 1.0)
    heads_yaml = runs.load_config(REPO / "configs/synthetic/mask_rcnn_heads_tiny.yaml")
    assert it["mask_rcnn_heads"] == it["stage1"] + it["stage2"] == heads_yaml.SOLVER.MAX_ITER
    result = json.loads((tmp_path / "res" / "heldout.json").read_text())
    assert list(result["variants"]) == ["texture4", "dense"]
    means = {m["row"]: m["mean"]["APr50"] for m in result["mean_over_variants"]}
    assert means["r2ios"] == pytest.approx(50.0)  # 10 x (4 + 6) classes / 2
    assert result["mean_over_variants"][1]["std"]["APr50"] == pytest.approx(2**0.5 * 10)
    assert result["mean_over_variants"][1]["mean"]["train_seconds"] == pytest.approx(4.0)
    assert "± " in (tmp_path / "res" / "heldout.md").read_text()

    fake_steps.clear()  # a second run finds every result and runs nothing
    assert heldout.main(argv) == 0
    assert fake_steps == []


def test_quick_scales_every_schedule_alike(heldout, tmp_path, monkeypatch, fake_steps):
    monkeypatch.setattr(heldout, "prepare_data", lambda v: None)
    argv = ["--quick", "--variants", "large_sparse", "--work-dir", str(tmp_path / "w")]
    argv += ["--results-dir", str(tmp_path / "res"), "--tag", "t"]
    assert heldout.main(argv) == 0
    max_iter = {
        Path(c[c.index("OUTPUT_DIR") + 1]).name: dict(_opts(c))["SOLVER.MAX_ITER"]
        for c in fake_steps
        if "--eval-only" not in c
    }
    assert max_iter == {"stage1": "8", "stage2": "2", "mask_rcnn_heads": "10"}
    assert (tmp_path / "res" / "heldout_quick_t.json").is_file()


def test_ablation_runs_on_a_dataset_variant(tools, tmp_path, monkeypatch, fake_steps):
    ablation = tools[1]
    prepared = []
    monkeypatch.setattr(ablation, "prepare_heldout_data", prepared.append)
    monkeypatch.setattr(ablation, "prepare_synthetic_data", lambda: pytest.fail("demo data"))
    argv = ["--dataset-variant", "texture4", "--variants", "r2ios", "mask_rcnn_heads"]
    argv += ["--seeds", "0", "--stage1-iters", "4", "--stage2-iters", "2"]
    argv += ["--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "res")]
    assert ablation.main(argv) == 0
    assert prepared == ["texture4"]
    for cmd in fake_steps:
        opts = dict(_opts(cmd))
        assert opts["DATASETS.TRAIN"] == '("r2ios_heldout_texture4_train",)'
        assert opts["MODEL.ROI_HEADS.NUM_CLASSES"] == "4"
        assert "ablation_s1-4_s2-2_texture4" in opts["OUTPUT_DIR"]
    result = json.loads((tmp_path / "res" / "ablation_texture4.json").read_text())
    assert result["test_dataset"] == "r2ios_heldout_texture4_val"
    assert [v["name"] for v in result["variants"]] == ["r2ios", "mask_rcnn_heads"]
