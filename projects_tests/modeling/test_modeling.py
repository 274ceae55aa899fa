"""R2-IOS model: backbone, mask head, seg-aware predictor and the recursive ROI heads."""

import copy
import math

import pytest
import torch
from conftest import make_synthetic_inputs, tiny_r2ios_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model, build_roi_heads
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from r2ios_d2.modeling import (
    InstanceAwareAEMaskHead,
    R2IOSConvMaskHead,
    R2IOSFCMaskHead,
    R2IOSROIHeads,
    reframe_masks,
)
from r2ios_d2.modeling.losses import TrainingRows

VGG_CONVS = [
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    *[f"{b}_conv{k}_{i}" for b in ("det", "seg") for k in (4, 5) for i in (1, 2, 3)],
    "seg_fc6", "seg_fc7",
]  # fmt: skip


def _build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def _features_and_sampled(model, inputs):
    """Backbone features and sampled proposals exactly as GeneralizedRCNN would make them."""
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    proposals = [x["proposals"] for x in inputs]
    targets = [x["instances"] for x in inputs]
    with EventStorage():
        sampled = model.roi_heads.label_and_sample_proposals(proposals, targets)
    return features, sampled


# ------------------------------------------------------------------------------- backbone
def test_backbone_shapes_names_and_strides():
    cfg = tiny_r2ios_cfg(width=1 / 16)
    bb = build_backbone(cfg)
    assert [n for n, _ in bb.named_children() if n in VGG_CONVS] == VGG_CONVS
    for name in VGG_CONVS:
        assert isinstance(getattr(bb, name), torch.nn.Conv2d)
    # Exactly the converter's names: weight and bias of each conv, nothing else.
    assert sorted(bb.state_dict()) == sorted(
        f"{n}.{p}" for n in VGG_CONVS for p in ("weight", "bias")
    )
    assert bb.seg_conv5_1.dilation == (2, 2) and bb.seg_fc6.dilation == (12, 12)
    assert bb.seg_fc7.kernel_size == (1, 1)
    out = bb(torch.randn(2, 3, 96, 128))
    shapes = bb.output_shape()
    assert out["det"].shape == (2, 32, 6, 8) and shapes["det"] == ShapeSpec(channels=32, stride=16)
    assert out["seg"].shape == (2, 64, 12, 16) and shapes["seg"] == ShapeSpec(channels=64, stride=8)
    assert bb.size_divisibility == 16
    cfg.MODEL.VGG.OUT_FEATURES = ["seg"]
    assert list(build_backbone(cfg)(torch.randn(1, 3, 64, 64))) == ["seg"]


def test_backbone_group_norm_option():
    cfg = tiny_r2ios_cfg(width=1 / 8)
    cfg.MODEL.VGG.NORM = "GN"
    bb = build_backbone(cfg)
    assert isinstance(bb.conv1_1.norm, torch.nn.GroupNorm) and bb.conv1_1.bias is None
    assert bb.conv1_1.norm.num_groups == 8 and bb.seg_fc7.norm.num_groups == 32
    out = bb(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out["seg"]).all() and out["det"].shape[1] == 64
    cfg.MODEL.VGG.NORM = "BN"
    with pytest.raises(ValueError, match="MODEL.VGG.NORM"):
        build_backbone(cfg)


@pytest.mark.parametrize("freeze_at", [0, 2, 4])
def test_backbone_freeze_at(freeze_at):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    bb = build_backbone(cfg)
    blocks = ["conv1_", "conv2_", "conv3_", "conv4_", "conv5_", "seg_fc"]
    for name in VGG_CONVS:
        block = next(i for i, b in enumerate(blocks) if b in name)
        frozen = not getattr(bb, name).weight.requires_grad
        assert frozen == (block < freeze_at), name


def _tie_conv4(state):
    """A two-conv4 state dict whose seg_conv4_* are copies of det_conv4_*."""
    state = dict(state)
    for k in [k for k in state if k.startswith("seg_conv4_")]:
        state[k] = state["det_" + k[len("seg_") :]].clone()
    return state


def test_shared_conv4_is_the_two_branch_backbone_with_one_conv4():
    cfg = tiny_r2ios_cfg(width=1 / 16)
    torch.manual_seed(0)
    two = build_backbone(cfg)
    cfg.MODEL.VGG.SHARED_CONV4 = True
    one = build_backbone(cfg)
    shared = [n.replace("det_", "") for n in VGG_CONVS if n.startswith("det_conv4")]
    expected = [n for n in VGG_CONVS if "conv4" not in n] + shared
    assert sorted(one.state_dict()) == sorted(
        f"{n}.{p}" for n in expected for p in ("weight", "bias")
    )
    assert one.conv4_1.dilation == (1, 1) and one.seg_conv5_1.dilation == (2, 2)
    # Loaded from a two-conv4 checkpoint whose branches hold the same conv4 (converted
    # ImageNet weights): every key used, and the same outputs as the two-branch backbone.
    tied = _tie_conv4(two.state_dict())
    two.load_state_dict(tied)
    result = one.load_state_dict(tied)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(one.conv4_2.weight, two.det_conv4_2.weight)
    x = torch.randn(2, 3, 96, 128)
    a, b = two(x), one(x)
    for name in ("det", "seg"):
        torch.testing.assert_close(b[name], a[name])
    assert one.output_shape() == two.output_shape()
    # The mask side's gradient reaches the conv4 that the det branch pools from.
    one.zero_grad()
    one(x)["seg"].square().mean().backward()
    assert one.conv4_3.weight.grad.abs().sum() > 0 and one.det_conv5_1.weight.grad is None


def test_shared_conv4_warns_when_the_checkpoint_has_two_different_conv4(caplog):
    cfg = tiny_r2ios_cfg(width=1 / 16)
    torch.manual_seed(0)
    state = build_backbone(cfg).state_dict()
    cfg.MODEL.VGG.SHARED_CONV4 = True
    one = build_backbone(cfg)
    with caplog.at_level("WARNING"):
        assert not one.load_state_dict(state).unexpected_keys
    assert "seg_conv4_1.weight is not used" in caplog.text
    torch.testing.assert_close(one.conv4_1.weight, state["det_conv4_1.weight"])


@pytest.mark.parametrize("freeze_at", [3, 4, 5])
def test_shared_conv4_freeze_at(freeze_at):
    cfg = tiny_r2ios_cfg(width=1 / 16)
    cfg.MODEL.VGG.SHARED_CONV4 = True
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    bb = build_backbone(cfg)
    assert bb.conv4_1.weight.requires_grad == (freeze_at < 4)
    assert bb.det_conv5_1.weight.requires_grad == (freeze_at < 5)
    assert bb.conv3_3.weight.requires_grad is False


# ------------------------------------------------------------------------------ mask head
def test_pool_after_score_equals_pool_then_score():
    torch.manual_seed(0)
    shape = {"seg": ShapeSpec(channels=8, stride=8)}
    head = R2IOSConvMaskHead(shape, in_features=["seg"], mask_size=12)
    torch.nn.init.normal_(head.score.weight, std=1.0)
    torch.nn.init.normal_(head.score.bias, std=1.0)
    feats = torch.randn(1, 8, 16, 16)  # a 128 x 128 image
    boxes = [Boxes(torch.tensor([[20.0, 24.0, 90.0, 70.0], [40.0, 30.0, 60.0, 110.0]]))]
    scored_first = head(head.score_maps({"seg": feats}), boxes)
    pooled = head.pooler([feats], boxes)  # (R, 8, M, M), then the 1x1 conv
    pooled_first = head.score(pooled)
    torch.testing.assert_close(scored_first, pooled_first, atol=1e-5, rtol=1e-5)


