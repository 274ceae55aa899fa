"""The training's event writers, with a ``metrics.json`` that a full disk cannot leave with a
half-written line.

detectron2's ``JSONWriter`` appends one JSON line per iteration to ``metrics.json`` through a
buffered file: when the disk fills during a flush, part of a line can reach the file, and the
tools that read it (``tools/plot_metrics.py``, ``jq``) then fail on it. :class:`MetricsJSONWriter`
appends each flush whole or not at all (the file is cut back to its previous length on error)
and raises :class:`~r2ios_d2.atomic.DiskFullError` naming the file and the free space.
"""

from __future__ import annotations

import contextlib
import os
from typing import List

from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)

from ..atomic import disk_full_error

__all__ = ["MetricsJSONWriter", "r2ios_default_writers"]


class _AppendWhole:
    """A text file opened for appending, whose ``flush`` adds everything written since the
    previous flush, or nothing."""

    def __init__(self, path: str) -> None:
        self.name = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._pending: List[str] = []

    def write(self, text: str) -> int:
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        data = "".join(self._pending).encode()
        self._pending.clear()
        if not data or self._fd < 0:
            return
        size = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            full = disk_full_error(e, self.name, unchanged="the lines of this write were not added")
            if full is None:
                raise
            raise full from e

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1


class MetricsJSONWriter(JSONWriter):
    """detectron2's ``JSONWriter`` (same file format) whose writes are whole or absent.

    Args:
        json_file: the file; new lines are appended if it exists.
        window_size: median smoothing window of the scalars with a smoothing hint.
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        super().__init__(json_file, window_size)
        self._file_handle.close()
        self._file_handle = _AppendWhole(json_file)


def r2ios_default_writers(output_dir: str, max_iter: int) -> List[EventWriter]:
    """detectron2's default writers (console, ``metrics.json``, TensorBoard) with
    :class:`MetricsJSONWriter` for ``metrics.json``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        MetricsJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
