"""Launching several processes, on CPUs (gloo) or GPUs, so that they stop together.

detectron2's ``launch`` spawns one process per GPU and asserts CUDA; :func:`launch_cpu` does the
same for CPU processes with the gloo backend, and sets up detectron2's per-machine process
group so ``comm.get_local_rank()`` and friends work. Both launchers here also

* bound every collective operation by ``collective_timeout`` seconds (torch's default is
  30 min), so a process that stops responding cannot hold the others for long;
* pass SIGTERM / SIGINT / SIGUSR1 on to their processes, which stop cleanly together
  (:mod:`r2ios_d2.preemption`), and end with
  :data:`~r2ios_d2.preemption.EXIT_PREEMPTED` when they did;
* (:func:`launch_cpu`) watch the processes: when one dies (killed, out of memory, an error),
  the others get ``lost_process_grace`` seconds to stop by themselves (a gloo collective
  with a dead peer fails at once) and are then killed; :class:`ProcessLostError` names the
  lost process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing.connection
import os
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from ..preemption import EXIT_PREEMPTED, forward_stop_signals, signal_name
from .compat import set_local_process_group

logger = logging.getLogger(__name__)

__all__ = ["ProcessLostError", "launch_cpu", "launch_gpu"]

# torch.distributed's default for collectives.
DEFAULT_COLLECTIVE_TIMEOUT = 1800.0


class ProcessLostError(RuntimeError):
    """A process of a multi-process run died or failed; the others were stopped."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flush_logs() -> None:
    for name in (None, "r2ios_d2", "detectron2", "fvcore"):
        for handler in logging.getLogger(name).handlers:
            with contextlib.suppress(Exception):
                handler.flush()