MASK_HEADS = {"ae": InstanceAwareAEMaskHead, "conv": R2IOSConvMaskHead, "fc": R2IOSFCMaskHead}


@pytest.mark.parametrize("variant", sorted(MASK_HEADS))
def test_mask_head_variants_shapes(variant):
    shape = {"seg": ShapeSpec(channels=8, stride=8)}
    head = MASK_HEADS[variant](shape, in_features=["seg"], mask_size=10)
    captured = []
    boxes = [Boxes(torch.rand(3, 4) * 10 + torch.tensor([0, 0, 20, 20]))] * 2
    v = head(head.score_maps({"seg": torch.randn(2, 8, 8, 8)}), boxes, captured)
    assert v.shape == (6, 2, 10, 10) and captured[0].shape == (6, 2, 10, 10)
    names = {n for n, _ in head.named_parameters()}
    expected = {"ae": {"ae_fc1.weight", "ae_fc2.weight"}, "fc": {"fc1.weight", "fc2.weight"}}
    assert expected.get(variant, set()) <= names
    assert (variant == "conv") == torch.equal(v, captured[0])


def test_reframe_masks_hand_case():
    m = torch.arange(16, dtype=torch.float32).view(1, 4, 4) + 1.0
    src = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    torch.testing.assert_close(reframe_masks(m, src, src), m)
    # One cell (10 px) to the right: column j of the new frame is column j+1 of the old one,
    # and the last column lies outside the source box (zero).
    shifted = reframe_masks(m, src, torch.tensor([[10.0, 0.0, 50.0, 40.0]]))
    expected = torch.cat([m[:, :, 1:], torch.zeros(1, 4, 1)], dim=2)
    torch.testing.assert_close(shifted, expected)
    # Half-size box at the top-left: centres 2.5, 7.5, 12.5, 17.5 px fall on 0.25, 0.75, 1.25,
    # 1.75 source cells; bilinear with zero outside.
    half = reframe_masks(torch.ones(1, 4, 4), src, torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    w = torch.tensor([0.75, 1.0, 1.0, 1.0])
    torch.testing.assert_close(half[0], w[:, None] * w[None, :])


# ---------------------------------------------------------------------------- training
def test_train_losses_and_gradients_reach_every_parameter(synthetic_inputs):
    model = _build(tiny_r2ios_cfg())
    model.train()
    with EventStorage() as storage:
        losses = model(synthetic_inputs)
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_mask_conf"}
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        assert "r2ios/loss_cls_t4" in storage.latest() and "r2ios/gate_frac_t4" in storage.latest()
        # Default SEG_AWARE_GRAD_SCALE 0: the classification loss does not train the mask head.
        losses["loss_cls"].backward(retain_graph=True)
        mh = model.roi_heads.mask_head
        for p in (mh.ae_fc1.weight, mh.ae_fc2.weight, mh.score.weight):
            assert p.grad is None or not p.grad.any()
        model.zero_grad()
        sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_paper_literal_seg_aware_lets_classification_train_the_mask_head(synthetic_inputs):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.SEG_AWARE_INPUT = "logits"
    cfg.MODEL.R2IOS.SEG_AWARE_GRAD_SCALE = 1.0
    cfg.MODEL.R2IOS.SEG_AWARE_SCALE = 1.0
    cfg.MODEL.R2IOS.CONF_LOSS_WEIGHT = 0.0
    model = _build(cfg).train()
    with EventStorage():
        losses = model(synthetic_inputs)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    # The classification loss alone reaches the mask head through the seg-aware feature v.
    losses["loss_cls"].backward()
    mh = model.roi_heads.mask_head
    for p in (mh.ae_fc1.weight, mh.ae_fc2.weight, mh.score.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [0.0, 0.25, 1.0])
def test_seg_aware_grad_scale_scales_only_the_gradient_into_v(scale):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.SEG_AWARE_INPUT = "logits"
    cfg.MODEL.R2IOS.SEG_AWARE_SCALE = 1.0
    outs, grads = [], []
    x, v0 = torch.randn(5, 64), torch.randn(5, 2, 40, 40)
    for s in (1.0, scale):
        cfg.MODEL.R2IOS.SEG_AWARE_GRAD_SCALE = s
        predictor = _build(cfg).roi_heads.box_predictor  # same seed: same weights
        v = v0.clone().requires_grad_(True)
        logits, deltas = predictor(x, v)
        (logits.sum() + deltas.pow(2).sum()).backward()
        outs.append(logits.detach())
        grads.append(torch.zeros_like(v) if v.grad is None else v.grad)
    torch.testing.assert_close(outs[1], outs[0])  # same forward pass
    torch.testing.assert_close(grads[1], grads[0] * scale)


def test_gradient_probes_log_what_each_loss_sends_into_the_seg_branch(synthetic_inputs):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.GRAD_PROBE_PERIOD = 5
    model = _build(cfg).train()
    with EventStorage(start_iter=4) as storage:  # (iter + 1) % 5 == 0: probed
        model(synthetic_inputs)
        latest = storage.latest()
    assert latest["r2ios/grad_seg/loss_mask"][0] > 0
    assert latest["r2ios/grad_seg/loss_mask_conf"][0] > 0
    # Default SEG_AWARE_GRAD_SCALE 0: the classification loss sends nothing into the seg branch.
    assert latest["r2ios/grad_seg/loss_cls"][0] == 0
    with EventStorage(start_iter=5) as storage:  # not a probe iteration
        model(synthetic_inputs)
        assert not any(k.startswith("r2ios/grad_") for k in storage.latest())


def _scripted_predict(heads, script, record):
    """Replace ``heads._predict`` by a script: call t returns ``script(t, num_rows)``; the
    confidence maps C it reports are zeros."""

    def fake(box_features, scored, boxes, confidence_maps=None, mask_probs=None, **kwargs):
        # (R, 5) rows at inference, per-image Boxes in training
        n = len(boxes) if isinstance(boxes, torch.Tensor) else sum(len(b) for b in boxes)
        record.append(n)
        out = script(len(record) - 1, n)
        if confidence_maps is not None:
            confidence_maps.append(torch.zeros_like(out[2], requires_grad=True))
        return out

    heads._predict = fake


def _train_case():
    """One image, 4 sampled proposals: 2 foreground (classes 0, 1), 2 background."""
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 30:60, 20:50] = True
    p = Instances((64, 64))
    boxes = [[8.0, 8, 32, 32], [28, 28, 52, 62], [0, 40, 20, 60], [40, 0, 63, 20]]
    p.proposal_boxes = Boxes(torch.tensor(boxes))
    p.gt_classes = torch.tensor([0, 1, 2, 2])
    p.gt_boxes = Boxes(torch.tensor([[10.0, 10, 30, 30], [20, 30, 50, 60]])[[0, 1, 0, 0]])
    p.gt_masks = BitMasks(torch.stack([masks[0], masks[1], masks[0], masks[0]]))
    return p


