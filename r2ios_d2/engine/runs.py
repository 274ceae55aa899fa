"""Train -> evaluate runs of ``tools/train_net.py`` as logged subprocesses, resumable.

Shared by ``tools/run_demo.py`` and ``tools/ablation.py``. A training is done once its
``OUTPUT_DIR/model_final.pth`` exists (it runs with ``--resume``, so an interrupted one
continues from its last checkpoint); an evaluation is done once its ``sds_results.json``
exists. Each subprocess writes its output to a log file; a failure raises :class:`StepError`
with the tail of that log.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from detectron2.config import CfgNode, get_cfg

from ..config import add_r2ios_config
from .optimizer import scaled_schedule_opts

__all__ = [
    "EvalJob",
    "Step",
    "StepError",
    "TrainEvalRunner",
    "final_train_scalar",
    "load_config",
    "read_results",
    "results_file",
    "run_at_most",
    "schedule_opts",
]

logger = logging.getLogger(__name__)

# Lines of a failed step's log shown in the error.
LOG_TAIL_LINES = 30
# The evaluation output detectron2's evaluator writes for the synthetic val split.
DEFAULT_DATASET = "r2ios_synthetic_val"


class StepError(RuntimeError):
    """A subprocess step exited with a non-zero status; the message ends with its log's tail."""


class Step:
    """A command running as a subprocess, its stdout and stderr in ``log_file``.

    Args:
        cmd: the command; its items are converted with ``str``.
        log_file: where the output goes (parent folders are made).
        cwd: working directory of the subprocess.
        threads: OpenMP/MKL threads of the subprocess. None: ``OMP_NUM_THREADS`` as in the
            environment, 1 when unset (on 2 cores, with a data-loader worker beside it, more
            threads oversubscribe the CPU and make a tiny model's step several times slower);
            0: the environment unchanged; n > 0: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` n.
    """

    def __init__(
        self, cmd: Sequence, log_file: Path, cwd: Path, threads: Optional[int] = None
    ) -> None:
        self.cmd = [str(c) for c in cmd]
        self.log_file = Path(log_file)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        logger.info("$ %s  (log: %s)", " ".join(shlex.quote(c) for c in self.cmd), log_file)
        env = dict(os.environ)
        if threads is None:
            env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
        elif threads > 0:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self._start = time.time()
        with open(self.log_file, "w") as f:
            self.proc = subprocess.Popen(
                self.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env
            )

    def wait(self) -> float:
        """Wait for the step; raise :class:`StepError` on failure. Returns its wall seconds."""
        if self.proc.wait() != 0:
            tail = self.log_file.read_text().splitlines()[-LOG_TAIL_LINES:]
            raise StepError(
                f"step failed ({self.proc.returncode}): see {self.log_file}\n" + "\n".join(tail)
            )
        return time.time() - self._start


def run_at_most(steps: Sequence[Tuple[Sequence, Path]], jobs: int, **step_kwargs) -> List[float]:
    """Run ``(cmd, log_file)`` steps, at most ``jobs`` at a time.

    Args:
        steps: the commands and their log files.
        jobs: how many run at once (at least 1).
        step_kwargs: ``cwd`` and ``threads`` of :class:`Step`.

    Returns:
        the wall seconds of each step, in the order given.
    """

    def one(step: Tuple[Sequence, Path]) -> float:
        return Step(step[0], step[1], **step_kwargs).wait()

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, steps))


def load_config(config: Union[str, Path]) -> CfgNode:
    """A YAML config merged onto detectron2's and r2ios_d2's defaults."""
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(str(config))
    return cfg


def schedule_opts(config: Union[str, Path], max_iter: int, always: bool = False) -> List[str]:
    """``SOLVER`` overrides that run ``config``'s schedule in ``max_iter`` iterations.

    ``STEPS`` and ``WARMUP_ITERS`` are scaled alike (see
    :func:`r2ios_d2.engine.scaled_schedule_opts`).

    Args:
        config: the YAML file.
        max_iter: the new ``SOLVER.MAX_ITER``.
        always: give the overrides even when the YAML already has ``max_iter`` iterations
            (otherwise none then).

    Returns:
        ``KEY value`` pairs as strings, for a command line.
    """
    solver = load_config(config).SOLVER
    if max_iter == solver.MAX_ITER and not always:
        return []
    return scaled_schedule_opts(solver, max_iter)


def results_file(eval_dir: Path, dataset: str = DEFAULT_DATASET) -> Path:
    """The ``sds_results.json`` that ``train_net.py --eval-only`` writes under ``eval_dir``."""
    return Path(eval_dir) / "inference" / dataset / "sds_results.json"


