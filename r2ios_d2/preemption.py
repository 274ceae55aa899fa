"""Stopping cleanly on SIGTERM, SIGINT and SIGUSR1: preemption by a cluster scheduler.

SLURM and Kubernetes end a job with SIGTERM and kill it about 30 s later; SLURM can also send
SIGUSR1 some minutes before a time limit (``#SBATCH --signal=USR1@120``); Ctrl-C is SIGINT.
Inside :func:`stop_signals` these three signals become a *stop request* of the process:

* inside :func:`deferred` (the training loop, checkpoints and every atomic file write) the
  request is only recorded. The training loop's :class:`~r2ios_d2.engine.hooks.GracefulStop`
  hook finishes the step, writes a checkpoint and raises :class:`Preempted`; a file being
  written is completed first;
* elsewhere (setup, evaluation, selective search) :class:`Preempted` is raised at once, as
  ``KeyboardInterrupt`` would be;
* a second signal while stopping is logged and ignored, so it cannot cut a checkpoint short
  (SIGKILL still can: the atomic writer then leaves only a ``.tmp-*`` file, never a checkpoint).

:class:`Preempted` is a ``SystemExit`` whose exit status is :data:`EXIT_PREEMPTED` (75, the
"temporary failure, try again" of ``sysexits.h``): the tools end with it when they stopped on
a signal, and running the same command again (training: with ``--resume``) continues.

Worker processes keep out of it. SLURM signals every process of a job step, and torch gives
its DataLoader workers a SIGTERM handler that ends them, which would fail the loader while the
main process finishes its step: r2ios_d2's loaders start their workers with the stop signals
blocked (:func:`quiet_workers`), and the main process shuts them down once it has stopped.
Any other process forked from one with the handlers (e.g. a selective-search worker) gets the
signal's default action back.
:func:`forward_stop_signals` is for a launcher: it passes the signals on to its processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "EXIT_PREEMPTED",
    "STOP_SIGNALS",
    "Preempted",
    "deferred",
    "blocked_for_new_processes",
    "forward_stop_signals",
    "immediate",
    "quiet_workers",
    "seconds_since_stop_request",
    "signal_name",
    "stop_requested",
    "stop_signals",
]

# Exit status of a program stopped by a stop signal: sysexits.h's EX_TEMPFAIL ("temporary
# failure; the user is invited to retry"). Training wrote a checkpoint: rerun with --resume.
EXIT_PREEMPTED = 75

# The signals that stop a run cleanly (those that exist on this platform).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)

_DEFERRED, _IMMEDIATE = "deferred", "immediate"


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15, etc."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Preempted(SystemExit):
    """The process stops because of a stop signal; exit status :data:`EXIT_PREEMPTED`.

    Attributes:
        signum: the signal.
        message: one line that says what was saved and how to continue.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(EXIT_PREEMPTED)
        self.signum = int(signum)
        self.message = message or (
            f"Stopped by {signal_name(signum)}; no file was left half-written: run the same "
            "command again to continue (training: with --resume)"
        )

    def __str__(self) -> str:
        return self.message


class _State:
    """The process's stop request (signals are per process)."""

    def __init__(self) -> None:
        self.pid: Optional[int] = None  # the process that installed the handlers
        self.depth = 0  # nesting of stop_signals()
        self.previous: Dict[int, Any] = {}
        self.signum: Optional[int] = None
        self.received_at: Optional[float] = None
        self.raised = False
        self.modes: List[str] = []

    def deferring(self) -> bool:
        return bool(self.modes) and self.modes[-1] == _DEFERRED


_STATE = _State()


def _in_dataloader_worker() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return torch.utils.data.get_worker_info() is not None
    except AttributeError:
        return False


def _raise_pending() -> None:
    """Raise :class:`Preempted` for the recorded signal (once per process)."""
    _STATE.raised = True
    raise Preempted(_STATE.signum or signal.SIGTERM)


