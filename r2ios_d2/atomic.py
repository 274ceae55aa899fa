"""Atomic file writes: a file is either complete or absent, never half-written.

Every output of r2ios_d2 (checkpoints, proposal files, caches, results, pictures) is written
through :func:`atomic_open`, so a run killed mid-write leaves no partial file that a re-run
would mistake for finished work. :func:`atomic_write_text` and :func:`atomic_write_json` are
its text and strict-JSON forms.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import IO, Any, Iterator, Optional

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_json"]


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


def atomic_write_text(text: str, path: str, suffix: str = "") -> None:
    """Write ``text`` to ``path``, atomically (see :func:`atomic_open`).

    Args:
        text: the file's content.
        path: the file; its folder is created if needed.
        suffix: suffix of the temporary file.
    """
    with atomic_open(path, "w", suffix=suffix) as f:
        f.write(text)


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None, so that the files are strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def atomic_write_json(
    obj: Any, path: str, indent: Optional[int] = None, sanitize: bool = True
) -> None:
    """Write ``obj`` as strict JSON (``allow_nan=False``) to ``path``, atomically.

    Args:
        obj: JSON-serialisable object.
        path: the file.
        indent: ``json.dumps`` indent.
        sanitize: turn NaN / inf floats into null first (skip it for large objects known to
            be finite).
    """
    text = json.dumps(_json_safe(obj) if sanitize else obj, indent=indent, allow_nan=False)
    atomic_write_text(text, path, suffix=".json")
