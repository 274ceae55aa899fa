"""A run shortened by its length key alone keeps the shape of its learning-rate schedule.

The rule, the same for yacs and LazyConfig configs: when the run's length set on the command
line (``SOLVER.MAX_ITER`` / ``train.max_iter``) is at or below a step of the config file's
schedule (``SOLVER.STEPS`` / the ``milestones`` of ``lr_multiplier``), and the steps are not
set on the command line too, every step is scaled by new length / file length (rounded, at
least 1; a step that still reaches the end is dropped with its lr value), and so is yacs'
``SOLVER.WARMUP_ITERS`` (at most half the run; LazyConfig's ``warmup_length`` is already a
fraction of the run). This is :func:`scaled_schedule_opts`, which the demo's shortened runs use.
A warning gives the new values. Steps below the length are never changed, so a config that
already fits runs exactly as written; steps set on the command line that reach the end are an
error naming the key and the value to use.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from detectron2.config import CfgNode

__all__ = ["fit_lazy_schedule", "fit_yacs_schedule", "scale_steps", "scaled_solver_schedule"]


def scale_steps(steps: Sequence[int], old_max_iter: int, new_max_iter: int) -> Tuple[int, ...]:
    """``steps`` of a ``old_max_iter``-iteration schedule, scaled to ``new_max_iter``
    iterations: rounded, at least 1, and only those below ``new_max_iter``."""
    f = new_max_iter / max(1, old_max_iter)
    scaled = (max(1, round(s * f)) for s in steps)
    return tuple(s for s in scaled if s < new_max_iter)


def scaled_solver_schedule(solver: CfgNode, max_iter: int) -> Tuple[Tuple[int, ...], int]:
    """``(STEPS, WARMUP_ITERS)`` that run a yacs ``SOLVER``'s schedule in ``max_iter``
    iterations: both scaled by ``max_iter / solver.MAX_ITER``, the warm-up at most half the
    run."""
    f = max_iter / max(1, solver.MAX_ITER)
    steps = scale_steps(solver.STEPS, solver.MAX_ITER, max_iter)
    return steps, min(round(solver.WARMUP_ITERS * f), max_iter // 2)


def _set_on_command_line(overrides: Sequence[str], key: str) -> bool:
    """Whether a ``key=value`` override sets ``key`` (or a part of it)."""
    names = (o.split("=", 1)[0].lstrip("+~") for o in overrides)
    return any(n == key or n.startswith(key + ".") for n in names)


def fit_yacs_schedule(cfg: CfgNode, file_solver: CfgNode, opts: Sequence[str]) -> Optional[str]:
    """Apply the rule of this module to a merged yacs config (``cfg`` not frozen).

    Args:
        cfg: the config with the config file and ``opts`` merged.
        file_solver: ``cfg.SOLVER`` as the config file had it (before ``opts``).
        opts: the command line's ``[KEY, VALUE, ...]``.

    Returns:
        the warning to log when the schedule was scaled, else None.

    Raises:
        ValueError: ``SOLVER.STEPS`` given in ``opts`` reach ``SOLVER.MAX_ITER`` (the config
            loaders report it as a usage error).
    """
    solver, keys = cfg.SOLVER, list(opts[0::2])
    max_iter = solver.MAX_ITER
    if not isinstance(max_iter, int) or all(s < max_iter for s in solver.STEPS):
        return None
    steps, warmup = scaled_solver_schedule(file_solver, max_iter)
    if "SOLVER.STEPS" in keys:
        raise ValueError(
            f"SOLVER.STEPS {tuple(solver.STEPS)} must be below SOLVER.MAX_ITER {max_iter}: "
            f"e.g. SOLVER.STEPS '{steps}' (the config file's schedule scaled to {max_iter} "
            "iterations; leave SOLVER.STEPS out to get it)"
        )
    if "SOLVER.MAX_ITER" not in keys:  # the file's own schedule: validate_r2ios_config says so
        return None
    old = (tuple(solver.STEPS), solver.WARMUP_ITERS)
    solver.STEPS = steps
    if "SOLVER.WARMUP_ITERS" not in keys:
        solver.WARMUP_ITERS = warmup
    return (
        f"SOLVER.MAX_ITER {max_iter} is at or below SOLVER.STEPS {old[0]}: the schedule is "
        f"scaled to the shorter run (x{max_iter / file_solver.MAX_ITER:.3g}): SOLVER.STEPS "
        f"{tuple(solver.STEPS)}, SOLVER.WARMUP_ITERS {old[1]} -> {solver.WARMUP_ITERS} "
        "(set SOLVER.STEPS on the command line to choose them)"
    )


def _milestones_node(cfg: Any) -> Tuple[Any, str]:
    """The node of ``cfg.lr_multiplier`` holding ``milestones`` and its dotted key, or
    (None, "") (e.g. a cosine schedule)."""
    from omegaconf import OmegaConf

    for key in ("lr_multiplier", "lr_multiplier.scheduler"):
        node = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_dict(node) and "milestones" in node:
            return node, key
    return None, ""


def fit_lazy_schedule(cfg: Any, file_max_iter: int, overrides: Sequence[str]) -> Optional[str]:
    """Apply the rule of this module to a LazyConfig with its overrides applied.

    Args:
        cfg: the LazyConfig (``train.max_iter``, ``lr_multiplier``).
        file_max_iter: ``train.max_iter`` as the config file had it.
        overrides: the command line's ``key=value`` overrides.

    Returns:
        the warning to log when the milestones were scaled, else None.

    Raises:
        ValueError: milestones given on the command line, or in the config file itself,
            reach ``train.max_iter`` (the config loaders report it as a usage error).
    """
    node, key = _milestones_node(cfg)
    max_iter = cfg.train.get("max_iter") if "train" in cfg else None
    if node is None or not isinstance(max_iter, int):
        return None
    milestones = [int(m) for m in node["milestones"]]
    if all(m < max_iter for m in milestones):
        return None
    scaled = list(scale_steps(milestones, file_max_iter, max_iter))
    explicit = _set_on_command_line(overrides, f"{key}.milestones")
    if explicit or not _set_on_command_line(overrides, "train.max_iter"):
        where = "on the command line" if explicit else "in the config file"
        raise ValueError(
            f"{key}.milestones {milestones} ({where}) must be below train.max_iter {max_iter}: "
            f"e.g. {key}.milestones={scaled}"
        )
    node["milestones"] = scaled
    values = node.get("values", None)
    if values is not None and len(values) > len(scaled) + 1:
        node["values"] = list(values)[: len(scaled) + 1]
    return (
        f"train.max_iter {max_iter} is at or below {key}.milestones {milestones}: they are "
        f"scaled to the shorter run (x{max_iter / file_max_iter:.3g}): {scaled} (set "
        f"{key}.milestones on the command line to choose them)"
    )
