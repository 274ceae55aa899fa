"""tools/selective_search.py on a cluster: SIGTERM stops it with one line and exit status 75,
keeping the finished images (the same command continues); a full disk is one line naming the
file and the free space."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from readme_utils import REPO
from reliability_utils import fill_disk_for

from r2ios_d2.preemption import EXIT_PREEMPTED

TOOL = os.path.join(REPO, "tools", "selective_search.py")


def _images(folder, n, size=(320, 240)):
    """Pictures of rectangles on mild noise: selective search takes ~0.1 s on each."""
    rng = np.random.RandomState(0)
    os.makedirs(folder)
    for i in range(n):
        img = rng.randint(100, 140, size=(size[1], size[0], 3)).astype(np.uint8)
        for _ in range(6):
            x, y = rng.randint(0, size[0] - 60), rng.randint(0, size[1] - 60)
            img[y : y + 50, x : x + 50] = rng.randint(0, 255, size=3)
        Image.fromarray(img).save(os.path.join(folder, f"img_{i:03d}.png"))


def _finished(out):
    """The proposal files written in full (a worker's ``.tmp-*.npz`` is still being written)."""
    if not os.path.isdir(out):
        return []
    return sorted(f for f in os.listdir(out) if f.endswith(".npz") and not f.startswith(".tmp-"))


def test_selective_search_stops_cleanly_on_sigterm_and_continues(tmp_path):
    images, out = str(tmp_path / "images"), str(tmp_path / "proposals")
    n = 16
    _images(images, n)
    command = [sys.executable, TOOL, "--images", images, "--out", out, "--workers", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    end = time.monotonic() + 120
    while not _finished(out):
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-2000:]
    assert "Traceback" not in stderr
    messages = [line for line in stderr.splitlines() if line.startswith("Stopped by")]
    assert len(messages) == 1 and "the same command continues" in messages[0], stderr[-2000:]
    done = _finished(out)
    assert 0 < len(done) < n and not [f for f in os.listdir(out) if f.startswith(".tmp-")]

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{n - len(done)} images computed" in again.stdout
    assert f"{len(done)} skipped" in again.stdout


def test_selective_search_names_the_file_when_the_disk_is_full(tmp_path, monkeypatch):
    images, out = str(tmp_path / "images"), str(tmp_path / "proposals")
    _images(images, 2, size=(96, 72))
    spec = importlib.util.spec_from_file_location("ss_tool_disk", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    fill_disk_for(monkeypatch, r"\.npz$", room=0)
    with pytest.raises(SystemExit) as stop:
        tool.main(["--images", images, "--out", out, "--workers", "1"])
    message = str(stop.value.code)
    assert message.startswith("selective_search.py: error: ")
    assert f"cannot write {os.path.join(out, 'img_000.npz')}: no space left" in message
    assert " free of " in message and "\n" not in message
    assert os.listdir(out) == []