@pytest.mark.parametrize("gate", [False, True])
def test_gate_drops_losses_after_t_prime_and_background_runs_once(gate):
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.R2IOS.GATE = gate
    cfg.MODEL.R2IOS.MASK_SIZE = 8
    model = _build(cfg)
    heads = model.roi_heads
    # GT-class probabilities of the two foreground proposals at t = 1..4:
    # A: .5 .8 .8 .3 -> t' = 2 (tie -> earliest); B: .9 .5 .5 .5 -> t' = 1.
    p_gt = torch.tensor([[0.5, 0.8, 0.8, 0.3], [0.9, 0.5, 0.5, 0.5]])
    bg_logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]])  # background rows, t = 1 only

    def fg_logits(t):
        # rows (A, class 0), (B, class 1): log-probabilities with p_gt on the GT class
        la = torch.log(torch.stack([p_gt[0, t], (1 - p_gt[0, t]) / 2, (1 - p_gt[0, t]) / 2]))
        lb = torch.log(torch.stack([(1 - p_gt[1, t]) / 2, p_gt[1, t], (1 - p_gt[1, t]) / 2]))
        return torch.stack([la, lb])

    def script(t, n):
        logits = fg_logits(t) if t else torch.cat([fg_logits(0), bg_logits])
        logits = logits.clone().requires_grad_(True)
        return logits, torch.zeros(n, 8), torch.zeros(n, 2, 8, 8, requires_grad=True)

    record = []
    _scripted_predict(heads, script, record)
    features = {"det": torch.zeros(1, 4, 4, 4), "seg": torch.zeros(1, 64, 8, 8)}
    losses = heads.forward_train(features, [_train_case()])
    assert record == [4, 2, 2, 2]  # background proposals are computed once

    ce = -torch.log(p_gt)  # (2, T)
    bg_ce = F.cross_entropy(bg_logits, torch.tensor([2, 2]), reduction="sum")
    counted = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]) if gate else torch.ones(2, 4)
    bg_weight = 1 if gate else 4
    expected_cls = ((ce * counted).sum() + bg_weight * bg_ce) / 4
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    # v = 0 gives log 2 per pixel; normalised by the 2 foreground RoIs per iteration.
    torch.testing.assert_close(losses["loss_mask"], counted.sum() * math.log(2) / 2)
    # The loss on C counts the same rows with the same normalisation (C = 0 here too).
    torch.testing.assert_close(losses["loss_mask_conf"], counted.sum() * math.log(2) / 2)
    assert losses["loss_box_reg"] > 0


@pytest.mark.parametrize("gate", [False, True])
def test_train_move_background_refines_predicted_foreground_background_as_at_test(gate):
    """TRAIN_MOVE_BACKGROUND: a background proposal predicted foreground moves by the deltas
    of the predicted class until it is predicted background, and its classification loss
    (target background) counts at every iteration it runs (up to its own gate iteration)."""
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.R2IOS.GATE = gate
    cfg.MODEL.R2IOS.TRAIN_MOVE_BACKGROUND = True
    cfg.MODEL.R2IOS.MASK_SIZE = 8
    heads = _build(cfg).roi_heads
    fg_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # both fg rows right
    # Background rows at t = 1: row 3 predicted background (stays, computed once), row 4
    # predicted class 0 (moves). Row 4 then: class 0 at t = 2, background at t = 3 and 4.
    bg_logits_t1 = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]])
    moving_logits = [bg_logits_t1[1:], [[1.0, 0.0, 0.2]], [[0.0, 0.0, 3.0]], [[0.0, 0.0, 1.0]]]
    shift = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class-0 delta: move right by half a width
    record, seen = [], []

    def fake(box_features, scored, boxes, confidence_maps=None, mask_probs=None, **kwargs):
        n = sum(len(b) for b in boxes)
        t = len(record)
        record.append(n)
        seen.append(torch.cat([b.tensor for b in boxes]))
        if t == 0:
            logits = torch.cat([fg_logits, bg_logits_t1])
        else:
            logits = torch.cat([fg_logits, torch.tensor(moving_logits[t])])
        deltas = torch.zeros(n, 8)
        deltas[:, :4] = shift
        v = torch.zeros(n, 2, 8, 8, requires_grad=True)
        if confidence_maps is not None:
            confidence_maps.append(torch.zeros_like(v, requires_grad=True))
        return logits.clone().requires_grad_(True), deltas, v

    heads._predict = fake
    features = {"det": torch.zeros(1, 4, 4, 4), "seg": torch.zeros(1, 64, 8, 8)}
    with EventStorage():
        losses = heads.forward_train(features, [_train_case()])
    assert record == [4, 3, 3, 3]  # the background row predicted background runs once
    transform = heads.box_predictor.box2box_transform
    moved = transform.apply_deltas(shift[None], seen[0][3:4]).clamp(max=64.0)
    torch.testing.assert_close(seen[1][2:], moved)  # moved by the predicted class 0
    moved_again = transform.apply_deltas(shift[None], moved).clamp(max=64.0)
    torch.testing.assert_close(seen[2][2:], moved_again)
    torch.testing.assert_close(seen[3][2:], seen[2][2:])  # predicted background: stays

    bg = torch.tensor(2)
    static_ce = F.cross_entropy(bg_logits_t1[:1], bg[None])
    moving_ce = torch.stack(
        [F.cross_entropy(torch.tensor(x).view(1, 3), bg[None]) for x in moving_logits]
    )
    fg_ce = F.cross_entropy(fg_logits, torch.tensor([0, 1]), reduction="sum")
    if gate:  # every fg row's best p_gt is at t = 1 (ties -> earliest); background at t = 3
        expected = fg_ce + static_ce + moving_ce[:3].sum()
    else:
        expected = 4 * fg_ce + 4 * static_ce + moving_ce.sum()
    torch.testing.assert_close(losses["loss_cls"], expected / 4)


def _two_class_heads(**r2ios):
    """The heads of a tiny 2-class model with 8x8 masks and the given MODEL.R2IOS keys."""
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.R2IOS.MASK_SIZE = 8
    for key, value in r2ios.items():
        cfg.MODEL.R2IOS[key] = value
    return _build(cfg).roi_heads


def _train_step(heads):
    """The losses and the logged scalars of one training step on :func:`_train_case`."""
    features = {"det": torch.zeros(1, 4, 4, 4), "seg": torch.zeros(1, 64, 8, 8)}
    with EventStorage() as storage:
        losses = heads.forward_train(features, [_train_case()])
        return losses, {k: v[0] for k, v in storage.latest().items()}


@pytest.mark.parametrize("relabel", [False, True])
def test_train_relabel_iterations_trains_a_box_that_left_its_instance_as_background(relabel):
    """TRAIN_RELABEL_ITERATIONS: from t = 2 on, a foreground row whose input box overlaps its
    ground truth by less than the foreground IoU counts as background in that iteration
    (cls target background, no box or mask loss); with the key off (the paper) its label
    stays."""
    heads = _two_class_heads(TRAIN_RELABEL_ITERATIONS=relabel)
    fg_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    bg_logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]])
    seen = []

    def script(t, n):
        logits = fg_logits if t else torch.cat([fg_logits, bg_logits])
        deltas = torch.zeros(n, 8)
        deltas[:, 0] = 10.0  # class 0: one box width to the right (A leaves its instance)
        v = torch.zeros(n, 2, 8, 8, requires_grad=True)
        return logits.clone().requires_grad_(True), deltas, v

    _scripted_predict(heads, script, seen)  # records each call's row count in seen
    losses, scalars = _train_step(heads)
    assert seen == [4, 2, 2, 2]
    ce_a = F.cross_entropy(fg_logits[:1], torch.tensor([2 if relabel else 0]))
    fg_ce = F.cross_entropy(fg_logits, torch.tensor([0, 1]), reduction="sum")
    b_ce = F.cross_entropy(fg_logits[1:], torch.tensor([1]))
    bg_ce = F.cross_entropy(bg_logits, torch.tensor([2, 2]), reduction="sum")
    expected_cls = (fg_ce + 3 * (ce_a + b_ce) + 4 * bg_ce) / 4
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    counted_rows = 2 + 3 * (1 if relabel else 2)  # A drops out of the mask loss at t >= 2
    assert losses["loss_mask"].item() == pytest.approx(counted_rows * math.log(2) / 2)
    if relabel:
        assert scalars["r2ios/relabelled_frac_t2"] == pytest.approx(0.5)
        assert "r2ios/relabelled_frac_t1" not in scalars
    else:
        assert not any(k.startswith("r2ios/relabelled") for k in scalars)
    # t = 2: only B's box counts with the key (B did not move: its loss is t = 1's)
    box_t = [scalars[f"r2ios/loss_box_reg_t{t}"] for t in (1, 2)]
    assert (box_t[1] < box_t[0]) is relabel


