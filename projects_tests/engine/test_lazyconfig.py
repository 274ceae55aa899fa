"""LazyConfig: configs/lazy/*.py build the same models as their yacs twins, train with the same
loop (same weights as tools/train_net.py after the same steps), resume exactly, evaluate, and
take checked ``key=value`` overrides."""

from __future__ import annotations

import json
import os
import shlex

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from readme_utils import load_tool, readme_commands
from reliability_utils import REPO, make_dataset, run_train_net, tiny_opts, write_base_config

from r2ios_d2 import add_r2ios_config
from r2ios_d2.config_checks import check_lazy_overrides
from r2ios_d2.data import SYNTHETIC_CLASSES
from r2ios_d2.modeling.roi_heads import CONFIG_KEYS

LAZY = os.path.join(REPO, "configs", "lazy")

# (LazyConfig, yacs config) pairs that describe the same model.
PAIRS = [
    ("r2ios_tiny_stage1.py", "synthetic/r2ios_tiny_stage1.yaml"),
    ("r2ios_tiny_stage2.py", "synthetic/r2ios_tiny_stage2.yaml"),
    ("r2ios_vgg16_sds_stage1.py", "r2ios_vgg16_sds_stage1.yaml"),
    ("r2ios_vgg16_sds_stage2.py", "r2ios_vgg16_sds_stage2.yaml"),
    ("r2ios_R_50_FPN.py", "r2ios_R_50_FPN_rpn.yaml"),
]

# Attributes of the built heads that the two configs must agree on.
# Every MODEL.R2IOS setting of the heads, and the sampling ones.
HEAD_ATTRS = (
    *CONFIG_KEYS,
    *"batch_size_per_image positive_fraction num_classes proposal_append_gt".split(),
)
PREDICTOR_ATTRS = (
    "seg_aware seg_input seg_scale seg_grad_scale test_score_thresh test_nms_thresh "
    "test_topk_per_image smooth_l1_beta"
).split()


def _yacs(path: str):
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("lazy,yacs", PAIRS, ids=[p[0] for p in PAIRS])
def test_lazy_and_yacs_configs_build_the_same_model(lazy, yacs):
    cfg = _yacs(yacs)
    lazy_cfg = LazyConfig.load(os.path.join(LAZY, lazy))
    a, b = instantiate(lazy_cfg.model), build_model(cfg)
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    assert shapes_a == shapes_b
    assert type(a) is type(b) and a.mask_threshold == b.mask_threshold  # R2IOSRCNN
    for name in HEAD_ATTRS:
        assert getattr(a.roi_heads, name) == getattr(b.roi_heads, name), name
    for name in PREDICTOR_ATTRS:
        assert getattr(a.roi_heads.box_predictor, name) == getattr(
            b.roi_heads.box_predictor, name
        ), name
    residual = [getattr(m.roi_heads.mask_head, "residual", None) for m in (a, b)]
    assert residual[0] == residual[1]
    assert list(a.pixel_mean.flatten()) == list(b.pixel_mean.flatten())
    assert (a.proposal_generator is None) == (cfg.MODEL.PROPOSAL_GENERATOR.NAME != "RPN")
    # The schedule and the optimiser agree too.
    assert lazy_cfg.train.max_iter == cfg.SOLVER.MAX_ITER
    assert list(lazy_cfg.lr_multiplier.scheduler.milestones) == list(cfg.SOLVER.STEPS)
    assert lazy_cfg.optimizer.lr == cfg.SOLVER.BASE_LR
    assert lazy_cfg.optimizer.params.pretrained_lr_factor == cfg.SOLVER.PRETRAINED_LR_FACTOR
    assert lazy_cfg.train.init_checkpoint.endswith(os.path.basename(cfg.MODEL.WEIGHTS))


def tiny_lazy_config(prefix: str, output_dir: str, max_iter: int, step: int = 4):
    """The LazyConfig twin of ``reliability_utils.tiny_opts`` on the SDS stage-1 config."""
    cfg = LazyConfig.load(os.path.join(LAZY, "r2ios_vgg16_sds_stage1.py"))
    cfg.model.backbone.width = 0.0625
    cfg.model.backbone.freeze_at = 0
    heads = cfg.model.roi_heads
    heads.num_classes = 5
    heads.batch_size_per_image = 16
    heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
    heads.box_head.fc_dims = [32, 32]
    heads.box_predictor.input_shape = ShapeSpec(channels=32)
    heads.box_predictor.mask_dim = 2 * 20 * 20
    heads.box_predictor.test_score_thresh = 0.0
    heads.mask_head.input_shape = {"seg": ShapeSpec(channels=64, stride=8)}
    heads.mask_head.mask_size = 20
    heads.mask_head.ae_hidden_dim = 32
    for loader, split, short in (
        (cfg.dataloader.train, "train", (56, 64)),
        (cfg.dataloader.test, "val", 64),
    ):
        loader.mapper.augmentations[0].short_edge_length = short
        loader.mapper.augmentations[0].max_size = 96
        loader.mapper.precomputed_proposal_topk = 30
        loader.num_workers = 0
        loader.dataset.names = f"{prefix}_{split}"
    cfg.optimizer.lr = 0.01
    cfg.lr_multiplier.scheduler.milestones = [step]
    cfg.train.update(
        max_iter=max_iter,
        output_dir=output_dir,
        init_checkpoint="",
        device="cpu",
        seed=7,
        checkpointer={"period": 2, "max_to_keep": 100},
        eval_period=0,
    )
    return cfg


