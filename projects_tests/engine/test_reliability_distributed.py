"""Two gloo CPU processes (tools/train_net.py --num-cpu-processes 2): training completes and
writes its checkpoints, and distributed evaluation gives exactly the single-process AP^r; a
signal to one process stops both after the same iteration with one checkpoint; a killed
process ends the run at once with its rank named, and --resume continues."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from reliability_utils import (
    TRAIN_NET,
    run_train_net,
    tiny_opts,
    tiny_run_setup,
)

from r2ios_d2 import add_r2ios_config
from r2ios_d2.preemption import EXIT_PREEMPTED


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return tiny_run_setup(tmp_path_factory, "dist")


def _results(output_dir, dataset):
    path = os.path.join(output_dir, "inference", dataset, "sds_results.json")
    with open(path) as f:
        return json.load(f)["results"]


def _predictions(output_dir, dataset):
    with open(os.path.join(output_dir, "inference", dataset, "sds_predictions.json")) as f:
        doc = json.load(f)
    preds = doc["predictions"] if isinstance(doc, dict) else doc
    return sorted(preds, key=lambda p: str(p["image_id"]))


def _confident_init(config, opts, path):
    """Initial weights whose classifier predicts foreground classes with spread scores, so that
    a 5-iteration run still outputs detections to compare (an untrained one predicts none)."""
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    pred = model.roi_heads.box_predictor
    with torch.no_grad():
        torch.nn.init.normal_(pred.cls_score.weight, std=0.5)
        pred.cls_score.bias[-1] = -8.0
    torch.save({"model": model.state_dict()}, path)


def test_two_process_training_and_evaluation_match_one_process(syn, tmp_path):
    parent, prefix, config = syn
    out2 = str(tmp_path / "two")
    # The subprocess registers the dataset under its default names from $DETECTRON2_DATASETS.
    opts = tiny_opts("r2ios_synthetic", out2, max_iter=5, test=True)
    init = str(tmp_path / "init.pth")
    _confident_init(config, opts, init)
    opts += ["MODEL.WEIGHTS", init, "SOLVER.BASE_LR", "0.0001"]
    env = dict(os.environ, DETECTRON2_DATASETS=parent, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", config, "--num-cpu-processes", "2", *opts],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = set(os.listdir(out2))
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= names
    assert not [n for n in names if n.startswith(".tmp-")]
    two = _results(out2, "r2ios_synthetic_val")

    out1 = str(tmp_path / "one")
    weights = os.path.join(out2, "model_final.pth")
    opts1 = tiny_opts(prefix, out1, test=True) + ["MODEL.WEIGHTS", weights]
    run_train_net(config, opts1, "--eval-only")
    one = _results(out1, f"{prefix}_val")
    assert one == two
    p1, p2 = _predictions(out1, f"{prefix}_val"), _predictions(out2, "r2ios_synthetic_val")
    assert len(p1) == len(p2) == 2 and all(len(p["instances"]) > 0 for p in p1)
    for a, b in zip(p1, p2):
        assert a["image_id"] == b["image_id"]
        assert a == b or {k: v for k, v in a.items() if k != "file_name"} == {
            k: v for k, v in b.items() if k != "file_name"
        }


# ----------------------------------------------------------- preemption and a lost process
def _start_two_processes(config, opts, parent, *flags):
    env = dict(os.environ, DETECTRON2_DATASETS=parent, OMP_NUM_THREADS="1")
    command = [TRAIN_NET, *flags, "--config-file", config, "--num-cpu-processes", "2", *opts]
    return subprocess.Popen(
        [sys.executable, *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _workers(launcher_pid):
    """The launcher's training processes (not multiprocessing's resource tracker), by pid."""
    children = open(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read().split()
    return sorted(
        int(c) for c in children if b"spawn_main" in open(f"/proc/{c}/cmdline", "rb").read()
    )


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_signal_to_one_process_stops_both_after_the_same_iteration(syn, tmp_path):
    parent, _, config = syn
    out = str(tmp_path / "two")
    opts = tiny_opts("r2ios_synthetic", out, max_iter=300) + ["SOLVER.CHECKPOINT_PERIOD", "1000"]
    proc = _start_two_processes(config, opts, parent)
    log1 = os.path.join(out, "log.txt.rank1")
    _wait_for(lambda: os.path.exists(log1) and "Starting training" in open(log1).read(), proc)
    rank1 = _workers(proc.pid)[-1]
    os.kill(rank1, signal.SIGTERM)  # to rank 1 only, as when a scheduler signals one node
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    stops = [
        re.search(r"Stopped by SIGTERM after iteration (\d+)", open(os.path.join(out, f)).read())
        for f in ("log.txt", "log.txt.rank1")
    ]
    assert all(stops), stdout[-2000:]
    iteration = int(stops[0].group(1))
    assert int(stops[1].group(1)) == iteration
    checkpoints = sorted(n for n in os.listdir(out) if n.endswith(".pth"))
    assert checkpoints == [f"model_{iteration:07d}.pth"]
    assert open(os.path.join(out, "last_checkpoint")).read() == checkpoints[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_killed_process_stops_the_others_naming_it_and_resume_continues(syn, tmp_path):
    parent, _, config = syn
    out = str(tmp_path / "lost")
    opts = tiny_opts("r2ios_synthetic", out, max_iter=24) + ["DIST.LOST_PROCESS_GRACE", "10"]
    proc = _start_two_processes(config, opts, parent)
    _wait_for(lambda: os.path.exists(os.path.join(out, "model_0000001.pth")), proc)
    workers = _workers(proc.pid)
    victim = workers[-1]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    seconds = time.monotonic() - killed
    assert proc.returncode == 1
    assert seconds < 10 + 5, f"{seconds:.1f} s from the kill to the end of every process"
    assert not [w for w in workers if _alive(w)]
    lines = [line for line in stderr.splitlines() if "error: lost rank" in line]
    assert len(lines) == 1, stderr[-3000:]
    assert re.search(rf"lost rank \d \(pid {victim}, killed by SIGKILL\)", lines[0])
    assert "continue from the last checkpoint with --resume" in lines[0]
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    proc = _start_two_processes(config, opts, parent, "--resume")
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    resumed = re.findall(r"Starting training from iteration (\d+)", log)
    assert len(resumed) == 2 and int(resumed[1]) >= 2
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == 23