@pytest.mark.parametrize("by_prediction", [False, True])
def test_foreground_moves_by_the_predicted_class_with_the_key(by_prediction):
    """TRAIN_MOVE_FOREGROUND_BY_PREDICTION: a foreground row moves by the deltas of its
    predicted class and stays where it is predicted background; without the key (the
    paper) by those of its ground-truth class. The losses keep the ground-truth class."""
    heads = _two_class_heads(TRAIN_MOVE_FOREGROUND_BY_PREDICTION=by_prediction)
    # Row A (class 0) predicted class 1, row B (class 1) predicted background, at every t.
    fg_logits = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    bg_logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]])
    seen = []

    def script(t, n):
        logits = fg_logits if t else torch.cat([fg_logits, bg_logits])
        deltas = torch.zeros(n, 8)
        deltas[:, 0] = 2.0  # class 0: right by 0.2 widths
        deltas[:, 5] = -2.0  # class 1: up by 0.2 heights
        return logits.clone().requires_grad_(True), deltas, torch.zeros(n, 2, 8, 8)

    def fake(box_features, scored, boxes, confidence_maps=None, mask_probs=None, **kwargs):
        seen.append(torch.cat([b.tensor for b in boxes]))
        out = script(len(seen) - 1, len(seen[-1]))
        if confidence_maps is not None:
            confidence_maps.append(torch.zeros_like(out[2]))
        return out

    heads._predict = fake
    losses, _ = _train_step(heads)
    start = seen[0][:2]
    transform = heads.box_predictor.box2box_transform
    shift = torch.zeros(2, 4)
    shift[0, 0] = 2.0  # class-0 deltas
    shift[1, 1] = -2.0  # class-1 deltas
    if by_prediction:  # A by class 1's deltas, B stays (predicted background)
        expected = torch.stack([transform.apply_deltas(shift[1:], start[:1])[0], start[1]])
    else:  # each by its ground-truth class
        expected = transform.apply_deltas(shift, start)
    torch.testing.assert_close(seen[1], expected)
    fg_ce = F.cross_entropy(fg_logits, torch.tensor([0, 1]), reduction="sum")
    bg_ce = F.cross_entropy(bg_logits, torch.tensor([2, 2]), reduction="sum")
    torch.testing.assert_close(losses["loss_cls"], 4 * (fg_ce + bg_ce) / 4)


