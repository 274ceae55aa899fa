"""Preemption: SIGTERM / SIGINT / SIGUSR1 end training after the step in progress with a
checkpoint that --resume continues exactly (exit status 75); a second signal during that write
changes nothing; an evaluation stops at once."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.engine import HookBase
from reliability_utils import (
    TRAIN_NET,
    make_dataset,
    run_train_net,
    tiny_opts,
    tiny_run_setup,
)

import r2ios_d2.engine.checkpoint as checkpoint_module
from r2ios_d2 import preemption
from r2ios_d2.engine import R2IOSTrainer
from r2ios_d2.evaluation import SDSEvaluator
from r2ios_d2.preemption import EXIT_PREEMPTED, STOP_SIGNALS


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return tiny_run_setup(tmp_path_factory, "preempt")


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """A stopped run leaves its handlers ignoring further signals (it is exiting): undo that."""
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def _wait_for_text(path, text, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and text in open(path, errors="replace").read():
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(syn, tmp_path):
    parent, prefix, config = syn
    max_iter = 40
    # One DataLoader worker: SLURM signals every process of a job step, the workers included.
    workers = ["DATALOADER.NUM_WORKERS", "1"]
    reference = str(tmp_path / "reference")
    run_train_net(config, tiny_opts(prefix, reference, max_iter=max_iter) + workers)

    out = str(tmp_path / "preempted")
    # No periodic checkpoint: the only one is the stop's. The subprocess registers the dataset
    # under its default names from $DETECTRON2_DATASETS (the same files as `prefix`).
    opts = tiny_opts("r2ios_synthetic", out, max_iter=max_iter) + workers
    opts += ["SOLVER.CHECKPOINT_PERIOD", "1000"]
    env = dict(os.environ, DETECTRON2_DATASETS=parent, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, TRAIN_NET, "--config-file", config, *opts],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_text(os.path.join(out, "log.txt"), "Starting training from iteration 0", proc)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its DataLoader worker
    stdout, stderr = proc.communicate(timeout=120)
    seconds = time.monotonic() - sent
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert seconds < 30, f"{seconds:.1f} s from SIGTERM to exit"
    assert "Traceback" not in stderr

    m = re.search(r"Stopped by SIGTERM after iteration (\d+) .*checkpoint (\S+)\. Continue", stdout)
    assert m, stdout[-2000:]
    iteration, path = int(m.group(1)), m.group(2)
    assert iteration < max_iter - 1
    assert re.search(r"Continue the run with: .*train_net\.py --resume --config-file", stdout)
    assert path == os.path.join(out, f"model_{iteration:07d}.pth")
    assert open(os.path.join(out, "last_checkpoint")).read() == os.path.basename(path)
    assert torch.load(path, weights_only=True)["iteration"] == iteration
    assert not os.path.exists(os.path.join(out, "model_final.pth")) and not _leftovers(out)

    run_train_net(config, tiny_opts(prefix, out, max_iter=max_iter) + workers, "--resume")
    a = _weights(os.path.join(reference, "model_final.pth"))
    b = _weights(os.path.join(out, "model_final.pth"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"preempted + resumed run differs in {different}"


class _SignalSelf(HookBase):
    """Sends a signal to this process after one iteration, as a scheduler would."""

    def __init__(self, signum, iteration):
        self.signum, self.iteration = signum, iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_each_stop_signal_stops_and_a_second_during_the_write_changes_nothing(
    syn, tmp_path, monkeypatch, signame
):
    _, prefix, config = syn
    signum = getattr(signal, signame)
    original_hooks = R2IOSTrainer.build_hooks
    monkeypatch.setattr(
        R2IOSTrainer, "build_hooks", lambda self: [_SignalSelf(signum, 2), *original_hooks(self)]
    )
    original_save = checkpoint_module.atomic_torch_save
    writes = []

    def save_interrupted(obj, path):
        if preemption.stop_requested():  # the stop's checkpoint: signal again during it
            os.kill(os.getpid(), signal.SIGTERM)
        writes.append(os.path.basename(path))
        original_save(obj, path)

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", save_interrupted)
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as stop:
        run_train_net(config, tiny_opts(prefix, out, max_iter=6))
    assert stop.value.code == EXIT_PREEMPTED
    assert isinstance(stop.value, preemption.Preempted) and stop.value.signum == signum
    # Periodic checkpoint at iteration 1, the stop's at iteration 2 (the step it was in).
    assert writes == ["model_0000001.pth", "model_0000002.pth"]
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000002.pth"
    assert torch.load(os.path.join(out, "model_0000002.pth"), weights_only=True)["iteration"] == 2
    assert not _leftovers(out) and not os.path.exists(os.path.join(out, "model_final.pth"))
    log = open(os.path.join(out, "log.txt")).read()
    assert f"Received {signame}: stopping once the work in progress is saved" in log
    assert "Received SIGTERM again: already stopping, ignored" in log
    assert f"Stopped by {signame} after iteration 2" in log


def test_a_signal_during_evaluation_stops_it_at_once(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    original = SDSEvaluator.process
    calls = []

    def process_then_signal(self, inputs, outputs):
        calls.append(len(inputs))
        original(self, inputs, outputs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SDSEvaluator, "process", process_then_signal)
    out = str(tmp_path / "eval")
    with pytest.raises(SystemExit) as stop:
        run_train_net(config, tiny_opts(prefix, out, test=True), "--eval-only")
    assert stop.value.code == EXIT_PREEMPTED
    assert calls == [1]  # the second image was never evaluated
    folder = os.path.join(out, "inference", f"{prefix}_val")
    assert not os.path.exists(os.path.join(folder, "sds_results.json"))
    assert not os.path.exists(os.path.join(folder, "sds_predictions.json"))
    assert (
        "Stopped by SIGTERM; no file was left half-written"
        in open(os.path.join(out, "log.txt")).read()
    )


def test_lazyconfig_training_stops_on_a_signal_and_resumes_exactly(tmp_path, monkeypatch):
    from test_lazyconfig import _final_weights, _run_lazy, load_tool, tiny_lazy_config

    import r2ios_d2.engine.trainer as trainer_module

    make_dataset(str(tmp_path), "lazystop")
    tool = load_tool("lazyconfig_train_net")
    straight = str(tmp_path / "straight")
    _run_lazy(tool, tiny_lazy_config("lazystop", straight, 6, step=2))

    stopped = str(tmp_path / "stopped")
    original = trainer_module.r2ios_hooks
    with monkeypatch.context() as m:
        m.setattr(
            trainer_module,
            "r2ios_hooks",
            lambda seed: [*original(seed), _SignalSelf(signal.SIGUSR1, 2)],
        )
        with pytest.raises(SystemExit) as stop:
            _run_lazy(tool, tiny_lazy_config("lazystop", stopped, 6, step=2))
    assert stop.value.code == EXIT_PREEMPTED
    assert open(os.path.join(stopped, "last_checkpoint")).read() == "model_0000002.pth"
    _run_lazy(tool, tiny_lazy_config("lazystop", stopped, 6, step=2), "--resume")
    a, b = _final_weights(straight), _final_weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
