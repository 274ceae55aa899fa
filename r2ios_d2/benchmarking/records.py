"""What a benchmark result records: the machine, peak memory, and the result files."""

from __future__ import annotations

import ctypes
import datetime
import gc
import logging
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ..atomic import atomic_write_json, atomic_write_text

__all__ = [
    "PeakMemory",
    "cpu_description",
    "cpu_details",
    "fmt",
    "machine_info",
    "result_header",
    "sync",
    "write_result",
]

logger = logging.getLogger(__name__)


# CPU features that decide which kernels oneDNN / MKL run (and so the speed ratios): two
# machines sold under one model name ("AMD EPYC") measured the same code 2.5x apart.
_CPU_FEATURES = ("avx512f", "avx512_bf16", "amx_tile", "avx2")


def cpu_description(cpuinfo: str) -> dict:
    """The CPU of ``/proc/cpuinfo``'s text (its first processor): ``cpu_model`` (model
    name), ``cpu_family`` / ``cpu_model_number`` (the vendor's numbers, e.g. AMD family 25
    model 1 = Zen 3) and ``cpu_features``, those of :data:`_CPU_FEATURES` it lists (the
    vector extensions the linear algebra kernels choose from); a field that is absent is
    left out."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor only
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    names = (
        ("model name", "cpu_model"),
        ("cpu family", "cpu_family"),
        ("model", "cpu_model_number"),
    )
    out: dict = {name: fields[key] for key, name in names if key in fields}
    if "flags" in fields:
        flags = set(fields["flags"].split())
        out["cpu_features"] = [f for f in _CPU_FEATURES if f in flags]
    return out


def machine_info(device: str) -> dict:
    """CPU model, count and vector extensions, torch/detectron2 versions, threads, the
    command line, the date and (on CUDA) the GPU name: what a benchmark result was measured
    on."""
    import detectron2

    cpu = {"cpu_model": platform.processor() or platform.machine()}
    try:
        cpu.update(cpu_description(Path("/proc/cpuinfo").read_text()))
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        **cpu,
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def result_header(result: dict) -> str:
    """One Markdown line: the command, date, machine and versions of ``result["machine"]``."""
    m = result["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return (
        f"`{m['command']}` — {m['date']}; {m['cpu_count']} × {m['cpu_model']}{cpu_details(m)}"
        f"{gpu}; "
        f"torch {m['torch']} ({m['torch_threads']} threads), detectron2 {m['detectron2']}\n"
    )


def cpu_details(machine: dict) -> str:
    """`` (family F model M, AVX-512)``-style details of a :func:`machine_info` record (the
    widest vector extension it lists; "" where it records none: older results)."""
    parts = []
    if "cpu_family" in machine:
        parts.append(f"family {machine['cpu_family']} model {machine.get('cpu_model_number', '?')}")
    features = machine.get("cpu_features")
    if features is not None:
        if "avx512f" in features:
            extra = [f for f in ("avx512_bf16", "amx_tile") if f in features]
            parts.append("AVX-512" + (f" ({', '.join(extra)})" if extra else ""))
        else:
            parts.append("AVX2, no AVX-512" if "avx2" in features else "no AVX2")
    return f" ({', '.join(parts)})" if parts else ""


def write_result(results_dir: Path, stem: str, result: dict, markdown: str) -> None:
    """``<results_dir>/<stem>.json`` (the result) and ``<stem>.md`` (its tables), each
    written atomically."""
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, str(results_dir / f"{stem}.json"), indent=1)
    atomic_write_text(markdown, str(results_dir / f"{stem}.md"))
    logger.info("wrote %s.{json,md}", results_dir / stem)


def fmt(x: Any, spec: str = ".1f") -> str:
    """``x`` formatted with ``spec``, or "–" for None (a table cell)."""
    return "–" if x is None else format(x, spec)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock time is complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_kib(key: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS, so that a later peak shows as new RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code in a ``with`` block, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, exact): ``peak`` is the absolute
    peak (weights and resident features included), ``delta`` the growth over the start.
    ``device="none"`` measures nothing. CPU: the process's peak resident set (VmHWM, reset
    through ``/proc/self/clear_refs``) minus the resident set at the start, after
    ``malloc_trim``: the RSS growth of the block, which includes allocator caching and anything
    else the process touched; ``peak`` is None (the RSS of a Python process holding several
    models says nothing about one model's need). None everywhere when the kernel does not
    allow the reset.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak: Optional[float] = None
        self.delta: Optional[float] = None

    def __enter__(self) -> PeakMemory:
        if self.device == "none":  # measure nothing
            return self
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            gc.collect()
            _malloc_trim()
            self._ok = _reset_peak_rss()
            self._start = _proc_status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "none":
            return
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            self.peak = peak / 2**20
            self.delta = (peak - self._start) / 2**20
        else:
            hwm = _proc_status_kib("VmHWM")
            if self._ok and hwm is not None and self._start is not None:
                self.delta = max(hwm - self._start, 0) / 1024