def test_mask_targets_crop_each_distinct_instance_as_bitmasks_do():
    """The targets cropped from each image's distinct matched instances equal
    ``BitMasks.crop_and_resize`` of every row's own mask, bit for bit, also when two
    instances share a box and class (their masks are then kept apart)."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 64, 64, generator=g) > 0.6
    p = Instances((64, 64))
    gt = torch.tensor([[10.0, 10, 30, 30], [20, 30, 50, 60], [20, 30, 50, 60]])
    pick = torch.tensor([0, 1, 0, 0, 1, 2, 2, 0])  # rows 4 and 5: same box/class, not mask
    p.proposal_boxes = Boxes(gt[pick] + torch.rand(8, 4, generator=g) * 4)
    p.gt_classes = torch.tensor([0, 1, 0, 0, 1, 1, 1, 3])  # the last row is background
    p.gt_boxes = Boxes(gt[pick])
    p.gt_masks = BitMasks(masks[pick])
    q = Instances((64, 64))
    q.proposal_boxes, q.gt_classes = p.proposal_boxes[:3], p.gt_classes[:3]
    q.gt_boxes, q.gt_masks = p.gt_boxes[:3], BitMasks(masks[pick[:3]])
    rows = TrainingRows([p, q], num_classes=3)
    fg = rows.boxes[rows.fg_idx] + torch.randn(len(rows.fg_idx), 4, generator=g)
    for size in (40, 13):
        expected = torch.cat(
            [m.crop_and_resize(b, size) for m, b in zip(rows.fg_masks, fg.split(rows.fg_per_image))]
        )
        assert torch.equal(rows.mask_targets(fg, size, torch.device("cpu")), expected)
    # image 1 falls back to one mask per row (rows 1, 4, 5 share box and class)
    assert [len(src[0]) for src in rows.fg_mask_sources] == [7, 2]
    # With each row's instance index (as R2IOSROIHeads samples them), one source per
    # instance, without comparing masks: the same targets.
    p.gt_index, q.gt_index = pick, pick[:3]
    indexed = TrainingRows([p, q], num_classes=3)
    assert [len(src[0]) for src in indexed.fg_mask_sources] == [3, 2]
    for size in (40, 13):
        assert torch.equal(
            indexed.mask_targets(fg, size, torch.device("cpu")),
            rows.mask_targets(fg, size, torch.device("cpu")),
        )


def test_training_samples_each_row_with_its_instance_index(synthetic_inputs):
    """R2IOSROIHeads' sampled proposals carry ``gt_index``, the matched instance of each row;
    the losses equal those of the same rows grouped by box and class (no index)."""
    model = _build(tiny_r2ios_cfg()).train()
    heads = model.roi_heads
    images = model.preprocess_image(synthetic_inputs)
    features = model.backbone(images.tensor)
    targets = [x["instances"] for x in synthetic_inputs]
    proposals = [x["proposals"] for x in synthetic_inputs]
    torch.manual_seed(0)
    with EventStorage():
        sampled, losses = heads(images, features, proposals, targets)
    assert all(not t.has("gt_index") for t in targets)  # the caller's targets unchanged
    for p, t in zip(sampled, targets):
        fg = p.gt_classes < heads.num_classes
        assert fg.any()
        assert torch.equal(p.gt_boxes.tensor[fg], t.gt_boxes.tensor[p.gt_index[fg]])
        assert torch.equal(p.gt_masks.tensor[fg], t.gt_masks.tensor[p.gt_index[fg]])
    for p in sampled:
        p.remove("gt_index")
    torch.manual_seed(0)
    with EventStorage():
        plain = heads.forward_train(features, sampled)
    assert sorted(plain) == sorted(losses)
    for k in losses:
        torch.testing.assert_close(losses[k], plain[k], rtol=0, atol=0, msg=k)


def test_polygon_and_bitmask_targets_give_the_same_mask_loss():
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.R2IOS.MASK_SIZE = 16
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.05  # masks that depend on the input
    model = _build(cfg).train()
    feats = model.backbone(torch.randn(1, 3, 64, 64) * 50)
    bit = _train_case()
    poly = _train_case()
    rects = {0: [10.0, 10, 30, 10, 30, 30, 10, 30], 1: [20.0, 30, 50, 30, 50, 60, 20, 60]}
    poly.gt_masks = PolygonMasks([[rects[i]] for i in (0, 1, 0, 0)])
    with EventStorage():
        a = model.roi_heads.forward_train(feats, [bit])
        b = model.roi_heads.forward_train(feats, [poly])
    assert a["loss_mask"] > 0
    torch.testing.assert_close(a["loss_mask"], b["loss_mask"], rtol=0.02, atol=1e-3)
    torch.testing.assert_close(a["loss_cls"], b["loss_cls"])


def test_inference_without_proposals_returns_empty_instances():
    model = _build(tiny_r2ios_cfg()).eval()
    model.roi_heads.record_trace = True
    p = Instances((64, 64))
    p.proposal_boxes = Boxes(torch.zeros(0, 4))
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 64))
        inst = model.roi_heads.forward_inference(feats, [p])[0]
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 1, 40, 40)
    assert inst.trace_boxes.shape == (0, 4, 4)


def test_t1_conv_without_seg_aware_is_fast_rcnn(synthetic_inputs):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.NUM_ITERATIONS = 1
    cfg.MODEL.ROI_MASK_HEAD.NAME = "R2IOSConvMaskHead"
    cfg.MODEL.R2IOS.SEG_AWARE = False
    model = _build(cfg)
    torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.05)
    std_cfg = cfg.clone()
    std_cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    std_cfg.MODEL.MASK_ON = False
    std = build_roi_heads(std_cfg, model.backbone.output_shape())
    std.box_head.load_state_dict(model.roi_heads.box_head.state_dict())
    std.box_predictor.load_state_dict(model.roi_heads.box_predictor.state_dict())
    model.train()
    std.train()
    features, sampled = _features_and_sampled(model, synthetic_inputs)
    with EventStorage():
        ours = model.roi_heads.forward_train(features, copy.deepcopy(sampled))
        theirs = std._forward_box(features, copy.deepcopy(sampled))
    for k in ("loss_cls", "loss_box_reg"):
        torch.testing.assert_close(ours[k], theirs[k])
    assert theirs["loss_box_reg"] > 0.01


# ---------------------------------------------------------------------------- inference
def _inference_model(inputs, bg_fraction=0.5, **r2ios):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.R2IOS.TEST_RECORD_TRACE = True
    for k, v in r2ios.items():
        setattr(cfg.MODEL.R2IOS, k, v)
    model = _build(cfg).eval()
    heads, pred = model.roi_heads, model.roi_heads.box_predictor
    # Spread the class scores and box deltas so that proposals move and change class between
    # iterations, and shift the background logit so that ~bg_fraction of the proposals are
    # predicted background at iteration 1.
    torch.nn.init.normal_(pred.cls_score.weight, std=0.3)
    torch.nn.init.normal_(pred.bbox_pred.weight, std=0.05)
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image(inputs).tensor)
        scored = heads.mask_head.score_maps(feats)
        boxes = [x["proposals"].proposal_boxes for x in inputs]
        logits = heads._predict([feats[f] for f in heads.box_in_features], scored, boxes)[0]
        margin = logits[:, -1] - logits[:, :-1].max(dim=1).values
        pred.cls_score.bias[-1] -= margin.quantile(1 - bg_fraction)
    return model


@pytest.mark.parametrize("output_mode", ["proposal", "per_class"])
def test_inference_output_fields_and_shapes(synthetic_inputs, output_mode):
    model = _inference_model(synthetic_inputs, OUTPUT_MODE=output_mode)
    with torch.no_grad():
        outputs = model(synthetic_inputs)
    T, M = 4, 40
    for out, inp in zip(outputs, synthetic_inputs):
        inst = out["instances"]
        n = len(inst)
        assert 0 < n <= 100
        assert inst.pred_boxes.tensor.shape == (n, 4) and inst.scores.shape == (n,)
        assert inst.pred_classes.max() < 3 and (inst.scores[:-1] >= inst.scores[1:]).all()
        assert inst.pred_masks.shape == (n, inp["height"], inp["width"])  # pasted
        assert inst.trace_boxes.shape == (n, T, 4) and inst.trace_scores.shape == (n, T)
        assert inst.trace_classes.shape == (n, T) and inst.trace_masks.shape == (n, T, M, M)
        assert inst.gate_iteration.shape == (n,) and inst.trace_proposals.shape == (n, 4)
        rows = torch.arange(n)
        assert torch.equal(inst.trace_scores.argmax(1), inst.gate_iteration)
        if output_mode == "proposal":
            assert torch.equal(inst.trace_classes[rows, inst.gate_iteration], inst.pred_classes)


def test_raw_masks_are_probabilities_in_output_box_frame(synthetic_inputs):
    model = _inference_model(synthetic_inputs)
    images = model.preprocess_image(synthetic_inputs)
    with torch.no_grad():
        feats = model.backbone(images.tensor)
        inst = model.roi_heads(images, feats, [x["proposals"] for x in synthetic_inputs])[0][0]
        rows = torch.arange(len(inst))
        g = inst.gate_iteration
        assert inst.pred_masks.shape == (len(inst), 1, 40, 40)
        assert inst.pred_masks.min() >= 0 and inst.pred_masks.max() <= 1
        torch.testing.assert_close(inst.trace_boxes[rows, g], inst.pred_boxes.tensor)
        # frame of v_{t'}: l_{t'-1}, i.e. the proposal l_0 when t' is the first iteration
        frames = torch.cat([inst.trace_proposals[:, None], inst.trace_boxes], dim=1)
        reframed = reframe_masks(inst.trace_masks[rows, g], frames[rows, g], inst.pred_boxes.tensor)
        assert (g > 0).any() and (g == 0).any()
        torch.testing.assert_close(inst.pred_masks[:, 0], reframed)


def test_mask_from_output_box_predicts_inside_the_output_box(synthetic_inputs):
    model = _inference_model(synthetic_inputs, TEST_MASK_FROM_OUTPUT_BOX=True)
    images = model.preprocess_image(synthetic_inputs)
    heads = model.roi_heads
    with torch.no_grad():
        feats = model.backbone(images.tensor)
        results = heads(images, feats, [x["proposals"] for x in synthetic_inputs])[0]
        inst = results[0]
        assert len(inst) > 0
        expected = heads.mask_head.foreground_probs(
            heads.mask_head(heads.mask_head.score_maps(feats), [r.pred_boxes for r in results])
        )
    torch.testing.assert_close(inst.pred_masks[:, 0], expected[: len(inst)])
    # The boxes, scores and classes are those of the paper's output.
    heads.mask_from_output_box = False
    with torch.no_grad():
        paper = heads(images, feats, [x["proposals"] for x in synthetic_inputs])[0][0]
    assert torch.equal(paper.pred_boxes.tensor, inst.pred_boxes.tensor)
    assert torch.equal(paper.scores, inst.scores)
    assert not torch.allclose(paper.pred_masks, inst.pred_masks)


@pytest.mark.parametrize("test_score", ["gate", "mean"])
def test_skip_background_gives_identical_outputs(synthetic_inputs, test_score):
    model = _inference_model(synthetic_inputs, TEST_SCORE=test_score)
    heads = model.roi_heads
    predict = heads._predict
    rows = []

    def spy(*args, **kwargs):
        out = predict(*args, **kwargs)
        rows.append(len(out[0]))
        return out

    heads._predict = spy
    results = {}
    for skip in (False, True):
        heads.skip_background = skip
        rows.clear()
        with torch.no_grad():
            results[skip] = [o["instances"] for o in model(synthetic_inputs)]
        if skip:  # the test is only meaningful if some, not all, proposals were skipped
            assert 0 < rows[-1] < rows[0]
        else:
            assert len(set(rows)) == 1
    for off, on in zip(results[False], results[True]):
        assert set(off.get_fields()) == set(on.get_fields())
        for k, v in off.get_fields().items():
            v = v.tensor if isinstance(v, Boxes) else v
            w = on.get(k).tensor if isinstance(on.get(k), Boxes) else on.get(k)
            assert torch.equal(v, w), k


def _fields(inst):
    return {k: v.tensor if isinstance(v, Boxes) else v for k, v in inst.get_fields().items()}


def test_proposals_whose_box_does_not_move_leave_the_recursion(synthetic_inputs):
    """Deltas that collapse every box: each refinement is rejected and keeps ``l_{t-1}``,
    so iteration 2 would repeat iteration 1 for every proposal; with SKIP_BACKGROUND it
    runs once, with the outputs of all T iterations."""
    model = _inference_model(synthetic_inputs, bg_fraction=0.3)
    heads = model.roi_heads
    torch.nn.init.zeros_(heads.box_predictor.bbox_pred.weight)
    with torch.no_grad():
        heads.box_predictor.bbox_pred.bias.view(-1, 4)[:, 2:] = -50.0  # width, height -> 0
    results, counts = {}, {}
    for skip in (False, True):
        heads.skip_background = skip
        with torch.no_grad(), EventStorage() as storage:
            results[skip] = [o["instances"] for o in model(synthetic_inputs)]
        counts[skip] = [k for k in storage.latest() if k.startswith("r2ios/test_active_t")]
    assert len(counts[False]) == 4 and counts[True] == ["r2ios/test_active_t1"]
    for off, on in zip(results[False], results[True]):
        a, b = _fields(off), _fields(on)
        assert set(a) == set(b) and len(off) > 0
        for k in a:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("gate_score", ["all", "foreground", "off"])
def test_gate_picks_documented_iteration(gate_score):
    """ "off" = TEST_GATE False: every proposal's last iteration is its output."""
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.R2IOS.TEST_GATE = gate_score != "off"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0  # keep every output
    cfg.MODEL.R2IOS.GATE_SCORE = "all" if gate_score == "off" else gate_score
    cfg.MODEL.R2IOS.SKIP_BACKGROUND = False
    cfg.MODEL.R2IOS.REFRAME_MASK = False
    cfg.MODEL.R2IOS.TEST_RECORD_TRACE = True
    cfg.MODEL.R2IOS.MASK_SIZE = 8
    heads = _build(cfg).roi_heads.eval()
    # Class probabilities (class 0, class 1, background) of 4 proposals at t = 1..4.
    probs = torch.tensor(
        [
            [[0.6, 0.2, 0.2], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.7, 0.2, 0.1]],  # tie
            [[0.2, 0.7, 0.1]] * 4,  # all equal -> first
            [[0.5, 0.1, 0.4], [0.3, 0.1, 0.6], [0.55, 0.1, 0.35], [0.4, 0.1, 0.5]],  # bg best
            [[0.4, 0.3, 0.3], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1]],  # last
        ]
    )
    # (dx, dy, dw, dh) = (1, 0, 0, 0) with weights (10, 10, 5, 5): +0.1 box width per move.
    deltas = torch.tensor([1.0, 0, 0, 0]).repeat(4, 2)

    def script(t, n):
        v = torch.zeros(n, 2, 8, 8)
        v[:, 1] = t + 1.0  # foreground probability sigmoid(t + 1) identifies the iteration
        return torch.log(probs[:, t]), deltas, v

    _scripted_predict(heads, script, [])
    p = Instances((64, 64))
    p.proposal_boxes = Boxes(torch.tensor([[10.0, 10, 30, 30]]).repeat(4, 1))
    feats = {"det": torch.zeros(1, 4, 4, 4), "seg": torch.zeros(1, 64, 8, 8)}
    inst = heads.forward_inference(feats, [p])[0]
    expect_t = {"all": [1, 0, 1, 3], "foreground": [1, 0, 2, 3], "off": [3, 3, 3, 3]}[gate_score]
    # Background-predicted proposals keep their box: proposal 2 moves at t = 1 and t = 3 only.
    moves = [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1]]
    expected = []
    for i, t in enumerate(expect_t):
        cls = int(probs[i, t].argmax())
        if cls == 2:  # background at t' -> no output
            continue
        dx = 2.0 * sum(moves[i][: t + 1])
        expected.append((float(probs[i, t].max()), cls, t, 10 + dx))
    expected.sort(reverse=True)
    assert len(inst) == len(expected)
    # Equal scores may come out in either order: compare in (score, class) order.
    order = sorted(
        range(len(inst)), key=lambda k: (-round(inst.scores[k].item(), 5), -inst.pred_classes[k])
    )
    inst = inst[torch.tensor(order, dtype=torch.long)]
    for k, (score, cls, t, x0) in enumerate(expected):
        assert inst.scores[k].item() == pytest.approx(score, abs=1e-5)
        assert inst.pred_classes[k].item() == cls and inst.gate_iteration[k].item() == t
        assert inst.pred_boxes.tensor[k, 0].item() == pytest.approx(x0, abs=1e-4)
        mask_value = torch.sigmoid(torch.tensor(t + 1.0))
        torch.testing.assert_close(inst.pred_masks[k], torch.full((1, 8, 8), mask_value.item()))


