"""The mask logits as ``d = v[1] - v[0]``: the same model as the two-channel ``v`` of the paper.

The heads compute ``d`` directly (half of the last mask layer) and the seg-aware predictor
reads ``sigmoid(d) - 0.5`` through the difference of its two channels' weight columns. These
tests compare every output, loss and gradient with the literal two-channel computation
(softmax over ``v``, 2-class cross-entropy, ``concat(fc7, vec(softmax(v) - 0.5))``).
"""

import pytest
import torch
from conftest import tiny_r2ios_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from r2ios_d2.modeling.box_head import scale_grad
from r2ios_d2.modeling.mask_head import foreground_logits
from r2ios_d2.modeling.roi_align import pool_boxes

HEADS = ["InstanceAwareAEMaskHead", "R2IOSConvMaskHead", "R2IOSFCMaskHead", "residual AE"]


def _model(head="InstanceAwareAEMaskHead", mask_size=8, seed=0, **r2ios):
    cfg = tiny_r2ios_cfg()
    if head == "residual AE":
        head, r2ios = "InstanceAwareAEMaskHead", {**r2ios, "AE_RESIDUAL": True}
    cfg.MODEL.ROI_MASK_HEAD.NAME = head
    cfg.MODEL.R2IOS.MASK_SIZE = mask_size
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.1  # masks far from 0.5, so a wrong channel shows
    # The derived-weight algebra, on torch's F.linear (the oneDNN backend rounds the full and
    # the derived products differently again; it is compared with F.linear in test_linear).
    cfg.MODEL.R2IOS.CPU_LINEAR = "torch"
    for key, value in r2ios.items():
        cfg.MODEL.R2IOS[key] = value
    torch.manual_seed(seed)
    return build_model(cfg)


def _literal_ce(logits, targets):
    """The paper's 2-class pixel cross-entropy on (R, 2, M, M) v, mean per RoI."""
    return F.cross_entropy(logits, targets.long(), reduction="none").mean(dim=(1, 2))


def _literal_predict(heads):
    """``R2IOSROIHeads._predict`` written with the two channels of v, as the paper states it."""
    pred = heads.box_predictor

    def predict(box_features, scored, boxes, confidence_maps=None, mask_probs=None, **kwargs):
        x = heads.box_head(pool_boxes(heads.box_pooler, box_features, boxes)).flatten(1)
        v = heads.mask_head(scored, boxes, confidence_maps)
        seg = (scale_grad(v, pred.seg_grad_scale).softmax(dim=1) - 0.5).flatten(1)
        feats = torch.cat([x, seg * pred.seg_scale], dim=1)
        if mask_probs is not None and not torch.is_grad_enabled():
            mask_probs.append(v.softmax(dim=1)[:, 1])
        return pred.cls_score(feats), pred.bbox_pred(feats), v

    return predict


def _as_literal(model):
    heads = model.roi_heads
    heads._predict = _literal_predict(heads)
    heads.mask_head.per_roi_loss = _literal_ce
    return model


def _scored_and_boxes(mask_head, seed=1):
    g = torch.Generator().manual_seed(seed)
    channels = mask_head.score.in_channels
    features = {f: torch.randn(2, channels, 12, 16, generator=g) for f in mask_head.in_features}
    xy = torch.rand(7, 2, generator=g) * 60
    wh = torch.rand(7, 2, generator=g) * 50 + 4
    boxes = torch.cat([xy, xy + wh], dim=1)
    return features, [Boxes(boxes[:4]), Boxes(boxes[4:])]