def _final_weights(folder: str) -> dict:
    path = os.path.join(folder, "model_final.pth")
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _run_lazy(tool, cfg, *flags: str):
    """tools/lazyconfig_train_net.py's main() on an in-memory config."""
    args = tool.build_parser().parse_args(
        ["--config-file", os.path.join(LAZY, "r2ios_vgg16_sds_stage1.py"), *flags]
    )
    return tool.main(args, cfg)


def test_lazy_training_equals_yacs_training_and_resumes_exactly(tmp_path):
    make_dataset(str(tmp_path), "lazytiny")
    tool = load_tool("lazyconfig_train_net")

    # Same model, data stream, seeds and optimiser: the same weights after 5 steps.
    yacs_dir = str(tmp_path / "yacs")
    config = write_base_config(str(tmp_path))
    run_train_net(config, tiny_opts("lazytiny", yacs_dir, max_iter=5))
    lazy_dir = str(tmp_path / "lazy")
    _run_lazy(tool, tiny_lazy_config("lazytiny", lazy_dir, 5))
    yacs_w, lazy_w = _final_weights(yacs_dir), _final_weights(lazy_dir)
    assert yacs_w.keys() == lazy_w.keys()
    for key in yacs_w:
        torch.testing.assert_close(lazy_w[key], yacs_w[key], rtol=0, atol=0, msg=key)

    # 3 steps, then --resume to 6, equals 6 steps in one go (optimizer, schedule, data, seeds).
    straight = str(tmp_path / "straight")
    _run_lazy(tool, tiny_lazy_config("lazytiny", straight, 6, step=2))
    resumed = str(tmp_path / "resumed")
    _run_lazy(tool, tiny_lazy_config("lazytiny", resumed, 3, step=2))
    _run_lazy(tool, tiny_lazy_config("lazytiny", resumed, 6, step=2), "--resume")
    a, b = _final_weights(straight), _final_weights(resumed)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

    # --eval-only with the trained weights: AP^r on the val split.
    cfg = tiny_lazy_config("lazytiny", str(tmp_path / "eval"), 6)
    cfg.train.init_checkpoint = os.path.join(straight, "model_final.pth")
    results = _run_lazy(tool, cfg, "--eval-only")
    assert set(results) == {"segm", "bbox"}
    assert {"APr50", "APr70", "APr_vol"} <= set(results["segm"])
    assert os.path.isfile(str(tmp_path / "eval" / "inference" / "sds_results.json"))


def test_command_line_overrides_are_applied_and_checked():
    cfg = LazyConfig.load(os.path.join(LAZY, "r2ios_tiny_stage1.py"))
    overrides = [
        "model.roi_heads.num_iterations=2",
        "train.max_iter=100",
        "dataloader.train.dataset.proposal_dirs=[/tmp/ss]",  # an argument left at its default
    ]
    check_lazy_overrides(cfg, overrides)
    cfg = LazyConfig.apply_overrides(cfg, overrides)
    assert cfg.train.max_iter == 100
    assert instantiate(cfg.model).roi_heads.num_iterations == 2
    assert list(cfg.dataloader.train.dataset.proposal_dirs) == ["/tmp/ss"]
    with pytest.raises(KeyError, match=r"num_iteratons.*did you mean.*num_iterations"):
        check_lazy_overrides(cfg, ["model.roi_heads.num_iteratons=2"])
    with pytest.raises(KeyError, match="max_iters"):
        check_lazy_overrides(cfg, ["train.max_iters=5"])


def test_readme_lazyconfig_commands_run(tmp_path):
    """The README's LazyConfig commands, on a tiny dataset instead of the demo's, 2 steps: the
    README's train.max_iter=200 is overridden by train.max_iter=2 alone, the milestone 650
    scaled away with it; `make demo-data` is checked in projects_tests/tools/test_demo_data.py."""
    make_dataset(str(tmp_path), "lazyreadme")
    out = str(tmp_path / "lazy_tiny")
    small = [
        "dataloader.train.dataset.names=[lazyreadme_train]",
        "dataloader.test.dataset.names=lazyreadme_val",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "train.max_iter=2",
    ]
    commands = readme_commands("lazy-example")
    assert len(commands) == 3 and commands[0] == "make demo-data"
    results = None
    for command in commands[1:]:
        argv = shlex.split(command.replace("output/lazy_tiny", out))
        assert argv[:2] == ["python", "tools/lazyconfig_train_net.py"], command
        tool = load_tool("lazyconfig_train_net")
        args = tool.build_parser().parse_args(argv[2:] + small)
        args.config_file = os.path.join(REPO, args.config_file)
        results = tool.main(args)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert "model.roi_heads.num_iterations=2" in commands[1]
    assert "train.max_iter=200" in commands[1]
    assert {"APr50", "APr70"} <= set(results["segm"])
    # the run's classes, saved for tools/demo.py
    with open(os.path.join(out, "dataset_metadata.json")) as f:
        saved = json.load(f)
    assert saved["datasets"] == ["lazyreadme_train"] and saved["num_classes"] == 5
    assert saved["thing_classes"] == list(SYNTHETIC_CLASSES)