@pytest.mark.parametrize("output_mode", ["proposal", "per_class"])
def test_mean_score_averages_each_class_over_the_iterations(output_mode):
    """TEST_SCORE "mean": an output's score is its class's probability averaged over the T
    iterations; class, box and mask stay those of the gate's iteration."""
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
    cfg.MODEL.R2IOS.SKIP_BACKGROUND = False  # the script gives every row at every t
    cfg.MODEL.R2IOS.OUTPUT_MODE = output_mode
    cfg.MODEL.R2IOS.TEST_RECORD_TRACE = True
    cfg.MODEL.R2IOS.MASK_SIZE = 8
    heads = _build(cfg).roi_heads.eval()
    probs = torch.tensor(
        [
            [[0.6, 0.2, 0.2], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.7, 0.2, 0.1]],
            [[0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.2, 0.4, 0.4], [0.3, 0.5, 0.2]],
        ]
    )
    deltas = torch.tensor([1.0, 0, 0, 0]).repeat(2, 2)
    p = Instances((64, 64))
    p.proposal_boxes = Boxes(torch.tensor([[10.0, 10, 30, 30], [20.0, 20, 40, 40]]))
    feats = {"det": torch.zeros(1, 4, 4, 4), "seg": torch.zeros(1, 64, 8, 8)}
    outputs = {}
    for test_score in ("gate", "mean"):
        heads.test_score = test_score
        _scripted_predict(heads, lambda t, n: (torch.log(probs[:, t]), deltas, _v(n, t)), [])
        outputs[test_score] = heads.forward_inference(feats, [p])[0]
    gate, mean = outputs["gate"], outputs["mean"]
    # Proposal 0: t' = 2 (0.9), class 0; proposal 1: t' = 1 (0.7, background) at t = 1, so its
    # gate iteration is the first (0.7 > 0.6): class background, no proposal-mode output.
    average = probs.mean(dim=1)
    if output_mode == "proposal":
        assert len(mean) == len(gate) == 1
        assert mean.pred_classes.tolist() == [0] and mean.gate_iteration.tolist() == [1]
        assert mean.scores.tolist() == pytest.approx([average[0, 0].item()])
        assert gate.scores.tolist() == pytest.approx([0.9])
    else:
        got = sorted(zip(mean.gate_iteration.tolist(), mean.pred_classes.tolist(), mean.scores))
        expected = [(0, 0, average[1, 0]), (0, 1, average[1, 1])]
        expected += [(1, 0, average[0, 0]), (1, 1, average[0, 1])]
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        torch.testing.assert_close(
            torch.stack([g[2] for g in got]), torch.stack([e[2] for e in expected])
        )
    # Everything but the scores (and so the order) is the gate's output.
    key = lambda inst: sorted(  # noqa: E731
        zip(
            inst.pred_classes.tolist(),
            inst.pred_boxes.tensor[:, 0].tolist(),
            inst.gate_iteration.tolist(),
        )
    )
    assert key(mean) == key(gate)


