"""A full disk (ENOSPC injected at the write) during a checkpoint, metrics or predictions write:
a DiskFullError naming the file and the free space, the previous file intact, nothing
half-written left as if complete."""

import errno
import json
import os
import re

import pytest
import torch
from reliability_utils import (
    fill_disk_for,
    path_of,
    run_train_net,
    tiny_opts,
    tiny_run_setup,
)

from r2ios_d2.atomic import DiskFullError
from r2ios_d2.engine import verify_archive


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return tiny_run_setup(tmp_path_factory, "disk")


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    out = str(tmp_path / "out")
    with monkeypatch.context() as m:
        fill_disk_for(m, r"/\.tmp-[^/]*\.pth$", nth=2)  # model_0000001 fits, model_0000003 not
        with pytest.raises(DiskFullError) as error:
            run_train_net(config, tiny_opts(prefix, out, max_iter=6))
    message = str(error.value)
    assert f"cannot write {os.path.join(out, 'model_0000003.pth')}: no space left" in message
    assert re.search(r"\([\d.]+ \w*B free of [\d.]+ \w*B in ", message), message
    assert error.value.errno == errno.ENOSPC
    # The previous checkpoint is intact and still the one --resume takes; nothing half-written.
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000001.pth"
    verify_archive(os.path.join(out, "model_0000001.pth"))
    assert not os.path.exists(os.path.join(out, "model_0000003.pth")) and not _leftovers(out)
    # With room again, --resume finishes the run.
    run_train_net(config, tiny_opts(prefix, out, max_iter=6), "--resume")
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 5


def test_full_disk_while_appending_metrics_adds_no_partial_line(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    out = tmp_path / "out"
    out.mkdir()
    metrics = out / "metrics.json"
    metrics.write_text('{"iteration": 0, "total_loss": 1.0}\n')  # an earlier run's line
    real_write = os.write

    def write(fd, data):
        if path_of(fd) == str(metrics):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    with monkeypatch.context() as m:
        m.setattr(os, "write", write)
        full = rf"cannot write {re.escape(str(metrics))}: no space"
        with pytest.raises(DiskFullError, match=full):
            run_train_net(config, tiny_opts(prefix, str(out), max_iter=6))
    assert metrics.read_text() == '{"iteration": 0, "total_loss": 1.0}\n'
    assert all(json.loads(line) for line in metrics.read_text().splitlines())


def test_full_disk_while_writing_predictions_leaves_none(syn, tmp_path, monkeypatch):
    _, prefix, config = syn
    out = str(tmp_path / "eval")
    folder = os.path.join(out, "inference", f"{prefix}_val")
    with monkeypatch.context() as m:
        fill_disk_for(m, r"/inference/.*/\.tmp-[^/]*\.json$", room=10)
        with pytest.raises(DiskFullError, match=r"cannot write .*sds_predictions\.json: no space"):
            run_train_net(config, tiny_opts(prefix, out, test=True), "--eval-only")
    assert os.listdir(folder) == []
