"""tools/run_demo.py helpers: the results table, schedule overrides, final training scalars."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("r2ios_run_demo", REPO / "tools/run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schedule_opts_scale_steps_with_the_iterations(demo):
    assert (
        demo.schedule_opts("r2ios_tiny_stage1.yaml", demo._max_iter("r2ios_tiny_stage1.yaml")) == []
    )
    opts = demo.schedule_opts("r2ios_tiny_stage1.yaml", 40)
    values = dict(zip(opts[::2], opts[1::2]))
    assert values["SOLVER.MAX_ITER"] == "40"
    steps = eval(values["SOLVER.STEPS"])  # noqa: S307 (our own tuple)
    assert all(0 < s < 40 for s in steps)


def test_final_train_scalar_reads_the_last_logged_value(demo, tmp_path):
    path = tmp_path / "metrics.json"
    rows = [{"iteration": 19, "loss_mask": 0.69}, {"iteration": 20, "other": 1.0}]
    rows.append({"iteration": 39, "loss_mask": 0.41})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert demo.final_train_scalar(path, "loss_mask") == pytest.approx(0.41)
    assert demo.final_train_scalar(path, "missing") is None
    assert demo.final_train_scalar(tmp_path / "absent.json", "loss_mask") is None


def test_results_table_has_every_row_and_the_baseline(demo):
    segm = {"APr50": 41.0, "APr60": 30.0, "APr70": 16.0, "APr_vol": 35.0}
    rows = {"stage2 (gate)": segm, "Mask R-CNN heads (stock detectron2, 10 it)": segm}
    table = demo.results_table(rows, {"stage2 (gate)": {"AP50": 50.0, "AP70": 20.0}}, {})
    lines = table.splitlines()
    assert len(lines) == 4 and "Mask R-CNN" in lines[3]
    assert "| 41.0 | 30.0 | 16.0 | 35.0 | 50.0 | 20.0 | - |" in lines[2]