def test_mean_score_of_one_iteration_is_the_gate_score(synthetic_inputs):
    model = _inference_model(synthetic_inputs, TEST_NUM_ITERATIONS=1, OUTPUT_MODE="per_class")
    outputs = {}
    for test_score in ("gate", "mean"):
        model.roi_heads.test_score = test_score
        with torch.no_grad():
            outputs[test_score] = [o["instances"] for o in model(synthetic_inputs)]
    for a, b in zip(outputs["gate"], outputs["mean"]):
        assert len(a) > 0
        for k, v in _fields(a).items():
            torch.testing.assert_close(_fields(b)[k], v)


def _v(n, t):
    v = torch.zeros(n, 2, 8, 8)
    v[:, 1] = t + 1.0
    return v


def test_per_class_output_when_no_later_iteration_wins_the_gate():
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.R2IOS.OUTPUT_MODE = "per_class"
    cfg.MODEL.R2IOS.MASK_SIZE = 8
    heads = _build(cfg).roi_heads.eval()
    probs = torch.tensor([[[0.9, 0.05, 0.05], [0.6, 0.2, 0.2]]] * 2)  # t = 1 is best for both

    def script(t, n):
        return torch.log(probs[:n, t % 2]), torch.zeros(n, 8), torch.zeros(n, 2, 8, 8)

    _scripted_predict(heads, script, [])
    p = Instances((64, 64))
    p.proposal_boxes = Boxes(torch.tensor([[10.0, 10, 30, 30], [30.0, 30, 60, 60]]))
    feats = {"det": torch.zeros(1, 4, 4, 4), "seg": torch.zeros(1, 64, 8, 8)}
    inst = heads.forward_inference(feats, [p])[0]
    assert len(inst) == 2 and torch.allclose(inst.scores, torch.tensor([0.9, 0.9]))


def test_mask_nms_suppresses_duplicates(synthetic_inputs):
    model = _inference_model(synthetic_inputs, NMS_TYPE="mask")
    mh = model.roi_heads.mask_head  # masks with structure, not ~0.5 everywhere
    torch.nn.init.normal_(mh.score.weight, std=0.5)
    for fc in (mh.ae_fc1, mh.ae_fc2):
        torch.nn.init.normal_(fc.weight, std=0.05)
    with torch.no_grad():
        inst = model(synthetic_inputs[:1])[0]["instances"]
    masks = inst.pred_masks.flatten(1).float()
    inter = masks @ masks.T
    area = masks.sum(1)
    iou = inter / (area[:, None] + area[None] - inter).clamp(min=1)
    same = inst.pred_classes[:, None] == inst.pred_classes[None]
    off_diag = ~torch.eye(len(inst), dtype=torch.bool)
    assert (area > 0).sum() > 1
    assert (iou[same & off_diag] <= 0.5).all()  # 64 px: the NMS grid is the image grid


# --------------------------------------------------------------------- FPN + RPN, overfit
@pytest.mark.parametrize("mask_in_features", [["p2", "p3", "p4", "p5"], ["seg"]])
def test_fpn_rpn_config_trains_and_infers(mask_in_features):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 200
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_MASK_HEAD.NAME = "InstanceAwareAEMaskHead"
    cfg.MODEL.R2IOS.MASK_IN_FEATURES = mask_in_features
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = _build(cfg)
    assert isinstance(model.roi_heads, R2IOSROIHeads)
    assert model.roi_heads.mask_head.in_features == ["p2", "p3", "p4", "p5"]
    inputs = make_synthetic_inputs(num_images=2, size=64, seed=3)
    for x in inputs:
        del x["proposals"]
    model.train()
    with EventStorage():
        losses = model(inputs)
    assert {"loss_rpn_cls", "loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.score.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (64, 64)


def _mask_iou(a, b):
    inter = (a & b).sum().float()
    return (inter / (a | b).sum().clamp(min=1)).item()


def test_tiny_model_overfits_synthetic_images():
    cfg = tiny_r2ios_cfg(width=1 / 8)
    cfg.MODEL.PIXEL_STD = [57.4, 57.1, 58.4]  # unit-scale inputs for a from-scratch net
    cfg.MODEL.VGG.SEG_FC6_DILATION = 2
    cfg.MODEL.R2IOS.NUM_ITERATIONS = 2
    cfg.MODEL.R2IOS.TEST_NUM_ITERATIONS = 2
    cfg.MODEL.R2IOS.MASK_SIZE = 14
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.01
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.3
    model = _build(cfg)
    inputs = make_synthetic_inputs(num_images=3, size=96, seed=5, proposals_per_gt=12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    history = []
    with EventStorage() as storage:
        for it in range(200):
            storage.iter = it
            losses = model(inputs)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            history.append({k: v.item() for k, v in losses.items()})

    def mean(rows, key=None):
        return sum(sum(r.values()) if key is None else r[key] for r in rows) / len(rows)

    first, last = history[:5], history[-5:]
    assert mean(last) < mean(first) / 3, (mean(first), mean(last))
    assert mean(last, "loss_cls") < mean(first, "loss_cls") / 10
    assert mean(last, "loss_mask") < 0.75 * mean(first, "loss_mask")
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    ious = []
    for inp, out in zip(inputs, outputs):
        gt, pred = inp["instances"], out["instances"]
        for m, c in zip(gt.gt_masks.tensor, gt.gt_classes):
            same_class = pred.pred_masks[pred.pred_classes == c]
            ious.append(max((_mask_iou(pm, m) for pm in same_class), default=0.0))
    assert sum(ious) / len(ious) > 0.6 and min(ious) > 0.3, ious


def test_mask_heads_are_registered_and_the_heads_refuse_another():
    from detectron2.modeling import build_model

    from r2ios_d2.modeling.mask_head import r2ios_mask_head_names

    assert r2ios_mask_head_names() == sorted(h.__name__ for h in MASK_HEADS.values())
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"  # a stock head: not R2-IOS's
    with pytest.raises(ValueError, match="ROI_MASK_HEAD.NAME.*MaskRCNNConvUpsampleHead"):
        build_model(cfg)
    with pytest.raises(ValueError, match="bilinear pooler"):
        R2IOSConvMaskHead({"seg": ShapeSpec(channels=8, stride=8)}, in_features=["seg"],
                          pooler_type="ROIPool")  # fmt: skip
    with pytest.raises(ValueError, match="in_features"):
        InstanceAwareAEMaskHead({"seg": ShapeSpec(channels=8, stride=8)}, in_features=["p2"])


def test_vgg_dropout_fc_head_is_the_stock_head_plus_dropout_in_training():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead, build_box_head

    from r2ios_d2.modeling import VGGDropoutFCHead

    cfg = tiny_r2ios_cfg()
    cfg.MODEL.ROI_BOX_HEAD.NAME = "VGGDropoutFCHead"
    cfg.MODEL.ROI_BOX_HEAD.FC_DROPOUT = 0.5
    shape = ShapeSpec(channels=8, height=7, width=7)
    torch.manual_seed(0)
    head = build_box_head(cfg, shape)
    assert isinstance(head, VGGDropoutFCHead) and head.fc_dropout == 0.5
    stock = FastRCNNConvFCHead(shape, conv_dims=[], fc_dims=[64, 64])
    stock.load_state_dict(head.state_dict())  # the same parameters, the same names
    x = torch.randn(32, 8, 7, 7)
    head.eval()
    torch.testing.assert_close(head(x), stock(x))  # no dropout at test time
    # In training, after each fc ReLU about half the units are dropped and the rest scaled by
    # 2 (one fc layer: its output is exactly that).
    one = VGGDropoutFCHead(shape, conv_dims=[], fc_dims=[64], fc_dropout=0.5).train()
    one_stock = FastRCNNConvFCHead(shape, conv_dims=[], fc_dims=[64])
    one_stock.load_state_dict(one.state_dict())
    y, ref = one(x), one_stock(x)
    kept = ref > 0
    assert 0.3 < (y[kept] == 0).float().mean() < 0.7
    nonzero = y[kept] != 0
    torch.testing.assert_close(y[kept][nonzero], 2 * ref[kept][nonzero])
    assert not torch.equal(head.train()(x), head.eval()(x))
    with pytest.raises(ValueError, match="FC_DROPOUT"):
        VGGDropoutFCHead(shape, conv_dims=[], fc_dims=[4], fc_dropout=1.0)


@pytest.mark.parametrize("skip_background", [True, False])
@pytest.mark.parametrize(
    "refine_nms, refine_topk, continuing",
    [(0.0, 0, [0, 1, 2]), (0.5, 0, [0, 2]), (0.0, 1, [0]), (0.5, 2, [0, 2]), (0.0, 2, [0, 1])],
)
def test_refine_budget_stops_duplicates_and_low_scores_after_iteration_one(
    refine_nms, refine_topk, continuing, skip_background
):
    """TEST_REFINE_NMS / TEST_REFINE_TOPK: after iteration 1, a proposal whose refined box
    overlaps a higher-scoring one of its class (IoU > 0.5), or that ranks below the top k of
    its image, stops and keeps its iteration-1 result; the others run all T iterations."""
    cfg = tiny_r2ios_cfg(num_classes=2)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
    cfg.MODEL.R2IOS.TEST_RECORD_TRACE = True
    cfg.MODEL.R2IOS.MASK_SIZE = 8
    cfg.MODEL.R2IOS.TEST_REFINE_NMS = refine_nms
    cfg.MODEL.R2IOS.TEST_REFINE_TOPK = refine_topk
    cfg.MODEL.R2IOS.SKIP_BACKGROUND = skip_background  # the budget acts either way
    heads = _build(cfg).roi_heads.eval()
    # Class 0 everywhere; at t = 1 the scores are .9 / .8 / .7, then .92, .94, .96 (the last
    # iteration wins the gate). Proposals 0 and 1 overlap (IoU 0.82), 2 lies apart.
    first = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1]])
    deltas = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])  # class 0 moves right by w / 10

    def script(t, n):
        later = torch.tensor([0.9 + 0.02 * t, 0.05 - 0.01 * t, 0.05 - 0.01 * t])
        probs = first if t == 0 else later.repeat(n, 1)
        return torch.log(probs), deltas.repeat(n, 1), _v(n, t)

    record = []
    _scripted_predict(heads, script, record)
    p = Instances((64, 64))
    p.proposal_boxes = Boxes(torch.tensor([[10.0, 10, 30, 30], [12, 10, 32, 30], [30, 40, 50, 60]]))
    feats = {"det": torch.zeros(1, 4, 4, 4), "seg": torch.zeros(1, 64, 8, 8)}
    out = heads.forward_inference(feats, [p])[0]
    assert record == [3] + [len(continuing)] * 3
    assert len(out) == 3
    proposal = {round(b[0].item()): i for i, b in enumerate(p.proposal_boxes.tensor)}
    for x0, t_prime, x_out in zip(
        out.trace_proposals[:, 0].tolist(), out.gate_iteration.tolist(), out.pred_boxes.tensor
    ):
        i = proposal[round(x0)]
        steps = 4 if i in continuing else 1  # each iteration moves the box right by 2 px
        assert t_prime == steps - 1
        assert x_out[0].item() == pytest.approx(x0 + 2.0 * steps, abs=1e-3)


