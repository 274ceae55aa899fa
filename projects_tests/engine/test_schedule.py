"""A run shortened by SOLVER.MAX_ITER / train.max_iter alone keeps its schedule's shape, the same
for yacs and LazyConfig; configs whose steps fit are left as written."""

import os

import pytest
from detectron2.config import instantiate

from r2ios_d2.config_checks import ConfigValueError, load_r2ios_config, load_r2ios_lazy_config
from r2ios_d2.engine import scaled_schedule_opts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YACS = os.path.join(REPO, "configs/synthetic/r2ios_tiny_stage1.yaml")  # 800 it, STEPS (650,)
LAZY = os.path.join(REPO, "configs/lazy/r2ios_tiny_stage1.py")  # its twin


def test_yacs_max_iter_alone_scales_steps_and_warmup():
    cfg, notes = load_r2ios_config(YACS, ["SOLVER.MAX_ITER", "60"])
    assert cfg.SOLVER.MAX_ITER == 60
    assert tuple(cfg.SOLVER.STEPS) == (49,) and cfg.SOLVER.WARMUP_ITERS == 4
    (note,) = notes
    assert "SOLVER.STEPS (49,)" in note and "SOLVER.WARMUP_ITERS 50 -> 4" in note
    # the demo's scaling of a shortened run, exactly
    assert scaled_schedule_opts(load_r2ios_config(YACS)[0].SOLVER, 60)[3:] == [
        "(49,)",
        "SOLVER.WARMUP_ITERS",
        "4",
    ]


def test_yacs_schedule_that_fits_is_unchanged():
    for opts in ([], ["SOLVER.MAX_ITER", "1000"], ["SOLVER.MAX_ITER", "651"]):
        cfg, notes = load_r2ios_config(YACS, opts)
        assert tuple(cfg.SOLVER.STEPS) == (650,) and cfg.SOLVER.WARMUP_ITERS == 50, opts
        assert notes == []


def test_yacs_explicit_steps_beyond_the_run_name_the_value_to_use():
    with pytest.raises(ConfigValueError, match=r"SOLVER.STEPS \(650,\).*SOLVER.STEPS '\(49,\)'"):
        load_r2ios_config(YACS, ["SOLVER.MAX_ITER", "60", "SOLVER.STEPS", "(650,)"])
    cfg, notes = load_r2ios_config(
        YACS, ["SOLVER.MAX_ITER", "60", "SOLVER.STEPS", "(30,)", "SOLVER.WARMUP_ITERS", "7"]
    )
    assert tuple(cfg.SOLVER.STEPS) == (30,) and cfg.SOLVER.WARMUP_ITERS == 7 and notes == []


def test_lazy_max_iter_alone_scales_milestones_and_the_scheduler_builds():
    cfg, notes = load_r2ios_lazy_config(LAZY, ["train.max_iter=60"])
    assert list(cfg.lr_multiplier.scheduler.milestones) == [49]
    (note,) = notes
    assert "lr_multiplier.scheduler.milestones" in note and "[49]" in note
    sched = instantiate(cfg.lr_multiplier)  # detectron2 raised "Milestone must be smaller..."
    assert sched(48 / 60) == pytest.approx(1.0) and sched(50 / 60) == pytest.approx(0.1)


def test_lazy_and_yacs_scale_alike():
    for n in (1, 2, 60, 649, 650):
        lazy, _ = load_r2ios_lazy_config(LAZY, [f"train.max_iter={n}"])
        yacs, _ = load_r2ios_config(YACS, ["SOLVER.MAX_ITER", str(n)])
        milestones = list(lazy.lr_multiplier.scheduler.milestones)
        assert milestones == list(yacs.SOLVER.STEPS), n
        values = list(lazy.lr_multiplier.scheduler["values"])
        assert len(values) == len(milestones) + 1  # a dropped milestone drops its lr value
        instantiate(lazy.lr_multiplier)


def test_lazy_schedule_that_fits_is_unchanged_and_explicit_milestones_are_checked():
    for overrides in ([], ["train.max_iter=1000"]):
        cfg, notes = load_r2ios_lazy_config(LAZY, overrides)
        assert list(cfg.lr_multiplier.scheduler.milestones) == [650] and notes == []
    bad = ["train.max_iter=60", "lr_multiplier.scheduler.milestones=[650]"]
    with pytest.raises(ConfigValueError, match=r"milestones \[650\].*milestones=\[49\]"):
        load_r2ios_lazy_config(LAZY, bad)
    ok = ["train.max_iter=60", "lr_multiplier.scheduler.milestones=[20]"]
    assert list(load_r2ios_lazy_config(LAZY, ok)[0].lr_multiplier.scheduler.milestones) == [20]