def read_results(eval_dir: Path, dataset: str = DEFAULT_DATASET) -> dict:
    """The metrics of an evaluation: ``{"segm": {"APr50": ...}, "bbox": {...}}``."""
    return json.loads(results_file(eval_dir, dataset).read_text())["results"]


def final_train_scalar(metrics_json: Path, key: str) -> Optional[float]:
    """The last logged value of ``key`` in a detectron2 ``metrics.json`` (the median of its
    last logging window), or None if it was never logged or the file does not exist."""
    from ..visualization import read_metrics  # matplotlib: only when asked

    if not Path(metrics_json).is_file():
        return None
    values = read_metrics(str(metrics_json), key)[1]
    return values[-1] if values else None


@dataclass(frozen=True)
class EvalJob:
    """One ``--eval-only`` run: ``config`` with ``weights`` (``""``: random init) and extra
    ``opts``, its outputs in ``output_dir``, its log in ``log``."""

    config: Path
    weights: Union[str, Path]
    output_dir: Path
    opts: Sequence = ()
    log: Optional[Path] = None


@dataclass
class TrainEvalRunner:
    """Runs ``tools/train_net.py`` trainings and evaluations, skipping what is done.

    Attributes:
        repo: the repository root (working directory of the subprocesses).
        python: the interpreter that runs ``train_net.py``.
        threads: OpenMP threads of each subprocess (see :class:`Step`).
        dataset: the evaluation dataset whose results mark an evaluation as done.
    """

    repo: Path
    python: str = sys.executable
    threads: Optional[int] = None
    dataset: str = DEFAULT_DATASET

    @property
    def train_net(self) -> Path:
        return self.repo / "tools" / "train_net.py"

    def step(self, cmd: Sequence, log_file: Path) -> Step:
        """Start ``cmd`` as a :class:`Step` with this runner's directory and threads."""
        return Step(cmd, log_file, cwd=self.repo, threads=self.threads)

    @staticmethod
    def weights_of(output_dir: Path) -> Path:
        """The final checkpoint of a training in ``output_dir``."""
        return Path(output_dir) / "model_final.pth"

    def train_command(self, config: Path, output_dir: Path, opts: Sequence = ()) -> list:
        """``train_net.py --resume`` with ``OUTPUT_DIR`` then ``opts``."""
        cmd = [self.python, self.train_net, "--config-file", config, "--resume"]
        return cmd + ["OUTPUT_DIR", output_dir, *opts]

    def eval_command(self, job: EvalJob) -> list:
        """``train_net.py --eval-only`` with ``MODEL.WEIGHTS``, ``OUTPUT_DIR`` then the opts."""
        cmd = [self.python, self.train_net, "--config-file", job.config, "--eval-only"]
        return cmd + ["MODEL.WEIGHTS", job.weights, "OUTPUT_DIR", job.output_dir, *job.opts]

    def start_training(
        self, config: Path, output_dir: Path, opts: Sequence, log_file: Path
    ) -> Optional[Step]:
        """Start a training unless ``output_dir`` holds its ``model_final.pth`` (then None)."""
        if self.weights_of(output_dir).is_file():
            return None
        return self.step(self.train_command(config, output_dir, opts), log_file)

    def train(
        self, config: Path, output_dir: Path, opts: Sequence, log_file: Path
    ) -> Optional[float]:
        """Train (unless done) and wait. Returns the wall seconds, None when already done."""
        step = self.start_training(config, output_dir, opts, log_file)
        return None if step is None else step.wait()

    def is_evaluated(self, output_dir: Path) -> bool:
        """Whether ``output_dir`` holds the results of an evaluation on ``self.dataset``."""
        return results_file(output_dir, self.dataset).is_file()

    def evaluate(self, job: EvalJob) -> Optional[float]:
        """Evaluate (unless done) and wait. Returns the wall seconds, None when already done."""
        if self.is_evaluated(job.output_dir):
            return None
        return self.step(self.eval_command(job), self._log_of(job)).wait()

    def evaluate_all(self, jobs: Sequence[EvalJob], parallel: int = 1) -> None:
        """Run the evaluations that are not done yet, ``parallel`` at a time."""
        todo = [j for j in jobs if not self.is_evaluated(j.output_dir)]
        run_at_most(
            [(self.eval_command(j), self._log_of(j)) for j in todo],
            parallel,
            cwd=self.repo,
            threads=self.threads,
        )

    def results(self, output_dir: Path) -> dict:
        """The metrics of the evaluation in ``output_dir`` (see :func:`read_results`)."""
        return read_results(output_dir, self.dataset)

    @staticmethod
    def _log_of(job: EvalJob) -> Path:
        return job.log or Path(job.output_dir) / "eval.log"