def test_refine_budget_is_per_image_and_per_class():
    heads = _build(tiny_r2ios_cfg(num_classes=2)).roi_heads.eval()
    box = [10.0, 10, 30, 30]
    boxes = torch.tensor([box, [11, 10, 31, 30], box, box, box, [50, 50, 60, 60], box])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.99])
    classes = torch.tensor([0, 0, 1, 0, 0, 0, 0])
    images = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    go = torch.tensor([True, True, True, True, True, True, False])  # row 6 stops anyway

    def budget(nms, topk):
        heads.refine_nms, heads.refine_topk = nms, topk
        return torch.nonzero(heads._refine_budget(go, boxes, scores, classes, images))

    # NMS: row 1 overlaps row 0 (same image and class, lower score); row 2 is another
    # class, row 3 another image (where it overlaps row 4, which scores higher).
    assert budget(0.5, 0).flatten().tolist() == [0, 2, 4, 5]
    assert budget(0.0, 1).flatten().tolist() == [0, 4]
    assert budget(0.0, 2).flatten().tolist() == [0, 1, 3, 4]
    assert budget(0.5, 2).flatten().tolist() == [0, 2, 4, 5]
    assert budget(0.5, 1).flatten().tolist() == [0, 4]


@pytest.mark.parametrize("move_background", [False, True])
def test_masks_of_untrained_rows_without_autograd_give_the_same_losses_and_gradients(
    synthetic_inputs, move_background
):
    """With SEG_AWARE_GRAD_SCALE 0 only the foreground rows' mask losses reach the mask head:
    the other rows' masks (background, and background that moves) are computed without
    autograd. Losses and every gradient equal computing all rows with autograd."""
    from r2ios_d2.modeling.mask_head import R2IOSMaskHead

    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.TRAIN_MOVE_BACKGROUND = move_background
    model = _build(cfg).train()
    heads = model.roi_heads
    features, sampled = _features_and_sampled(model, synthetic_inputs)
    results, splits = [], []
    for split in (True, False):
        model.zero_grad()
        if split:
            original = heads.mask_head._forward_split

            def counted(*args, original=original):
                splits.append(int(args[-1].sum()))  # rows with autograd
                return original(*args)

            heads.mask_head._forward_split = counted
        else:  # every row with autograd: the plain path
            heads.mask_head._forward_split = lambda scored, boxes, conf, fg_only, rows: (
                R2IOSMaskHead.forward(heads.mask_head, scored, boxes, conf, fg_only)
            )
        torch.manual_seed(0)
        with EventStorage():
            losses = heads.forward_train(features, sampled)
        sum(losses.values()).backward(retain_graph=True)
        grads = {n: p.grad.clone() for n, p in heads.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (loss_a, grad_a), (loss_b, grad_b) = results
    num_fg = sum(int((p.gt_classes < heads.num_classes).sum()) for p in sampled)
    assert splits and splits[0] == num_fg < sum(len(p) for p in sampled)
    assert sorted(loss_a) == sorted(loss_b) and sorted(grad_a) == sorted(grad_b)
    for k in loss_a:
        torch.testing.assert_close(loss_a[k], loss_b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert grad_a["mask_head.ae_fc1.weight"].abs().sum() > 0
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_every_row_keeps_autograd_when_the_predictor_trains_the_masks(synthetic_inputs):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.SEG_AWARE_GRAD_SCALE = 0.5  # every row's class loss reaches its mask
    model = _build(cfg).train()
    calls = []
    model.roi_heads.mask_head._forward_split = lambda *args: calls.append(args)
    with EventStorage():
        model(synthetic_inputs)
    assert calls == []