def _handle(signum: int, frame: Any) -> None:
    state = _STATE
    if os.getpid() != state.pid:  # a forked process that inherited the handler
        if _in_dataloader_worker():
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    name = signal_name(signum)
    if state.signum is not None:
        logger.warning("Received %s again: already stopping, ignored", name)
        return
    state.signum, state.received_at = signum, time.monotonic()
    if state.deferring():
        logger.warning("Received %s: stopping once the work in progress is saved", name)
        return
    _raise_pending()


def _ignore_repeats(signum: int, frame: Any) -> None:
    if os.getpid() == _STATE.pid:
        logger.warning("Received %s while exiting: ignored", signal_name(signum))
    else:
        _handle(signum, frame)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within it, SIGTERM / SIGINT / SIGUSR1 stop this process cleanly (see the module).

    Nested uses share one set of handlers. At the end the previous handlers come back, unless
    a stop was requested: the process is then on its way out, and further signals are ignored
    so that they cannot interrupt its exit. Outside the main thread it does nothing (Python
    delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = _STATE
    if state.depth == 0:
        state.pid, state.signum, state.received_at, state.raised = os.getpid(), None, None, False
        state.previous = {s: signal.signal(s, _handle) for s in STOP_SIGNALS}
    state.depth += 1
    try:
        yield
    finally:
        state.depth -= 1
        if state.depth == 0:
            stopping = state.signum is not None
            for s, previous in state.previous.items():
                signal.signal(s, _ignore_repeats if stopping else previous)
            state.previous = {}


def _installed() -> bool:
    return _STATE.depth > 0 and _STATE.pid == os.getpid()


@contextlib.contextmanager
def deferred(raise_pending: bool = True) -> Iterator[None]:
    """Within it a stop signal is only recorded (to be acted on at a safe point).

    Args:
        raise_pending: on leaving it normally, raise :class:`Preempted` for a signal received
            meanwhile if the code around it stops at once.
    """
    _STATE.modes.append(_DEFERRED)
    try:
        yield
    finally:
        _STATE.modes.pop()
    if raise_pending and _installed() and not _STATE.deferring():
        if _STATE.signum is not None and not _STATE.raised:
            _raise_pending()


@contextlib.contextmanager
def immediate() -> Iterator[None]:
    """Within it a stop signal raises :class:`Preempted` at once (also one received before)."""
    _STATE.modes.append(_IMMEDIATE)
    try:
        if _installed() and _STATE.signum is not None and not _STATE.raised:
            _raise_pending()
        yield
    finally:
        _STATE.modes.pop()


def stop_requested() -> Optional[int]:
    """The stop signal this process received (inside :func:`stop_signals`), else None."""
    return _STATE.signum if _STATE.pid == os.getpid() else None


def seconds_since_stop_request() -> Optional[float]:
    """Seconds since this process received its stop signal, else None."""
    if _STATE.received_at is None or _STATE.pid != os.getpid():
        return None
    return time.monotonic() - _STATE.received_at


@contextlib.contextmanager
def forward_stop_signals(pids: Callable[[], Sequence[int]]) -> Iterator[None]:
    """Within it (in a launcher), a stop signal is passed on to the processes ``pids()``,
    which stop cleanly, instead of stopping the launcher. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: Any) -> None:
        targets = list(pids())
        logger.warning(
            "Received %s: passing it on to %d process(es)", signal_name(signum), len(targets)
        )
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def blocked_for_new_processes() -> Iterator[None]:
    """Within it the stop signals are blocked in this thread, so that the processes it starts
    (DataLoader workers) keep them blocked for good. A signal received meanwhile is handled
    on leaving it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _QuietWorkers:
    """See :func:`quiet_workers`."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        # A loader starts its workers in iter() (DataLoader) or at the first item (detectron2's
        # aspect-ratio grouping): both happen with the signals blocked.
        with blocked_for_new_processes():
            it = iter(self.loader)
            try:
                first = next(it)
            except StopIteration:
                return
        yield first
        yield from it

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def quiet_workers(loader: Iterable) -> Iterable:
    """``loader`` whose worker processes start with the stop signals blocked, so that a signal
    sent to every process (SLURM) reaches the main process only."""
    return _QuietWorkers(loader)
