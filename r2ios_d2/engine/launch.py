"""Multi-process training and evaluation on CPUs (gloo).

detectron2's ``launch`` spawns one process per GPU and asserts CUDA; `launch_cpu` does the same
for CPU processes with the gloo backend, and sets up detectron2's per-machine process group so
``comm.get_local_rank()`` and friends work.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Sequence

import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from .compat import set_local_process_group

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_worker(
    rank: int, main_func: Callable, world_size: int, dist_url: str, args: Sequence[Any]
) -> None:
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank)
    set_local_process_group(world_size)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch_cpu(
    main_func: Callable, num_processes: int, args: Sequence[Any] = (), dist_url: str = "auto"
) -> None:
    """Run ``main_func(*args)`` in ``num_processes`` CPU processes joined by a gloo group
    (or directly when ``num_processes`` is 1)."""
    if num_processes <= 1:
        main_func(*args)
        return
    if dist_url == "auto":
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=num_processes,
        args=(main_func, num_processes, dist_url, tuple(args)),
        daemon=False,
        start_method="spawn",
    )
