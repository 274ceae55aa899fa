"""Checks of a merged config before anything is built, written or trained.

yacs already rejects unknown keys (``KeyError``) and values of the wrong type; what it cannot
know is which strings and numbers make sense. :func:`validate_r2ios_config` checks those for
every ``MODEL.R2IOS.*``, ``MODEL.VGG.*`` and r2ios_d2 dataset/solver key, and a few detectron2
keys whose bad values would otherwise surface as a shape error deep inside training.
:func:`check_output_dir` makes sure the output folder can be written before training starts.

A wrong config file, key or value given by the user is a :class:`ConfigError` (a usage error:
the tools print it as one line and exit with status 2, see
:func:`r2ios_d2.engine.defaults.exit_on_usage_error`). :func:`load_r2ios_config` and
:func:`load_r2ios_lazy_config` load a config file with command-line overrides, checked, with
the learning-rate schedule fitted to a shortened run (:mod:`r2ios_d2.engine.schedule`).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "ConfigKeyError",
    "ConfigValueError",
    "allowed_choices",
    "check_lazy_overrides",
    "check_opts_keys",
    "check_output_dir",
    "load_r2ios_config",
    "load_r2ios_lazy_config",
    "validate_r2ios_config",
]


class ConfigError(Exception):
    """A config file, key or value given by the user is wrong: a usage error, not a bug."""

    def __str__(self) -> str:  # the message, without the quotes KeyError adds
        return str(self.args[0]) if self.args else ""


class ConfigKeyError(ConfigError, KeyError):
    """A config key that does not exist (e.g. misspelt on the command line)."""


class ConfigValueError(ConfigError, ValueError):
    """A config value that cannot work (e.g. out of range)."""


def allowed_choices() -> Dict[str, Tuple[str, ...]]:
    """Allowed values of the string-valued keys, read from the modules that take them (which
    check them again): ``{"MODEL.R2IOS.GATE_SCORE": ("all", "foreground"), ...}``."""
    # Imported here, when a config is checked: importing this module stays light.
    from .engine.optimizer import OPTIMIZERS
    from .modeling import backbone_vgg, box_head, linear, roi_align, roi_heads

    return {
        "MODEL.R2IOS.GATE_SCORE": roi_heads.GATE_SCORES,
        "MODEL.R2IOS.OUTPUT_MODE": roi_heads.OUTPUT_MODES,
        "MODEL.R2IOS.TEST_SCORE": roi_heads.TEST_SCORES,
        "MODEL.R2IOS.NMS_TYPE": roi_heads.NMS_TYPES,
        "MODEL.R2IOS.MASK_LOSS_NORMALIZER": roi_heads.MASK_LOSS_NORMALIZERS,
        "MODEL.R2IOS.CPU_LINEAR": linear.CPU_LINEAR_BACKENDS,
        "MODEL.R2IOS.CPU_ROI_ALIGN_GRAD": roi_align.CPU_ROI_ALIGN_GRADS,
        "MODEL.R2IOS.CPU_MASK_POOL_FORWARD": roi_align.CPU_ROI_ALIGN_FORWARDS,
        "MODEL.R2IOS.SEG_AWARE_INPUT": tuple(box_head.SEG_AWARE_INPUTS),
        "MODEL.VGG.NORM": backbone_vgg.VGG_NORMS,
        "SOLVER.OPTIMIZER": OPTIMIZERS,
    }


def _r2ios_heads_choices(cfg: CfgNode) -> Dict[str, Tuple[str, ...]]:
    """With ``R2IOSROIHeads``, ``ROI_MASK_HEAD.NAME`` must be a registered R2-IOS mask head."""
    if cfg.MODEL.ROI_HEADS.NAME != "R2IOSROIHeads":
        return {}
    from .modeling.mask_head import r2ios_mask_head_names

    return {"MODEL.ROI_MASK_HEAD.NAME": tuple(r2ios_mask_head_names())}


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range_check(
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[Any], Optional[str]]:
    """A check returning the allowed range (as text) when a value is outside it, else None."""
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    kind = "an integer" if integer else "a finite number"
    text = " and ".join(s for s in (lo, hi) if s)
    allowed = f"{kind} {text}".strip()

    def check(v: Any) -> Optional[str]:
        if not _is_number(v) or (integer and not isinstance(v, int)):
            return allowed
        if low is not None and (v <= low if low_open else v < low):
            return allowed
        if high is not None and (v >= high if high_open else v > high):
            return allowed
        return None

    return check


def _subset_check(allowed: Sequence[str], nonempty: bool = True) -> Callable[[Any], Optional[str]]:
    text = f"a {'non-empty ' if nonempty else ''}list of {', '.join(map(repr, allowed))}"

    def check(v: Any) -> Optional[str]:
        if not isinstance(v, (list, tuple)) or (nonempty and not v):
            return text
        return None if all(x in allowed for x in v) else text

    return check


def _nonempty_str_list(v: Any) -> Optional[str]:
    ok = isinstance(v, (list, tuple)) and v and all(isinstance(x, str) and x for x in v)
    return None if ok else "a non-empty list of feature names"


# key -> check(value) returning a description of the allowed values when the value is bad.
RANGE_CHECKS = {
    "MODEL.R2IOS.NUM_ITERATIONS": _range_check(1, integer=True),
    "MODEL.R2IOS.TEST_NUM_ITERATIONS": _range_check(1, integer=True),
    "MODEL.R2IOS.MASK_SIZE": _range_check(1, integer=True),
    "MODEL.R2IOS.AE_HIDDEN_DIM": _range_check(1, integer=True),
    "MODEL.R2IOS.MASK_IN_FEATURES": _nonempty_str_list,
    "MODEL.R2IOS.MASK_POOLER_SAMPLING_RATIO": _range_check(0, integer=True),
    "MODEL.R2IOS.MASK_LOSS_WEIGHT": _range_check(0),
    "MODEL.R2IOS.MASK_INIT_STD": _range_check(0),
    "MODEL.R2IOS.SEG_AWARE_GRAD_SCALE": _range_check(0),
    "MODEL.R2IOS.SEG_AWARE_SCALE": _range_check(0),
    "MODEL.R2IOS.CONF_LOSS_WEIGHT": _range_check(0),
    "MODEL.R2IOS.GRAD_PROBE_PERIOD": _range_check(0, integer=True),
    "MODEL.R2IOS.CLS_INIT_STD": _range_check(0),
    "MODEL.R2IOS.BOX_INIT_STD": _range_check(0),
    "MODEL.R2IOS.MASK_THRESHOLD": _range_check(0, 1, low_open=True, high_open=True),
    "MODEL.R2IOS.TEST_REFINE_NMS": _range_check(0, 1, high_open=True),
    "MODEL.R2IOS.TEST_REFINE_TOPK": _range_check(0, integer=True),
    "MODEL.R2IOS.CPU_LINEAR_PACK_MB": _range_check(0),
    "MODEL.VGG.WIDTH": _range_check(0, low_open=True),
    "MODEL.VGG.SEG_FC_DIM": _range_check(1, integer=True),
    "MODEL.VGG.SEG_FC6_DILATION": _range_check(1, integer=True),
    "MODEL.VGG.SEG_CONV5_DILATION": _range_check(1, integer=True),
    "MODEL.VGG.OUT_FEATURES": _subset_check(("det", "seg")),
    "MODEL.VGG.SEG_FC_DROPOUT": _range_check(0, 1, high_open=True),
    "MODEL.VGG.FROZEN_FEATURE_CACHE_MB": _range_check(0, integer=True),
    "MODEL.ROI_BOX_HEAD.FC_DROPOUT": _range_check(0, 1, high_open=True),
    "MODEL.ROI_HEADS.NUM_CLASSES": _range_check(1, integer=True),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": _range_check(1, integer=True),
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": _range_check(0, 1),
    "DATASETS.PROPOSAL_MIN_SIZE": _range_check(0),
    "SOLVER.PRETRAINED_LR_FACTOR": _range_check(0),
    "SOLVER.IMS_PER_BATCH": _range_check(1, integer=True),
    "SOLVER.MAX_ITER": _range_check(0, integer=True),
    "SOLVER.CHECKPOINT_PERIOD": _range_check(1, integer=True),
    "SOLVER.BASE_LR": _range_check(0),
    "SOLVER.CHECKPOINT_MAX_TO_KEEP": _range_check(0, integer=True),
    "DIST.COLLECTIVE_TIMEOUT": _range_check(1, integer=True),
    "DIST.LOST_PROCESS_GRACE": _range_check(0, integer=True),
}


def validate_r2ios_config(cfg: CfgNode) -> None:
    """Check the values of the r2ios_d2 keys of a merged config.

    Args:
        cfg: a config with :func:`r2ios_d2.add_r2ios_config` applied and files/opts merged.

    Raises:
        ConfigValueError: (a ``ValueError``) naming every bad key, its value and the allowed
            values (one line each when there are several).
    """
    if "R2IOS" not in cfg.MODEL:
        raise ValueError("config has no MODEL.R2IOS: call r2ios_d2.add_r2ios_config(cfg) first")
    problems: List[str] = []
    for key, allowed in {**allowed_choices(), **_r2ios_heads_choices(cfg)}.items():
        try:
            value = _get(cfg, key)
        except KeyError:
            continue
        if value not in allowed:
            problems.append(
                f"{key} = {value!r} is invalid; allowed values: {', '.join(map(repr, allowed))}"
            )
    for key, check in RANGE_CHECKS.items():
        try:
            value = _get(cfg, key)
        except KeyError:  # a detectron2 key another version may not have
            continue
        allowed = check(value)
        if allowed is not None:
            problems.append(f"{key} = {value!r} is invalid; allowed values: {allowed}")
    steps, max_iter = list(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER
    if _is_number(max_iter) and any(not _is_number(s) or s >= max_iter for s in steps):
        problems.append(
            f"SOLVER.STEPS = {tuple(steps)} is invalid; allowed values: iterations below "
            f"SOLVER.MAX_ITER = {max_iter}"
        )
    if len(problems) == 1:
        raise ConfigValueError(f"Invalid config: {problems[0]}")
    if problems:
        raise ConfigValueError("Invalid config:\n  " + "\n  ".join(problems))


def _all_keys(node: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        keys.extend(_all_keys(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"])
    return keys


def check_opts_keys(cfg: CfgNode, opts: Sequence[str]) -> None:
    """Check that the ``KEY VALUE`` pairs of a command line name existing keys.

    yacs reports an unknown key of ``merge_from_list`` with a bare ``AssertionError``; this
    raises :class:`ConfigKeyError` (a ``KeyError``) naming the key and the closest existing
    ones.

    Args:
        cfg: the config the opts will be merged into.
        opts: ``[KEY, VALUE, KEY, VALUE, ...]``.
    """
    if len(opts) % 2:
        raise ConfigValueError(
            f"config opts must be KEY VALUE pairs, got an odd number: {list(opts)}"
        )
    known = None
    for key in opts[0::2]:
        try:
            _get(cfg, key)
            continue
        except (KeyError, AttributeError, TypeError):
            pass
        known = known or _all_keys(cfg)
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.8)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigKeyError(f"Unknown config key {key!r} on the command line{hint}")


def check_output_dir(path: str) -> None:
    """Create ``path`` if needed and check that a file can be written in it.

    Called before training starts, so that an unwritable folder fails in seconds with its
    name rather than at the first checkpoint, hours in.

    Raises:
        PermissionError / NotADirectoryError / OSError: naming ``path`` (as ``OUTPUT_DIR``).
    """
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tmp-write-check-"):
            pass
    except OSError as e:
        raise type(e)(
            e.errno,
            f"OUTPUT_DIR {path!r} is not a writable folder ({e.strerror or e}); choose another "
            "OUTPUT_DIR or fix its permissions",
        ) from e


def _accepts_argument(target: Any, name: str) -> bool:
    """Whether calling ``target`` (a class or function of a LazyCall) accepts ``name``.

    A class's ``**kwargs`` are followed up its bases' ``__init__`` (as detectron2's
    ``@configurable`` heads forward them), stopping at ``nn.Module``/``object``.
    """
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        target = locate(target)
    if not inspect.isclass(target):
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return True  # no signature to check against: let the call decide
        return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    import torch

    for klass in target.__mro__:
        if klass in (torch.nn.Module, object):
            return False
        if "__init__" not in klass.__dict__:
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
    return False


def check_lazy_overrides(cfg: Any, overrides: Sequence[str]) -> None:
    """Check that ``key=value`` overrides of a LazyConfig name existing keys.

    detectron2's ``LazyConfig.apply_overrides`` silently creates a misspelt key (which the
    model then never reads). A key is accepted if it exists, or if its parent is a
    ``LazyCall`` whose target takes an argument of that name (e.g. a keyword left at its
    default in the config file).

    Args:
        cfg: a loaded LazyConfig.
        overrides: ``["a.b=1", ...]`` as on the command line.

    Raises:
        ConfigKeyError: naming the key and the closest existing ones.
    """
    from omegaconf import OmegaConf

    missing = object()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if OmegaConf.select(cfg, key, default=missing) is not missing:
            continue
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
        if OmegaConf.is_dict(parent) and "_target_" in parent:
            if _accepts_argument(parent["_target_"], name):
                continue
        siblings = list(parent.keys()) if OmegaConf.is_dict(parent) else []
        close = difflib.get_close_matches(name, [str(s) for s in siblings], n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(f'{parent_key}.{c}'.lstrip('.') for c in close)}?"
        raise ConfigKeyError(f"Unknown config key {key!r} in the overrides{hint if close else ''}")


def load_r2ios_config(config_file: str, opts: Sequence[str] = ()) -> Tuple[CfgNode, List[str]]:
    """detectron2's defaults + r2ios_d2's keys + ``config_file`` + the command line's
    ``opts`` (checked), with the schedule fitted to a shortened ``SOLVER.MAX_ITER``
    (:func:`r2ios_d2.engine.schedule.fit_yacs_schedule`), validated; not frozen.

    Returns:
        the config, and the notes to log once logging is set up (the schedule scaled).

    Raises:
        ConfigError: the file is missing or has an unknown key, an opt names an unknown key or
            has a value of the wrong type, or a value is invalid; the message names it.
    """
    from detectron2.config import get_cfg

    from .config import add_r2ios_config
    from .engine.schedule import fit_yacs_schedule

    cfg = get_cfg()
    add_r2ios_config(cfg)
    if not os.path.isfile(config_file):
        raise ConfigValueError(f"--config-file {config_file} does not exist")
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:  # yacs: "Non-existent config key: ..."
        raise ConfigKeyError(f"{config_file}: {e.args[0] if e.args else e}") from e
    except OSError as e:  # e.g. a _BASE_ file that does not exist
        raise ConfigValueError(f"{config_file}: {e}") from e
    file_solver = cfg.SOLVER.clone()
    check_opts_keys(cfg, opts)
    try:
        cfg.merge_from_list(list(opts))
    except (ValueError, AssertionError) as e:  # yacs: a value of the wrong type
        raise ConfigValueError(f"config opts: {e}") from e
    try:
        notes = [n for n in [fit_yacs_schedule(cfg, file_solver, opts)] if n]
    except ValueError as e:  # steps on the command line that reach SOLVER.MAX_ITER
        raise ConfigValueError(str(e)) from e
    validate_r2ios_config(cfg)
    return cfg, notes


def load_r2ios_lazy_config(
    config_file: str, overrides: Sequence[str] = (), cfg: Any = None
) -> Tuple[Any, List[str]]:
    """A LazyConfig file (or ``cfg``, already loaded) with the ``key=value`` ``overrides``
    applied (checked), the schedule fitted to a shortened ``train.max_iter``
    (:func:`r2ios_d2.engine.schedule.fit_lazy_schedule`).

    Returns:
        the config, and the notes to log once logging is set up (the schedule scaled).

    Raises:
        ConfigError: the file is missing, an override names an unknown key, or the
            schedule's milestones reach ``train.max_iter``.
    """
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    from .engine.schedule import fit_lazy_schedule

    if cfg is None:
        if not os.path.isfile(config_file):
            raise ConfigValueError(f"--config-file {config_file} does not exist")
        cfg = LazyConfig.load(config_file)
    file_max_iter = OmegaConf.select(cfg, "train.max_iter", default=None)
    check_lazy_overrides(cfg, overrides)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    try:
        note = fit_lazy_schedule(cfg, file_max_iter, overrides) if file_max_iter else None
    except ValueError as e:  # milestones that reach train.max_iter
        raise ConfigValueError(str(e)) from e
    return cfg, [note] if note else []
