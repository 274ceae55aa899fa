"""Reliability of training with tools/train_net.py: exact resume, kills during checkpoint
writes, non-finite losses, unreadable images and unwritable output folders."""

import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase
from reliability_utils import make_dataset, run_train_net, tiny_opts
from reliability_utils import write_base_config as _write_base_config

from r2ios_d2.engine import R2IOSTrainer
from r2ios_d2.engine.resumable_data import ResumableTrainingSampler, StreamOrder


class SimulatedKill(Exception):
    """Stands for SIGKILL / a power cut in the middle of training."""


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    parent = tmp_path_factory.mktemp("rel_train")
    prefix = f"relt_{uuid.uuid4().hex[:6]}"
    root = make_dataset(str(parent), prefix)
    return root, prefix, _write_base_config(str(parent))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _kill_after(monkeypatch, iteration):
    original = R2IOSTrainer.build_hooks

    class Kill(HookBase):
        def after_step(self):
            if self.trainer.iter == iteration:
                raise SimulatedKill(f"killed after iteration {iteration}")

    monkeypatch.setattr(R2IOSTrainer, "build_hooks", lambda self: [*original(self), Kill()])


# ------------------------------------------------------------------------------- resume
def test_resume_after_kill_gives_the_uninterrupted_weights(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    full = str(tmp_path / "full")
    run_train_net(config, tiny_opts(prefix, full, max_iter=6))

    broken = str(tmp_path / "broken")
    with monkeypatch.context() as m:
        _kill_after(m, 4)  # after model_0000003 was written, before model_0000005
        with pytest.raises(SimulatedKill):
            run_train_net(config, tiny_opts(prefix, broken, max_iter=6))
    names = set(os.listdir(broken))
    assert "model_0000003.pth" in names and "model_final.pth" not in names
    assert open(os.path.join(broken, "last_checkpoint")).read() == "model_0000003.pth"
    # A kill during the next checkpoint write leaves at most a temporary file behind.
    with open(os.path.join(broken, ".tmp-killed.pth"), "wb") as f:
        f.write(b"PK\x03\x04 half a checkpoint")

    run_train_net(config, tiny_opts(prefix, broken, max_iter=6), "--resume")
    a, b = (
        _weights(os.path.join(full, "model_final.pth")),
        _weights(os.path.join(broken, "model_final.pth")),
    )
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different}"
    # The weights moved: the equality is not that of two untrained models.
    first = _weights(os.path.join(full, "model_0000001.pth"))
    assert any(not torch.equal(first[k], a[k]) for k in a)


def _grouped_batches(order, landscape, start, n, rank, world_size):
    """n batches of 2 from the sampler, grouped as detectron2's AspectRatioGroupedDataset."""
    sampler = ResumableTrainingSampler(order, landscape, 2, start, rank, world_size)
    out, buckets = [], [[], []]
    for g in sampler:
        b = 0 if landscape is None or landscape[order.index(g)] else 1
        buckets[b].append(g)
        if len(buckets[b]) == 2:
            out.append(list(buckets[b]))
            buckets[b].clear()
            if len(out) == n:
                return out


@pytest.mark.parametrize("grouping", [True, False])
@pytest.mark.parametrize("world_size", [1, 2])
def test_sampler_resumes_the_exact_stream(grouping, world_size):
    rng = np.random.RandomState(0)
    landscape = list(rng.rand(7) > 0.4) if grouping else None
    for rank in range(world_size):
        order = StreamOrder(7, seed=3)
        whole = _grouped_batches(order, landscape, 0, 12, rank, world_size)
        assert _grouped_batches(order, landscape, 5, 7, rank, world_size) == whole[5:]
        assert all(g % world_size == rank for b in whole for g in b)
        seen = sorted(order.index(g) for b in whole[:3] for g in b)
        assert len(set(seen)) >= 4  # shuffled epochs, not one image repeated


