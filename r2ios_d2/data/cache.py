"""The cached, parallel loader behind the dataset readers of :mod:`r2ios_d2.data.voc_sbd`.

A reader turns one image's annotation files into a record (``image_id``, ``height``,
``width``, ``annotations``, ...) with a picklable function; :func:`load_records` runs it over a
split in a process pool (``R2IOS_DATA_WORKERS``, default: all cores) and caches the records as
gzipped JSON keyed by the split's file list, sizes and mtimes (``R2IOS_DATA_CACHE=0`` disables
it; ``R2IOS_CACHE_DIR`` moves it; default ``<root>/.r2ios_cache``, or ``~/.cache/r2ios_d2``
where the root is read-only).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import multiprocessing as mp
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode
from tqdm import tqdm

from ..atomic import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["load_records"]

Record = Dict[str, Any]
Job = Tuple[str, ...]

# Bumped whenever the dicts a loader produces change, so that stale caches are not used.
_LOADER_VERSION = 1
# Below this many images a process pool costs more than it saves.
_MIN_IMAGES_FOR_POOL = 256


def _num_workers() -> int:
    env = os.getenv("R2IOS_DATA_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


def _map_files(
    fn: Callable[[Job], Record],
    jobs: List[Job],
    desc: str,
    num_workers: Optional[int] = None,
) -> List[Record]:
    """Run ``fn`` over ``jobs`` in order, in a process pool when there are many."""
    workers = _num_workers() if num_workers is None else max(1, num_workers)
    progress = dict(total=len(jobs), desc=desc, unit="img", disable=len(jobs) < 200)
    if workers == 1 or len(jobs) < _MIN_IMAGES_FOR_POOL:
        return [fn(job) for job in tqdm(jobs, **progress)]
    # The workers only run numpy/scipy/PIL code, so forking is safe and avoids re-importing
    # torch in every worker; elsewhere fall back to the platform default.
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    chunksize = max(1, min(64, len(jobs) // (workers * 8)))
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), **progress))


def _cache_dir(root: str) -> str:
    env = os.getenv("R2IOS_CACHE_DIR")
    if env:
        return os.path.expanduser(env)
    local = os.path.join(root, ".r2ios_cache")
    if os.access(root, os.W_OK):
        return local
    return os.path.join(os.path.expanduser("~"), ".cache", "r2ios_d2")


def _cache_key(kind: str, root: str, ids: Sequence[str], files: Sequence[Sequence[str]]) -> str:
    h = hashlib.sha1()
    h.update(f"{kind}|{_LOADER_VERSION}|{os.path.realpath(root)}|".encode())
    for image_id, paths in zip(ids, files):
        h.update(image_id.encode())
        for path in paths:
            st = os.stat(path)
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()[:20]


def _cache_enabled(cache: Optional[bool]) -> bool:
    if cache is not None:
        return cache
    return os.getenv("R2IOS_DATA_CACHE", "1") not in ("0", "false", "False", "")


def _load_cache(path: str) -> Optional[List[Record]]:
    try:
        with gzip.open(path, "rt") as f:
            records = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as e:
        logger.warning(f"Ignoring unreadable dataset cache {path}: {e}")
        return None
    for rec in records:
        for anno in rec["annotations"]:
            anno["bbox_mode"] = BoxMode(anno["bbox_mode"])
    return records


def _write_cache(path: str, records: List[Record]) -> None:
    try:
        with atomic_open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as f:
            f.write(json.dumps(records, default=_json_default).encode())
    except OSError as e:
        logger.warning(f"Could not write dataset cache {path}: {e}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BoxMode):
        return int(obj.value)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def load_records(
    kind: str,
    root: str,
    ids: List[str],
    key_files: List[Tuple[str, ...]],
    fn: Callable[[Job], Record],
    jobs: List[Job],
    cache: Optional[bool],
    num_workers: Optional[int],
) -> List[Record]:
    """Per-image records of ``fn(job)`` for each job, in order, cached on disk.

    Args:
        kind: name of the reader and its settings (e.g. ``"sbd_20"``); part of the cache key
            and the cache file's name.
        root: the dataset folder (where the cache goes by default).
        ids: the split's image ids, one per job.
        key_files: per image, the annotation files whose sizes and mtimes key the cache.
        fn: a picklable function from one job to one record (``image_id``, ``height``,
            ``width``, ``annotations``, ...); records must be JSON-serialisable (``BoxMode``
            and NumPy scalars are converted).
        jobs: the arguments of ``fn``, one per image.
        cache: use the on-disk cache (None: ``$R2IOS_DATA_CACHE``, default on).
        num_workers: processes (None: ``$R2IOS_DATA_WORKERS`` or all cores).

    Returns:
        the records, one per job, in the order of ``jobs``.
    """
    use_cache = _cache_enabled(cache)
    if use_cache:
        key = _cache_key(kind, root, ids, key_files)
        path = os.path.join(_cache_dir(root), f"{kind}_{key}.json.gz")
        records = _load_cache(path)
        if records is not None and [r["image_id"] for r in records] == list(ids):
            logger.info(f"Loaded {len(records)} {kind} records from cache {path}")
            return records
    records = _map_files(fn, jobs, desc=f"Loading {kind} annotations", num_workers=num_workers)
    if use_cache:
        _write_cache(path, records)
    return records
