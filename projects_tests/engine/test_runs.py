"""r2ios_d2.engine.runs: subprocess steps, schedule overrides, results and final scalars."""

import json
import sys
from pathlib import Path

import pytest

from r2ios_d2.engine import runs

REPO = Path(__file__).resolve().parents[2]
STAGE1 = REPO / "configs" / "synthetic" / "r2ios_tiny_stage1.yaml"


def test_schedule_opts_scale_steps_with_the_iterations():
    max_iter = runs.load_config(STAGE1).SOLVER.MAX_ITER
    assert runs.schedule_opts(STAGE1, max_iter) == []
    assert runs.schedule_opts(STAGE1, max_iter, always=True)[:2] == [
        "SOLVER.MAX_ITER",
        str(max_iter),
    ]
    opts = runs.schedule_opts(STAGE1, 40)
    values = dict(zip(opts[::2], opts[1::2]))
    assert values["SOLVER.MAX_ITER"] == "40"
    steps = eval(values["SOLVER.STEPS"])  # noqa: S307 (our own tuple)
    assert all(0 < s < 40 for s in steps)


def test_final_train_scalar_reads_the_last_logged_value(tmp_path):
    path = tmp_path / "metrics.json"
    rows = [{"iteration": 19, "loss_mask": 0.69}, {"iteration": 20, "other": 1.0}]
    rows.append({"iteration": 39, "loss_mask": 0.41})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert runs.final_train_scalar(path, "loss_mask") == pytest.approx(0.41)
    assert runs.final_train_scalar(path, "missing") is None
    assert runs.final_train_scalar(tmp_path / "absent.json", "loss_mask") is None


def test_step_logs_its_output_and_fails_with_the_log_tail(tmp_path):
    ok = runs.Step([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                   tmp_path / "logs" / "ok.log", cwd=tmp_path, threads=3)  # fmt: skip
    assert ok.wait() >= 0
    assert (tmp_path / "logs" / "ok.log").read_text().strip() == "3"
    bad = runs.Step([sys.executable, "-c", "print('the reason'); raise SystemExit(3)"],
                    tmp_path / "bad.log", cwd=tmp_path)  # fmt: skip
    with pytest.raises(runs.StepError, match="the reason"):
        bad.wait()


def test_run_at_most_runs_every_step(tmp_path):
    steps = [([sys.executable, "-c", f"print({i})"], tmp_path / f"{i}.log") for i in range(3)]
    assert len(runs.run_at_most(steps, 2, cwd=tmp_path)) == 3
    assert [(tmp_path / f"{i}.log").read_text().strip() for i in range(3)] == ["0", "1", "2"]


def test_runner_skips_what_is_done(tmp_path):
    runner = runs.TrainEvalRunner(repo=tmp_path, python="false")  # would fail if started
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "model_final.pth").write_bytes(b"")
    assert runner.train(STAGE1, tmp_path / "train", [], tmp_path / "t.log") is None
    results = runs.results_file(tmp_path / "eval")
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"results": {"segm": {"APr50": 1.0}}}))
    job = runs.EvalJob(STAGE1, "", tmp_path / "eval")
    assert runner.evaluate(job) is None
    runner.evaluate_all([job], parallel=2)
    assert runner.results(tmp_path / "eval") == {"segm": {"APr50": 1.0}}