# ------------------------------------------------------------------------- numerical faults
def test_nan_loss_stops_training_naming_term_and_iteration(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    from r2ios_d2.modeling import R2IOSROIHeads

    original = R2IOSROIHeads.forward_train
    calls = {"n": 0}

    def poisoned(self, features, proposals):
        losses = original(self, features, proposals)
        calls["n"] += 1
        if calls["n"] == 3:  # iteration 2
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    monkeypatch.setattr(R2IOSROIHeads, "forward_train", poisoned)
    out = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"iteration 2: loss_mask \(rank 0: loss_mask=nan"):
        run_train_net(config, tiny_opts(prefix, out, max_iter=6))
    # Stopped before the update: the last checkpoint (iteration 1) is finite, and no final one.
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    w = _weights(os.path.join(out, "model_0000001.pth"))
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


def test_huge_lr_diverges_with_a_named_term(syn, tmp_path):
    _, prefix, config = syn
    opts = tiny_opts(prefix, str(tmp_path / "lr"), max_iter=40) + ["SOLVER.BASE_LR", "1e12"]
    with pytest.raises(FloatingPointError, match=r"Non-finite loss at iteration \d+: loss_"):
        run_train_net(config, opts)


# --------------------------------------------------------------------- bad input, nothing lost
def test_truncated_jpeg_during_training_is_named_and_leaves_no_final(syn, tmp_path):
    root, _, config = syn
    from detectron2.data import DatasetCatalog

    prefix = f"relbad_{uuid.uuid4().hex[:6]}"
    bad_root = str(tmp_path / "copy")
    import shutil

    shutil.copytree(root, bad_root)
    from r2ios_d2.data.synthetic import register_synthetic

    register_synthetic(bad_root, prefix=prefix)
    victim = DatasetCatalog.get(f"{prefix}_train")[1]["file_name"]
    data = open(victim, "rb").read()
    with open(victim, "wb") as f:
        f.write(data[: len(data) // 3])
    out = str(tmp_path / "out")
    with pytest.raises(OSError, match=os.path.basename(victim)):
        run_train_net(config, tiny_opts(prefix, out, max_iter=6))
    assert not os.path.exists(os.path.join(out, "model_final.pth"))


def test_output_dir_under_a_file_fails_before_training(syn, tmp_path):
    _, prefix, config = syn
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = str(blocker / "run")
    with pytest.raises(OSError, match=r"OUTPUT_DIR .*a_file/run.* is not a writable folder"):
        run_train_net(config, tiny_opts(prefix, out))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_output_dir_fails_before_training(syn, tmp_path):
    _, prefix, config = syn
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"OUTPUT_DIR .*ro.* is not a writable folder"):
            run_train_net(config, tiny_opts(prefix, str(out)))
        assert os.listdir(out) == []
    finally:
        out.chmod(0o700)


def test_unknown_config_key_on_command_line_is_named(syn, tmp_path):
    _, prefix, config = syn
    opts = tiny_opts(prefix, str(tmp_path / "out")) + ["MODEL.R2IOS.NUM_ITERATION", "2"]
    with pytest.raises(KeyError, match=r"NUM_ITERATION'.*did you mean MODEL.R2IOS.NUM_ITERATIONS"):
        run_train_net(config, opts)
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_in_yaml_is_named(syn, tmp_path):
    _, prefix, config = syn
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{config}"\nMODEL:\n  R2IOS:\n    GATE_SCROE: "all"\n')
    with pytest.raises(KeyError, match="MODEL.R2IOS.GATE_SCROE"):
        run_train_net(str(bad), tiny_opts(prefix, str(tmp_path / "out")))


def test_invalid_config_value_fails_in_setup_before_any_output(syn, tmp_path):
    _, prefix, config = syn
    out = tmp_path / "never"
    opts = tiny_opts(prefix, str(out)) + ["MODEL.R2IOS.GATE_SCORE", "foo"]
    with pytest.raises(ValueError, match=r"MODEL.R2IOS.GATE_SCORE = 'foo'.*'all', 'foreground'"):
        run_train_net(config, opts)
    assert not out.exists()
