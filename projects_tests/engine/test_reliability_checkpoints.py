"""Checkpoints over a long run: --resume falls back from a damaged last checkpoint (and stops when
none loads, never starting afresh), and SOLVER.CHECKPOINT_MAX_TO_KEEP bounds the disk use
without deleting the checkpoint last_checkpoint names."""

import os

import pytest
import torch
from detectron2.engine import HookBase
from reliability_utils import (
    run_train_net,
    tiny_opts,
    tiny_run_setup,
)

from r2ios_d2.engine import CheckpointError, R2IOSTrainer


class SimulatedKill(Exception):
    """Stands for SIGKILL / a power cut in the middle of training."""


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return tiny_run_setup(tmp_path_factory, "ckpt")


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _train_until_killed(monkeypatch, config, opts, iteration):
    """Train, then die after ``iteration`` (model_0000001 and model_0000003 written at 4)."""
    original = R2IOSTrainer.build_hooks

    class Kill(HookBase):
        def after_step(self):
            if self.trainer.iter == iteration:
                raise SimulatedKill(f"killed after iteration {iteration}")

    with monkeypatch.context() as m:
        m.setattr(R2IOSTrainer, "build_hooks", lambda self: [*original(self), Kill()])
        with pytest.raises(SimulatedKill):
            run_train_net(config, opts)


def _damage(path, how):
    data = open(path, "rb").read()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "garbled":  # torch.load alone reads this file without an error
        at = len(data) // 2
        data = data[:at] + bytes(b ^ 0x5A for b in data[at : at + 64]) + data[at + 64 :]
    if how == "missing":
        os.remove(path)
        return
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["truncated", "garbled", "missing"])
def test_resume_falls_back_from_a_damaged_last_checkpoint(syn, tmp_path, monkeypatch, how):
    _, prefix, config = syn
    reference = str(tmp_path / "reference")
    run_train_net(config, tiny_opts(prefix, reference, max_iter=6))

    out = str(tmp_path / "out")
    _train_until_killed(monkeypatch, config, tiny_opts(prefix, out, max_iter=6), 4)
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000003.pth"
    _damage(os.path.join(out, "model_0000003.pth"), how)

    run_train_net(config, tiny_opts(prefix, out, max_iter=6), "--resume")
    log = open(os.path.join(out, "log.txt")).read()
    assert f"Cannot resume from {os.path.join(out, 'model_0000003.pth')}" in log
    assert "Resuming from model_0000001.pth instead of model_0000003.pth" in log
    assert "Starting training from iteration 2" in log
    a = _weights(os.path.join(reference, "model_final.pth"))
    b = _weights(os.path.join(out, "model_final.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed from model_0000001, not exact"


def test_resume_stops_with_an_error_when_no_checkpoint_loads(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    out = str(tmp_path / "out")
    _train_until_killed(monkeypatch, config, tiny_opts(prefix, out, max_iter=6), 4)
    _damage(os.path.join(out, "model_0000003.pth"), "truncated")
    _damage(os.path.join(out, "model_0000001.pth"), "garbled")
    before = sorted(os.listdir(out))
    with pytest.raises(CheckpointError) as error:
        run_train_net(config, tiny_opts(prefix, out, max_iter=6), "--resume")
    message = str(error.value)
    assert f"no checkpoint in {out} can be read" in message
    assert "model_0000003.pth, model_0000001.pth" in message
    assert "does not start afresh" in message
    # Nothing was trained or written over.
    assert sorted(n for n in os.listdir(out) if n.endswith(".pth")) == [
        n for n in before if n.endswith(".pth")
    ]


def test_only_the_newest_checkpoints_are_kept(syn, tmp_path):
    _, prefix, config = syn
    out = str(tmp_path / "keep2")
    run_train_net(
        config, tiny_opts(prefix, out, max_iter=10) + ["SOLVER.CHECKPOINT_MAX_TO_KEEP", "2"]
    )
    kept = sorted(n for n in os.listdir(out) if n.endswith(".pth"))
    assert kept == ["model_0000007.pth", "model_0000009.pth", "model_final.pth"]


def test_pruning_never_deletes_the_checkpoint_last_checkpoint_names(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    out = tmp_path / "stale"
    out.mkdir()
    # A checkpoint of a longer, older run in the same folder: the newest by iteration.
    (out / "model_0009999.pth").write_bytes(b"an older run's checkpoint")
    opts = tiny_opts(prefix, str(out), max_iter=6) + ["SOLVER.CHECKPOINT_MAX_TO_KEEP", "1"]
    _train_until_killed(monkeypatch, config, opts, 4)
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    kept = sorted(n for n in os.listdir(out) if n.endswith(".pth"))
    assert kept == ["model_0000003.pth", "model_0009999.pth"]