def _cpu_worker(
    rank: int,
    main_func: Callable,
    world_size: int,
    dist_url: str,
    collective_timeout: float,
    args: Sequence[Any],
) -> None:
    dist.init_process_group(
        "gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=rank,
        timeout=datetime.timedelta(seconds=collective_timeout),
    )
    set_local_process_group(world_size)
    comm.synchronize()
    try:
        main_func(*args)
    except Exception as e:
        # Usually a collective that failed because another process is gone: leave at once,
        # without the process group's teardown, which can wait on the lost process.
        logger.error(
            "Process of rank %d stops: %s: %s",
            rank,
            type(e).__name__,
            str(e).strip().splitlines()[0] if str(e).strip() else "",
        )
        _flush_logs()
        os._exit(1)
    except SystemExit as e:
        if e.code != EXIT_PREEMPTED:
            raise
        code = EXIT_PREEMPTED
    else:
        code = 0
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: objects that outlive the group (DDP's
    # reducer holds it) are otherwise destroyed in the C++ static teardown, where a gloo
    # thread still joinable aborts the process (SIGABRT, "terminate called without an
    # active exception"; seen once in ~25 runs of a stop on a signal). Logs and streams are
    # flushed and closed first; the checkpoint is complete (written atomically before).
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _exit_text(code: int) -> str:
    if code < 0:
        return f"killed by {signal_name(-code)}"
    if code == EXIT_PREEMPTED:
        return "stopped on a signal"
    return f"exit status {code}"


def _wait(processes: List[Any], lost_process_grace: float) -> Tuple[Dict[int, int], List[int]]:
    """Exit code per rank, in the order the processes ended, and the ranks the launcher
    killed: once one process ends badly, the others get ``lost_process_grace`` seconds."""
    codes: Dict[int, int] = {}
    killed: List[int] = []
    deadline: Optional[float] = None
    while len(codes) < len(processes):
        waiting = {p.sentinel: r for r, p in enumerate(processes) if r not in codes}
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(list(waiting), timeout)
        if not ready and deadline is not None and time.monotonic() >= deadline:
            for r in waiting.values():
                logger.error(
                    "Rank %d (pid %d) did not stop within %.0f s: killing it",
                    r,
                    processes[r].pid,
                    lost_process_grace,
                )
                processes[r].kill()
                processes[r].join()
                codes[r] = processes[r].exitcode
                killed.append(r)
            break
        for sentinel in ready:
            r = waiting[sentinel]
            processes[r].join()
            codes[r] = processes[r].exitcode
            if codes[r] != 0 and deadline is None:
                deadline = time.monotonic() + lost_process_grace
                if codes[r] != EXIT_PREEMPTED:
                    logger.error(
                        "Rank %d (pid %d) ended: %s; the others get up to %.0f s to stop",
                        r,
                        processes[r].pid,
                        _exit_text(codes[r]),
                        lost_process_grace,
                    )
    return codes, killed


def _outcome(codes: Dict[int, int], killed: List[int], pids: Sequence[int]) -> None:
    """Return if every rank succeeded; else raise what ended the run."""
    if all(c == 0 for c in codes.values()):
        return
    if all(c in (0, EXIT_PREEMPTED) for c in codes.values()):
        raise SystemExit(EXIT_PREEMPTED)
    dead = [r for r in codes if codes[r] < 0 and r not in killed]
    failed = [r for r in codes if codes[r] not in (0, EXIT_PREEMPTED) and r not in killed]
    if dead:
        head = "lost " + ", ".join(
            f"rank {r} (pid {pids[r]}, {_exit_text(codes[r])})" for r in dead
        )
    else:
        r = (failed or killed)[0]
        head = f"rank {r} (pid {pids[r]}) failed ({_exit_text(codes[r])})"
    named = set(dead) or {(failed or killed)[0]}
    others = "; ".join(
        f"rank {r}: {'killed by the launcher' if r in killed else _exit_text(codes[r])}"
        for r in sorted(codes)
        if r not in named
    )
    raise ProcessLostError(
        f"{head}; the other processes stopped ({others}). Their logs are log.txt (rank 0) "
        "and log.txt.rank<N> in the output folder; continue from the last checkpoint with "
        "--resume"
    )


def launch_cpu(
    main_func: Callable,
    num_processes: int,
    args: Sequence[Any] = (),
    dist_url: str = "auto",
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT,
    lost_process_grace: float = 30.0,
) -> None:
    """Run ``main_func(*args)`` in ``num_processes`` CPU processes joined by a gloo group
    (or directly when ``num_processes`` is 1).

    Args:
        main_func, args: what each process runs.
        num_processes: number of processes.
        dist_url: the group's rendezvous (``"auto"``: a free local port).
        collective_timeout: seconds a collective operation waits for the other processes.
        lost_process_grace: seconds the others get to stop once one process died.

    Raises:
        SystemExit: with :data:`~r2ios_d2.preemption.EXIT_PREEMPTED` when the processes
            stopped on a signal (a checkpoint was written).
        ProcessLostError: when a process died or failed; names it and how it ended.
    """
    if num_processes <= 1:
        main_func(*args)
        return
    if dist_url == "auto":
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    context = mp.start_processes(
        _cpu_worker,
        nprocs=num_processes,
        args=(main_func, num_processes, dist_url, float(collective_timeout), tuple(args)),
        daemon=False,
        start_method="spawn",
        join=False,
    )
    processes = context.processes
    with forward_stop_signals(lambda: [p.pid for p in processes if p.is_alive()]):
        codes, killed = _wait(processes, float(lost_process_grace))
    _outcome(codes, killed, [p.pid for p in processes])


def launch_gpu(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT,
) -> None:
    """detectron2's ``launch`` with the collective timeout, the stop signals passed on to its
    processes, and their clean stop reported as ``SystemExit(EXIT_PREEMPTED)``."""
    from detectron2.engine import launch

    forward = (
        forward_stop_signals(lambda: [p.pid for p in mp.active_children()])
        if num_gpus_per_machine * num_machines > 1
        else contextlib.nullcontext()
    )
    with forward:
        try:
            launch(
                main_func,
                num_gpus_per_machine,
                num_machines=num_machines,
                machine_rank=machine_rank,
                dist_url=dist_url,
                args=tuple(args),
                timeout=datetime.timedelta(seconds=collective_timeout),
            )
        except mp.ProcessExitedException as e:
            if e.exit_code == EXIT_PREEMPTED:
                raise SystemExit(EXIT_PREEMPTED) from None
            raise
