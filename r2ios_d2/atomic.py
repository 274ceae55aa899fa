"""Atomic file writes: a file is either complete or absent, never half-written.

Every output of r2ios_d2 (checkpoints, proposal files, caches, results, pictures) is written
through :func:`atomic_open`, so a run killed mid-write leaves no partial file that a re-run
would mistake for finished work. :func:`atomic_write_text` and :func:`atomic_write_json` are
its text and strict-JSON forms.

A write that fails for want of space (``ENOSPC``) or quota (``EDQUOT``) raises
:class:`DiskFullError`, which names the file and the free space of its device. A stop signal
(see :mod:`r2ios_d2.preemption`) that arrives during a write waits until the file is complete
or removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from typing import IO, Any, Iterator, Optional

from . import preemption

__all__ = [
    "DiskFullError",
    "atomic_open",
    "atomic_write_json",
    "atomic_write_text",
    "disk_full_error",
]

# errno values that mean "no room for this write": the device is full, or a quota is reached.
_NO_ROOM = {errno.ENOSPC: "no space left on the device"}
if hasattr(errno, "EDQUOT"):
    _NO_ROOM[errno.EDQUOT] = "disk quota exceeded"


class DiskFullError(OSError):
    """A write failed for want of space or quota; the message names the file, the free space
    and what was left as it was."""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full_error(
    error: BaseException,
    path: str,
    unchanged: str = "the previous version of the file, if any, is unchanged",
) -> Optional[DiskFullError]:
    """``error`` as a :class:`DiskFullError` naming ``path`` and the free space of its device,
    if it is an ``ENOSPC`` / ``EDQUOT`` ``OSError`` (else None).

    Args:
        error: the exception a write raised.
        path: the file that was being written.
        unchanged: what the failed write left as it was (said in the message).
    """
    if isinstance(error, DiskFullError):
        return error
    if not isinstance(error, OSError) or error.errno not in _NO_ROOM:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        usage = shutil.disk_usage(folder)
        space = f"{_size(usage.free)} free of {_size(usage.total)} in {folder}"
    except OSError:
        space = f"free space of {folder} unknown"
    return DiskFullError(
        error.errno,
        f"cannot write {path}: {_NO_ROOM[error.errno]} ({space}); {unchanged}. Free some "
        "space and run the command again",
    )


class _WatchedFile:
    """The temporary file, remembering the ``OSError`` of a failed write: some writers
    (``torch.save``) report it as another exception, which would hide a full disk."""

    def __init__(self, f: IO) -> None:
        self._f = f
        self.write_error: Optional[OSError] = None

    def write(self, data: Any) -> Any:
        try:
            return self._f.write(data)
        except OSError as e:
            self.write_error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", suffix: str = "") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    The temporary file (``.tmp-*<suffix>`` in the same folder) is flushed, fsynced, given the
    usual permissions (``0666 & ~umask``) and moved onto ``path`` with ``os.replace``. If the
    block raises, it is deleted and ``path`` is left as it was; a full disk or quota is raised
    as :class:`DiskFullError`. Stop signals wait until the file is in place or deleted.

    Args:
        path: the final file; its folder is created if needed.
        mode: ``"wb"`` or ``"w"``.
        suffix: suffix of the temporary file (some writers look at it).

    Yields:
        the open temporary file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    with preemption.deferred():
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
        except OSError as e:
            full = disk_full_error(e, path)
            if full is None:
                raise
            raise full from e
        watched: Optional[_WatchedFile] = None
        try:
            with os.fdopen(fd, mode) as f:
                watched = _WatchedFile(f)
                yield watched  # type: ignore[misc]
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            cause = watched.write_error if watched is not None and watched.write_error else e
            full = disk_full_error(cause, path) or disk_full_error(e, path)
            if full is not None and full is not e:
                raise full from e
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
