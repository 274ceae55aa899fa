"""Atomic file writes: a file is either complete or absent, never half-written.

Every output of r2ios_d2 (checkpoints, proposal files, caches, results, pictures) is written
through :func:`atomic_open`, so a run killed mid-write leaves no partial file that a re-run
would mistake for finished work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

__all__ = ["atomic_open"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", suffix: str = "") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    The temporary file (``.tmp-*<suffix>`` in the same folder) is flushed, fsynced, given the
    usual permissions (``0666 & ~umask``) and moved onto ``path`` with ``os.replace``. If the
    block raises, it is deleted and ``path`` is left as it was.

    Args:
        path: the final file; its folder is created if needed.
        mode: ``"wb"`` or ``"w"``.
        suffix: suffix of the temporary file (some writers look at it).

    Yields:
        the open temporary file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
