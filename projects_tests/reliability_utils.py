"""Shared helpers of the reliability tests: a tiny synthetic dataset and tools/train_net.py
driven in-process (or as a subprocess) with a tiny CPU config."""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import sys
import uuid
from typing import List, Sequence, Tuple

from detectron2.data import DatasetCatalog

from r2ios_d2.data.selective_search import compute_proposals
from r2ios_d2.data.synthetic import generate_synthetic_dataset, register_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


def make_dataset(parent: str, prefix: str) -> str:
    """A 4 + 2 image synthetic dataset at ``<parent>/r2ios_synthetic`` with selective-search
    proposals, registered as ``<prefix>_train`` / ``<prefix>_val``; returns its root."""
    root = os.path.join(parent, "r2ios_synthetic")
    generate_synthetic_dataset(
        root, num_train=4, num_val=2, seed=2, min_size=(64, 72), max_size=(72, 88)
    )
    register_synthetic(root, prefix=prefix)
    items = [
        (d["image_id"], d["file_name"], d["height"], d["width"])
        for split in ("train", "val")
        for d in DatasetCatalog.get(f"{prefix}_{split}")
    ]
    compute_proposals(items, os.path.join(root, "proposals", "selective_search"), max_boxes=40)
    return root


def tiny_run_setup(tmp_path_factory, tag: str) -> Tuple[str, str, str]:
    """A module's tiny training setup: ``(folder, dataset prefix, base config path)`` with
    the dataset of :func:`make_dataset` under a fresh temporary folder and a unique prefix."""
    parent = str(tmp_path_factory.mktemp(f"rel_{tag}"))
    prefix = f"rel{tag}_{uuid.uuid4().hex[:6]}"
    make_dataset(parent, prefix)
    return parent, prefix, write_base_config(parent)


def load_train_net():
    """tools/train_net.py as a module (tools/ is not a package)."""
    if "r2ios_train_net" in sys.modules:
        return sys.modules["r2ios_train_net"]
    spec = importlib.util.spec_from_file_location("r2ios_train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    sys.modules["r2ios_train_net"] = module
    spec.loader.exec_module(module)
    return module


def write_base_config(folder: str) -> str:
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        f.write(f'_BASE_: "{os.path.join(REPO, "configs", "Base-R2IOS-VGG16.yaml")}"\n')
    return path


def tiny_opts(prefix: str, output_dir: str, max_iter: int = 6, test: bool = False) -> List[str]:
    """Command-line opts of a tiny, deterministic CPU run on the synthetic dataset."""
    return [
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.VGG.WIDTH", "0.0625",
        "MODEL.ROI_HEADS.NUM_CLASSES", "5", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.R2IOS.AE_HIDDEN_DIM", "32", "MODEL.R2IOS.MASK_SIZE", "20",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "INPUT.MIN_SIZE_TRAIN", "(56, 64)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
        "DATASETS.TRAIN", f"('{prefix}_train',)",
        "DATASETS.TEST", f"('{prefix}_val',)" if test else "()",
        "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN", "30",
        "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST", "30",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.STEPS", "(4,)", "TEST.EVAL_PERIOD", "0", "SEED", "7",
        "CUDNN_BENCHMARK", "False", "OUTPUT_DIR", output_dir,
    ]  # fmt: skip


def run_train_net(config: str, opts: Sequence[str], *flags: str):
    """``tools/train_net.py --config-file config *flags *opts`` in this process."""
    tn = load_train_net()
    args = tn.build_parser().parse_args(["--config-file", config, *flags, *opts])
    return tn.main(args)


def path_of(fd):
    """The path of the open file descriptor ``fd`` (Linux)."""
    return os.readlink(f"/proc/self/fd/{fd}")


class FillingDisk:
    """A file on a device with ``room`` bytes left: a write beyond it stores what fits, then
    fails with ENOSPC (as write(2) does)."""

    def __init__(self, f, room):
        self._f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self._f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def fill_disk_for(monkeypatch, pattern, nth=1, room=4096):
    """From the ``nth`` file opened with ``os.fdopen`` whose path matches ``pattern`` on, the
    disk fills after ``room`` bytes (0: the first write fails); returns the matched paths."""
    real_fdopen = os.fdopen
    seen = []

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if re.search(pattern, path_of(fd)):
            seen.append(path_of(fd))
            if len(seen) >= nth:
                return FillingDisk(f, room)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return seen