@pytest.mark.parametrize("head", HEADS)
def test_every_head_gives_the_channel_difference_with_the_same_gradients(head):
    mask_head = _model(head).roi_heads.mask_head
    features, boxes = _scored_and_boxes(mask_head)
    weight = torch.randn(7, 8, 8)
    results = []
    for fast in (True, False):
        mask_head.zero_grad()
        conf = []
        scored = mask_head.score_maps(features)
        if fast:
            d = mask_head.foreground_logits(scored, boxes, conf)
        else:
            d = foreground_logits(mask_head(scored, boxes, conf))
        (d * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in mask_head.named_parameters()}
        results.append((d.detach(), conf[0].detach(), grads))
    (d_fast, c_fast, g_fast), (d_ref, c_ref, g_ref) = results
    assert d_fast.shape == (7, 8, 8) and d_fast.abs().max() > 0.1
    torch.testing.assert_close(d_fast, d_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(c_fast, c_ref)
    assert sorted(g_fast) == sorted(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("head", ["InstanceAwareAEMaskHead", "R2IOSFCMaskHead"])
def test_derived_weights_shared_by_the_iterations_give_the_same_outputs_and_gradients(head):
    """Inside ``reusing_derived_weights`` the channel difference is computed once for any
    number of calls (the T iterations); outputs and gradients equal recomputing it per call,
    and a parameter change after the context is seen."""
    mask_head = _model(head).roi_heads.mask_head
    features, boxes = _scored_and_boxes(mask_head)
    weights = [torch.randn(7, 8, 8, generator=torch.Generator().manual_seed(t)) for t in range(3)]
    results = []
    for shared in (True, False):
        mask_head.zero_grad()
        scored = mask_head.score_maps(features)
        with mask_head.reusing_derived_weights() if shared else torch.enable_grad():
            ds = [mask_head.foreground_logits(scored, boxes) for _ in weights]
            if shared:
                assert len(mask_head._derived) == 1  # one derivation for the three calls
        sum((d * w).sum() for d, w in zip(ds, weights)).backward()
        grads = {n: p.grad.clone() for n, p in mask_head.named_parameters()}
        results.append((torch.stack(ds).detach(), grads))
    (d_shared, g_shared), (d_ref, g_ref) = results
    assert torch.equal(d_shared, d_ref)
    for name in g_ref:
        torch.testing.assert_close(g_shared[name], g_ref[name], rtol=1e-5, atol=1e-7, msg=name)
    assert mask_head._derived is None
    layer = mask_head.ae_fc2 if head == "InstanceAwareAEMaskHead" else mask_head.fc2
    with torch.no_grad():
        layer.bias[layer.bias.shape[0] // 2 :] += 1.0  # the foreground channel's bias
        scored = mask_head.score_maps(features)
        with mask_head.reusing_derived_weights():
            d_new = mask_head.foreground_logits(scored, boxes)
    torch.testing.assert_close(d_new, d_ref[0] + 1.0, rtol=0, atol=1e-5)


def test_mask_loss_and_probabilities_from_d_equal_the_two_channel_ones():
    head = _model().roi_heads.mask_head
    v = torch.randn(5, 2, 8, 8) * 4
    targets = torch.rand(5, 8, 8) > 0.5
    d = foreground_logits(v)
    torch.testing.assert_close(head.per_roi_loss(d, targets), _literal_ce(v, targets))
    torch.testing.assert_close(head.per_roi_loss(v, targets), _literal_ce(v, targets))
    torch.testing.assert_close(head.foreground_probs(d), v.softmax(dim=1)[:, 1])
    assert torch.equal(foreground_logits(d), d)


@pytest.mark.parametrize("grad_scale", [0.0, 0.3, 1.0])
def test_seg_aware_predictor_on_d_equals_the_two_channel_formula(grad_scale):
    pred = _model(SEG_AWARE_GRAD_SCALE=grad_scale).roi_heads.box_predictor
    fc_dim = pred.cls_score.in_features - pred.mask_dim
    x, v0 = torch.randn(6, fc_dim), torch.randn(6, 2, 8, 8) * 3
    outs, grads = [], []
    for mode in ("literal", "v", "d"):
        pred.zero_grad()
        v = v0.clone().requires_grad_(True)
        if mode == "literal":
            seg = (scale_grad(v, grad_scale).softmax(dim=1) - 0.5).flatten(1)
            feats = torch.cat([x, seg * pred.seg_scale], dim=1)
            logits, deltas = pred.cls_score(feats), pred.bbox_pred(feats)
        else:
            logits, deltas = pred(x, v if mode == "v" else foreground_logits(v))
        (logits.pow(2).sum() + deltas.sum()).backward()
        outs.append((logits.detach(), deltas.detach()))
        g = {n: p.grad.clone() for n, p in pred.named_parameters()}
        g["v"] = torch.zeros_like(v) if v.grad is None else v.grad
        grads.append(g)
    for out, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-6)
        for name in grads[0]:
            torch.testing.assert_close(g[name], grads[0][name], rtol=1e-4, atol=1e-7, msg=name)
    assert (grads[0]["v"].abs().sum() > 0) == (grad_scale > 0)
    # Without autograd, precomputed foreground probabilities give the same outputs.
    with torch.no_grad():
        shared = pred(x, foreground_logits(v0), mask_probs=v0.softmax(dim=1)[:, 1])
    torch.testing.assert_close(shared, outs[0], rtol=1e-5, atol=1e-6)


def test_raw_logits_input_needs_both_channels():
    pred = _model(SEG_AWARE_INPUT="logits").roi_heads.box_predictor
    assert pred.needs_mask_channels
    fc_dim = pred.cls_score.in_features - pred.mask_dim
    x, v = torch.randn(2, fc_dim), torch.randn(2, 2, 8, 8)
    expected = pred.cls_score(torch.cat([x, v.flatten(1) * pred.seg_scale], dim=1))
    torch.testing.assert_close(pred(x, v)[0], expected)
    with pytest.raises(ValueError, match="both channels"):
        pred(x, foreground_logits(v))


@pytest.mark.parametrize("recipe", ["default", "move_background_gate", "paper_literal"])
def test_training_losses_gradients_and_probes_equal_the_two_channel_model(synthetic_inputs, recipe):
    settings = {
        "default": {},
        "move_background_gate": {"TRAIN_MOVE_BACKGROUND": True, "GATE": True},
        "paper_literal": {"SEG_AWARE_INPUT": "logits", "SEG_AWARE_GRAD_SCALE": 1.0},
    }[recipe]
    results = []
    for literal in (False, True):
        model = _model(mask_size=40, GRAD_PROBE_PERIOD=1, **settings).train()
        if literal and recipe != "paper_literal":  # paper_literal runs v either way
            _as_literal(model)
        torch.manual_seed(5)  # the same RoI sampling
        with EventStorage() as storage:
            losses = model(synthetic_inputs)
            probes = {k: v[0] for k, v in storage.latest().items() if "/grad_" in k}
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: x.detach() for k, x in losses.items()}, probes, grads))
    (l_fast, p_fast, g_fast), (l_ref, p_ref, g_ref) = results
    assert sorted(l_fast) == sorted(l_ref) and l_fast["loss_mask"] > 0
    for k in l_ref:
        torch.testing.assert_close(l_fast[k], l_ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert sorted(p_fast) == sorted(p_ref) and any("grad_v" in k for k in p_ref)
    for k in p_ref:
        assert p_fast[k] == pytest.approx(p_ref[k], rel=1e-4, abs=1e-9), k
    assert sorted(g_fast) == sorted(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=2e-4, atol=1e-7, msg=name)


def test_inference_outputs_equal_the_two_channel_model(synthetic_inputs):
    outputs = []
    for literal in (False, True):
        model = _model(mask_size=40, seed=3).eval()
        if literal:
            _as_literal(model)
        with torch.no_grad():
            outputs.append([o["instances"] for o in model(synthetic_inputs)])
    for fast, ref in zip(*outputs):
        assert len(fast) == len(ref) > 0
        assert torch.equal(fast.pred_classes, ref.pred_classes)
        torch.testing.assert_close(fast.scores, ref.scores, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.pred_boxes.tensor, ref.pred_boxes.tensor)
        # pasted binary masks: equal but for pixels within float error of the threshold
        differ = (fast.pred_masks != ref.pred_masks).float().mean()
        assert differ < 1e-3


def test_residual_autoencoder_adds_its_output_to_the_confidence_maps():
    heads = {
        name: _model(name).roi_heads.mask_head for name in ("residual AE", "R2IOSConvMaskHead")
    }
    residual, conv = heads["residual AE"], heads["R2IOSConvMaskHead"]
    assert residual.residual and not _model().roi_heads.mask_head.residual
    features, boxes = _scored_and_boxes(residual)
    conv.score.load_state_dict(residual.score.state_dict())
    with torch.no_grad():
        scored = residual.score_maps(features)
        c = conv(scored, boxes)
        ae = residual.ae_fc2(F.relu(residual.ae_fc1(c.flatten(1)))).view_as(c)
        torch.testing.assert_close(residual(scored, boxes), c + ae)
        for layer in (residual.ae_fc2.weight, residual.ae_fc2.bias):
            layer.zero_()  # no correction: v = C, the "w/o autoencoder" head
        torch.testing.assert_close(residual(scored, boxes), c)
        torch.testing.assert_close(
            residual.foreground_logits(scored, boxes), conv.foreground_logits(scored, boxes)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_roi_loss_equals_torch_binary_cross_entropy_values_and_gradients(dtype):
    from r2ios_d2.modeling.mask_head import R2IOSMaskHead

    g = torch.Generator().manual_seed(3)
    d = torch.randn(5, 6, 6, generator=g, dtype=dtype) * 6
    d[0, 0, :4] = torch.tensor([100.0, -100.0, 0.0, 30.0], dtype=dtype)  # saturated, 0
    targets = torch.rand(5, 6, 6, generator=g) > 0.5
    weight = torch.rand(5, generator=g, dtype=dtype)
    results = []
    for fn in (R2IOSMaskHead.per_roi_loss, None):
        x = d.clone().requires_grad_()
        if fn is None:
            loss = F.binary_cross_entropy_with_logits(x, targets.to(dtype), reduction="none")
            loss = loss.mean(dim=(1, 2))
        else:
            loss = fn(x, targets)
        (loss * weight).sum().backward()
        results.append((loss.detach(), x.grad))
    (loss, grad), (ref_loss, ref_grad) = results
    assert loss.shape == (5,) and loss.dtype == dtype
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=atol)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=atol)
