"""What every r2ios_d2 tool does when it starts: logging set up, and usage errors reported.

* :func:`r2ios_default_setup` is detectron2's ``default_setup`` (its loggers, the environment
  and the config in the log, ``config.yaml`` in the output folder, seeds) with r2ios_d2's own
  logger beside detectron2's (:func:`setup_r2ios_logger`), so that every ``r2ios_d2.*``
  message (the AP^r tables of the evaluator among them) reaches the console and
  ``<output_dir>/log.txt``, and with no ANSI colour codes in the log files.
* :func:`exit_on_usage_error` turns a :class:`~r2ios_d2.config_checks.ConfigError` (a misspelt
  config key or override, a bad value) into what argparse does for a bad flag: one line on
  stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
from typing import Any, Iterator, Optional

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config_checks import ConfigError

__all__ = ["exit_on_usage_error", "r2ios_default_setup", "setup_r2ios_logger"]

# The loggers whose handlers r2ios_d2's tools set up (detectron2's default_setup: the first two).
LOGGER_NAMES = ("fvcore", "detectron2", "r2ios_d2")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _NoColourFormatter(logging.Formatter):
    """Another formatter's text with the ANSI colour codes removed."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", self.inner.format(record))


def _strip_colours(logger: logging.Logger) -> None:
    """Log files, and consoles that are not terminals (e.g. redirected to a file), get text
    without colour codes (detectron2 colours the config it logs and its console prefixes)."""
    for handler in logger.handlers:
        stream = getattr(handler, "stream", None)
        if stream is None or isinstance(handler.formatter, _NoColourFormatter):
            continue
        isatty = getattr(stream, "isatty", None)
        if callable(isatty) and isatty():
            continue
        handler.setFormatter(_NoColourFormatter(handler.formatter or logging.Formatter()))


def _output_dir(cfg: Any) -> Optional[str]:
    """``OUTPUT_DIR`` of a yacs config or ``train.output_dir`` of a LazyConfig."""
    if "OUTPUT_DIR" in cfg:
        return cfg.OUTPUT_DIR or None
    train = cfg.get("train", None)
    return (train.get("output_dir", None) if train is not None else None) or None


def setup_r2ios_logger(output_dir: Optional[str] = None, rank: int = 0) -> logging.Logger:
    """Set up the ``r2ios_d2`` logger with detectron2's ``setup_logger``, as it sets up
    ``detectron2``: every message on the console (rank 0 only) and in
    ``<output_dir>/log.txt`` (``log.txt.rank<N>`` for the other ranks), the same file as
    detectron2's; calling it again with the same arguments adds nothing.

    Args:
        output_dir: the folder of ``log.txt`` (None: console only).
        rank: this process's rank.

    Returns:
        the ``r2ios_d2`` logger.
    """
    logger = setup_logger(
        output_dir, distributed_rank=rank, name="r2ios_d2", abbrev_name="r2ios_d2"
    )
    _strip_colours(logger)
    return logger


def r2ios_default_setup(cfg: Any, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup(cfg, args)`` plus :func:`setup_r2ios_logger`, all log
    files without colour codes.

    Args:
        cfg: a yacs config (``OUTPUT_DIR``) or a LazyConfig (``train.output_dir``).
        args: the parsed command line (logged).
    """
    from detectron2.engine import default_setup

    output_dir, rank = _output_dir(cfg), comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    # detectron2's loggers, created with the very arguments default_setup passes: its
    # setup_logger is cached, so default_setup finds these and adds no second handler. Their
    # formatters are made colour-free before default_setup logs the (colour-highlighted) config.
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    for name in LOGGER_NAMES[:2]:
        _strip_colours(logging.getLogger(name))
    setup_r2ios_logger(output_dir, rank)
    default_setup(cfg, args)


@contextlib.contextmanager
def exit_on_usage_error(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Inside it, a :class:`~r2ios_d2.config_checks.ConfigError` ends the program as argparse
    ends it for a bad flag: ``<prog>: error: <message>`` on stderr, exit status 2."""
    try:
        yield
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
