"""tools/run_demo.py: the results table, its steps through the shared train -> evaluate
runner (fake subprocesses: no real training), resuming."""

import importlib.util
import json
from pathlib import Path

import pytest

import r2ios_d2.data.synthetic
import r2ios_d2.engine.runs as runs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("r2ios_run_demo", REPO / "tools/run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_table_has_every_row_and_the_baseline(demo):
    segm = {"APr50": 41.0, "APr60": 30.0, "APr70": 16.0, "APr_vol": 35.0}
    rows = {"stage2 (gate)": segm, "Mask R-CNN heads (stock detectron2, 10 it)": segm}
    table = demo.results_table(rows, {"stage2 (gate)": {"AP50": 50.0, "AP70": 20.0}}, {})
    lines = table.splitlines()
    assert len(lines) == 4 and "Mask R-CNN" in lines[3]
    assert "| 41.0 | 30.0 | 16.0 | 35.0 | 50.0 | 20.0 | - |" in lines[2]


class _FakeStep:
    """Stands in for the subprocesses: writes what train_net.py / visualize.py would."""

    calls = []

    def __init__(self, cmd, log_file, cwd=None, threads=None):
        cmd = [str(c) for c in cmd]
        self.calls.append(cmd)
        if cmd[1].endswith("visualize.py"):
            out = Path(cmd[cmd.index("--output") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "0_trace.png").write_bytes(b"")
            return
        out = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        if "--eval-only" in cmd:
            segm = {m: 20.0 for m in ("APr50", "APr60", "APr70", "APr_vol")}
            path = runs.results_file(out)
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"results": {"segm": segm, "bbox": {"AP50": 30.0}}}))
        else:
            out.mkdir(parents=True)
            (out / "model_final.pth").write_bytes(b"")
            rows = [{"iteration": 9, "loss_mask": 0.5, "r2ios/loss_mask_t4": 0.25}]
            (out / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def wait(self) -> float:
        return 0.0


def test_demo_trains_evaluates_and_resumes(demo, tmp_path, monkeypatch):
    _FakeStep.calls = []
    monkeypatch.setattr(runs, "Step", _FakeStep)
    monkeypatch.setattr(r2ios_d2.data.synthetic, "prepare_synthetic_benchmark", lambda *a, **k: 0)
    monkeypatch.setattr(demo, "_plot_mask_losses", lambda *a: None)
    out = tmp_path / "demo"
    assert demo.main(["--output", str(out), "--stage1-iters", "8", "--stage2-iters", "2"]) == 0
    trainings = [c for c in _FakeStep.calls if "--resume" in c]
    assert [Path(c[c.index("OUTPUT_DIR") + 1]).name for c in trainings] == [
        "mask_rcnn_heads",
        "stage1",
        "stage2",
    ]
    max_iters = [c[c.index("SOLVER.MAX_ITER") + 1] for c in trainings]
    assert max_iters == ["10", "8", "2"]  # the baseline: as many as both stages
    assert trainings[2][trainings[2].index("MODEL.WEIGHTS") + 1] == str(
        out / "stage1" / "model_final.pth"
    )
    assert len([c for c in _FakeStep.calls if "--eval-only" in c]) == 5
    result = json.loads((out / "results.json").read_text())
    assert list(result) == ["segm", "bbox", "final_mask_loss", "seconds"]
    assert list(result["segm"])[-1] == "Mask R-CNN heads (stock detectron2, 10 it)"
    assert result["final_mask_loss"] == {
        "stage1 (no gate)": pytest.approx(0.25),  # r2ios/loss_mask_t<T>
        "Mask R-CNN heads (stock detectron2, 10 it)": pytest.approx(0.5),
    }
    assert "| stage2 (gate) | 20.0 | 20.0 | 20.0 | 20.0 | 30.0 | - | - |" in (
        (out / "results.md").read_text()
    )

    _FakeStep.calls = []  # everything is there: a second run starts no subprocess
    assert demo.main(["--output", str(out), "--stage1-iters", "8", "--stage2-iters", "2"]) == 0
    assert _FakeStep.calls == []
