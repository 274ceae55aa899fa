"""Command-line options shared by the tools, in a module that imports only the standard library.

A tool builds its parser from these and parses its command line before it imports torch,
detectron2 or ``r2ios_d2`` (importing ``r2ios_d2`` registers its parts, which loads both), so
``--help`` and argparse's usage errors (exit status 2) answer at once:

- :func:`add_training_arguments`: the options of the training tools (``--config-file``,
  ``--resume``, ``--eval-only``, the process options and the config overrides);
- :func:`add_register_coco_argument`: ``--register-coco`` and ``--coco-categories``, read by
  :func:`r2ios_d2.data.coco.register_coco_from_args`;
- :func:`add_result_arguments` / :func:`tool_parser`: what every benchmark tool shares;
- :func:`parse_before_imports`: a tool run as a script parses before its heavy imports.

``tools/`` is not a package: a tool imports this module with its own folder on ``sys.path``
(the case when it runs as a script; a tool loaded from its path puts the folder there).
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

__all__ = [
    "add_register_coco_argument",
    "add_result_arguments",
    "add_training_arguments",
    "parse_before_imports",
    "tool_parser",
    "training_parser",
]


def parse_before_imports(
    module_name: str, build_parser: Callable[[], argparse.ArgumentParser]
) -> None:
    """When the tool runs as a script (``module_name == "__main__"``), parse ``sys.argv`` now.

    Called between a tool's light imports and its heavy ones: ``--help`` prints and argparse's
    usage errors (unknown option, missing or badly typed value) end the program with status 2
    before torch and detectron2 load. The tool's ``main`` parses the same line again, after its
    imports; imported as a module (by ``tools/benchmark.py`` or a test), nothing is parsed.

    Args:
        module_name: the tool's ``__name__``.
        build_parser: the tool's parser, built from the standard library and this module.
    """
    if module_name == "__main__":
        build_parser().parse_args()


def _default_dist_url() -> str:
    """A local rendezvous port of this user's (ranks of one run meet there; two users of one
    machine get different ports)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return f"tcp://127.0.0.1:{49152 + uid % 16000}"


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of the training tools (``tools/train_net.py``,
    ``tools/lazyconfig_train_net.py``): the config file, resume / evaluate only, the processes
    (GPUs, machines, CPU processes), ``--register-coco`` and the config overrides; returns the
    parser."""
    parser.add_argument("--config-file", default="", metavar="FILE", help="the config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint of OUTPUT_DIR (otherwise start from MODEL.WEIGHTS)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate only, no training")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="machines in all")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="this machine's rank (0 .. num-machines - 1)"
    )
    parser.add_argument(
        "--dist-url",
        default=_default_dist_url(),
        help="where the processes of a multi-GPU or multi-machine run meet (with several "
        "machines: the first machine's address)",
    )
    add_register_coco_argument(parser)
    parser.add_argument(
        "--num-cpu-processes",
        type=int,
        default=1,
        help="train/evaluate with this many CPU processes (gloo); use with a CPU device",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=None,
        help="config overrides at the end of the command line: KEY VALUE pairs for a YAML "
        "config (e.g. SOLVER.MAX_ITER 60), key=value for a LazyConfig (train.max_iter=60)",
    )
    return parser


def training_parser(doc: Optional[str] = None) -> argparse.ArgumentParser:
    """A training tool's parser: ``doc`` (the tool's docstring: what it does, examples) above
    the options of :func:`add_training_arguments`."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return add_training_arguments(parser)


def add_register_coco_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the repeatable ``--register-coco NAME JSON IMAGE_ROOT`` flag (``args.register_coco``,
    a list of ``[NAME, JSON, IMAGE_ROOT]``) and ``--coco-categories`` to a tool's parser;
    returns the parser."""
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable); its proposals go to "
        "<folder of JSON>/proposals/NAME/",
    )
    parser.add_argument(
        "--coco-categories",
        default=None,
        metavar="SUBSET",
        help="only these categories of every --register-coco dataset, in this class order: "
        "'voc' (the 20 PASCAL VOC classes under VOC's names) or comma-separated NAME or "
        "NEW=NAME entries (default: all)",
    )
    return parser


def add_result_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The options every benchmark tool shares: ``--quick``, ``--threads`` (torch threads of
    this process), ``--results-dir`` and ``--tag`` (suffix of the result file names)."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 because on a shared 2-core machine 2 threads "
        "ran 10-20x slower under contention",
    )
    parser.add_argument("--results-dir", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix of the result file names")


def tool_parser(
    doc: str, quick_help: str, add_arguments: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """A benchmark tool's parser: its description (first paragraph of ``doc``), the shared
    result options (:func:`add_result_arguments`) and its own (``add_arguments(parser)``)."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_result_arguments(parser, quick_help)
    add_arguments(parser)
    return parser
