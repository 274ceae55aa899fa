"""Config validation: every bad value is named with the allowed ones, every shipped config is
valid, and the output-folder check names the folder."""

import glob
import os

import pytest
from conftest import tiny_r2ios_cfg
from detectron2.config import get_cfg

from r2ios_d2 import add_r2ios_config
from r2ios_d2.config_checks import (
    allowed_choices,
    check_opts_keys,
    check_output_dir,
    validate_r2ios_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD_VALUES = [
    ("MODEL.R2IOS.NUM_ITERATIONS", 0, "an integer >= 1"),
    ("MODEL.R2IOS.TEST_NUM_ITERATIONS", -2, "an integer >= 1"),
    ("MODEL.ROI_MASK_HEAD.NAME", "foo", "'InstanceAwareAEMaskHead', 'R2IOSConvMaskHead'"),
    ("MODEL.R2IOS.GATE_SCORE", "bar", "'all', 'foreground'"),
    ("MODEL.R2IOS.NMS_TYPE", "segm", "'box', 'mask'"),
    ("MODEL.R2IOS.OUTPUT_MODE", "per_image", "'proposal', 'per_class'"),
    ("MODEL.R2IOS.MASK_LOSS_NORMALIZER", "all", "'fg', 'rois'"),
    ("MODEL.R2IOS.MASK_SIZE", 0, "an integer >= 1"),
    ("MODEL.R2IOS.MASK_SIZE", -40, "an integer >= 1"),
    ("MODEL.R2IOS.AE_HIDDEN_DIM", 0, "an integer >= 1"),
    ("MODEL.R2IOS.MASK_IN_FEATURES", [], "a non-empty list"),
    ("MODEL.R2IOS.MASK_POOLER_SAMPLING_RATIO", -1, "an integer >= 0"),
    ("MODEL.R2IOS.MASK_LOSS_WEIGHT", float("nan"), "a finite number >= 0"),
    ("MODEL.R2IOS.MASK_INIT_STD", -0.1, "a finite number >= 0"),
    ("MODEL.R2IOS.MASK_THRESHOLD", 1.0, "> 0 and < 1"),
    ("MODEL.R2IOS.TEST_REFINE_NMS", 1.0, ">= 0 and < 1"),
    ("MODEL.R2IOS.TEST_REFINE_TOPK", -1, "an integer >= 0"),
    ("MODEL.VGG.WIDTH", 0.0, "a finite number > 0"),
    ("MODEL.VGG.OUT_FEATURES", ["det", "p2"], "'det', 'seg'"),
    ("MODEL.VGG.SEG_FC_DROPOUT", 1.0, ">= 0 and < 1"),
    ("MODEL.VGG.SEG_FC6_DILATION", 0, "an integer >= 1"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", 0, "an integer >= 1"),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 0, "an integer >= 1"),
    ("MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.5, ">= 0 and <= 1"),
    ("DATASETS.PROPOSAL_MIN_SIZE", -1.0, "a finite number >= 0"),
    ("SOLVER.PRETRAINED_LR_FACTOR", -0.1, "a finite number >= 0"),
    ("SOLVER.IMS_PER_BATCH", 0, "an integer >= 1"),
    ("SOLVER.CHECKPOINT_PERIOD", 0, "an integer >= 1"),
    ("SOLVER.BASE_LR", float("inf"), "a finite number >= 0"),
    ("SOLVER.STEPS", (120000,), "iterations below SOLVER.MAX_ITER"),
]


def _set(cfg, key, value):
    *path, last = key.split(".")
    node = cfg
    for p in path:
        node = node[p]
    node[last] = value


@pytest.mark.parametrize(
    "key,value,allowed", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES]
)
def test_bad_value_is_named_with_allowed_values(key, value, allowed):
    cfg = tiny_r2ios_cfg()
    _set(cfg, key, value)
    with pytest.raises(ValueError) as err:
        validate_r2ios_config(cfg)
    msg = str(err.value)
    assert f"{key} = {value!r} is invalid" in msg or f"{key} = {tuple(value)!r}" in msg, msg
    assert allowed in msg, msg
    assert msg.count("is invalid") == 1  # only the bad key


def test_every_bad_key_is_reported_at_once():
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.NUM_ITERATIONS = 0
    cfg.MODEL.R2IOS.NMS_TYPE = "x"
    with pytest.raises(ValueError, match=r"(?s)NMS_TYPE.*NUM_ITERATIONS"):
        validate_r2ios_config(cfg)


def test_config_without_r2ios_keys_says_what_to_call():
    with pytest.raises(ValueError, match="add_r2ios_config"):
        validate_r2ios_config(get_cfg())


@pytest.mark.parametrize(
    "path",
    sorted(
        os.path.relpath(p, REPO)
        for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    ),
)
def test_every_shipped_config_is_valid(path):
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    validate_r2ios_config(cfg)


def test_allowed_choices_match_the_modules():
    # Every accepted choice builds (the modules check the same sets), every mask head too.
    from detectron2.modeling import build_model

    from r2ios_d2.modeling.mask_head import r2ios_mask_head_names

    choices = {**allowed_choices(), "MODEL.ROI_MASK_HEAD.NAME": r2ios_mask_head_names()}
    for key, values in choices.items():
        for v in values:
            cfg = tiny_r2ios_cfg()
            cfg.MODEL.R2IOS.AE_HIDDEN_DIM = 8
            _set(cfg, key, v)
            validate_r2ios_config(cfg)
            build_model(cfg)


def test_unknown_opts_key_suggests_the_closest():
    cfg = tiny_r2ios_cfg()
    with pytest.raises(KeyError, match="did you mean MODEL.R2IOS.GATE_SCORE"):
        check_opts_keys(cfg, ["MODEL.R2IOS.GATE_SCOER", "all"])
    with pytest.raises(KeyError, match="'NOPE.KEY'"):
        check_opts_keys(cfg, ["NOPE.KEY", "1"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        check_opts_keys(cfg, ["MODEL.R2IOS.GATE"])
    check_opts_keys(cfg, ["MODEL.R2IOS.GATE", "True", "SOLVER.MAX_ITER", "3"])


def test_output_dir_check_creates_and_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    check_output_dir(str(out))
    assert out.is_dir() and os.listdir(out) == []


def test_build_model_names_a_bad_head_value_by_its_key():
    # Without the trainer or the predictor (detectron2's build_model, as in a notebook).
    from detectron2.modeling import build_model

    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.GATE_SCORE = "bar"
    with pytest.raises(ValueError, match="MODEL.R2IOS.GATE_SCORE = 'bar' is invalid") as err:
        build_model(cfg)
    assert "'all', 'foreground'" in str(err.value)


def test_heads_check_their_own_arguments():
    from r2ios_d2.modeling.roi_heads import check_r2ios_head_settings

    check_r2ios_head_settings({"num_iterations": 4, "mask_threshold": 0.5, "nms_type": "mask"})
    with pytest.raises(ValueError, match=r"(?s)num_iterations = 0 .*mask_threshold = 1.0"):
        check_r2ios_head_settings({"num_iterations": 0, "mask_threshold": 1.0})


@pytest.mark.parametrize("builder", ["trainer", "predictor"])
def test_builders_check_the_whole_config_first(builder):
    from r2ios_d2 import R2IOSPredictor
    from r2ios_d2.config_checks import ConfigValueError
    from r2ios_d2.engine import R2IOSTrainer

    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.MASK_SIZE = 0  # read by the mask head, checked by the whole-config check
    build = R2IOSTrainer.build_model if builder == "trainer" else R2IOSPredictor
    with pytest.raises(ConfigValueError, match="MODEL.R2IOS.MASK_SIZE = 0 is invalid"):
        build(cfg)
