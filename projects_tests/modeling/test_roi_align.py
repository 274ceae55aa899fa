"""MODEL.R2IOS.CPU_ROI_ALIGN_GRAD: RoIAlign's input gradient as matrix products equals
torchvision's backward (float64: to rounding; every sampling mode, alignment, boxes partly or
wholly outside the map, empty boxes, images without boxes), keeps torchvision's forward, and is
what the R2-IOS heads' poolers (not the stock heads') use on CPU; MODEL.R2IOS.
CPU_MASK_POOL_FORWARD: the forward as matrix products equals torchvision's the same way, runs
from MATMUL_FORWARD_MIN_BOXES boxes on, on the mask head's pooler only; the recursion's pooling
of ready (R, 5) rows equals the route through per-image Boxes."""

import pytest
import torch
from conftest import tiny_r2ios_cfg
from detectron2.layers import ROIAlign
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

from r2ios_d2.config_checks import validate_r2ios_config
from r2ios_d2.modeling import mask_head as mask_head_mod
from r2ios_d2.modeling import roi_align as roi_align_mod
from r2ios_d2.modeling import roi_heads as roi_heads_mod
from r2ios_d2.modeling.roi_align import (
    MATMUL_FORWARD_MIN_BOXES,
    R2IOSROIAlign,
    pool_boxes,
    roi_align_axis_weights,
    roi_align_input_grad,
    roi_align_matmul,
    set_cpu_roi_align_forward,
    set_cpu_roi_align_grad,
)


def _rois(g, num, images, h, w, scale, outside=0.3, dtype=torch.float64):
    """Random boxes (batch index first) on ``images`` maps of h x w cells at ``scale``, some
    partly or wholly outside the map, the first three of zero width, one of zero area."""
    b = torch.randint(0, images, (num,), generator=g).to(dtype)
    x1 = (torch.rand(num, generator=g, dtype=dtype) * (1 + 2 * outside) - outside) * w / scale
    y1 = (torch.rand(num, generator=g, dtype=dtype) * (1 + 2 * outside) - outside) * h / scale
    bw = torch.rand(num, generator=g, dtype=dtype) * w / scale
    bh = torch.rand(num, generator=g, dtype=dtype) * h / scale
    rois = torch.stack([b, x1, y1, x1 + bw, y1 + bh], 1)
    rois[:3, 3] = rois[:3, 1]
    rois[3, 3:] = rois[3, 1:3]
    return rois


def _torchvision_grad(x, rois, grad_out, size, scale, sampling, aligned):
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(roi_align(x, rois, size, scale, sampling, aligned), x, grad_out)
    return grad


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 9, 13, 40, (7, 7), 1 / 16),  # box pool
        (1, 2, 32, 40, 30, (40, 40), 1 / 8),  # mask pool
        (3, 4, 5, 6, 25, (3, 5), 0.5),  # non-square bins, boxes far larger than the map
    ],
)
def test_input_grad_equals_torchvisions_backward(shape, sampling, aligned):
    n, c, h, w, num, size, scale = shape
    g = torch.Generator().manual_seed(sampling + 10 * aligned + num)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    rois = _rois(g, num, n, h, w, scale)
    grad_out = torch.randn(num, c, *size, dtype=torch.float64, generator=g)
    ref = _torchvision_grad(x, rois, grad_out, size, scale, sampling, aligned)
    got = roi_align_input_grad(grad_out, rois, x.shape, scale, sampling, aligned)
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12 * ref.abs().max().item())


def test_separable_weights_reproduce_the_forward():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 11, 17, dtype=torch.float64, generator=g)
    rois = _rois(g, 20, 2, 11, 17, 0.25)
    for sampling, aligned in ((0, True), (2, False)):
        ref = roi_align(x, rois, (6, 4), 0.25, sampling, aligned)
        wy, wx = roi_align_axis_weights(rois, (6, 4), 0.25, sampling, aligned, 11, 17)
        assert wy.shape == (20, 6, 11) and wx.shape == (20, 4, 17)
        got = wy[:, None] @ x[rois[:, 0].long()] @ wx[:, None].transpose(-1, -2)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 2, 32, 40, 60, (40, 40), 1 / 8),  # mask pool, one image
        (3, 2, 9, 13, 40, (7, 5), 1 / 16),  # several images, rows in any order
        (2, 4, 5, 6, 25, (3, 5), 0.5),  # boxes far larger than the map
    ],
)
def test_forward_as_products_equals_torchvisions(shape, sampling, aligned):
    n, c, h, w, num, size, scale = shape
    g = torch.Generator().manual_seed(100 + sampling + 10 * aligned + num)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    rois = _rois(g, num, n, h, w, scale)  # unsorted images, empty and outside boxes
    ref = roi_align(x, rois, size, scale, sampling, aligned)
    got = roi_align_matmul(x, rois, size, scale, sampling, aligned)
    assert ref.abs().max() > 0 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12 * ref.abs().max().item())


def test_forward_as_products_without_boxes_for_some_images_and_in_chunks(monkeypatch):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 2, 8, 9, dtype=torch.float64, generator=g)
    assert roi_align_matmul(x, torch.zeros(0, 5, dtype=x.dtype), (4, 4), 1.0, 1, True).shape == (
        0,
        2,
        4,
        4,
    )
    rois = _rois(g, 30, 2, 8, 9, 1.0)  # image 2 has none
    whole = roi_align_matmul(x, rois, (4, 4), 1.0, 2, True)
    monkeypatch.setattr(roi_align_mod, "_CHUNK_ELEMENTS", 8 * 4 * 3)  # 3 boxes per chunk
    chunked = roi_align_matmul(x, rois, (4, 4), 1.0, 2, True)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    one = x[:1]
    first = rois[rois[:, 0] == 0]
    torch.testing.assert_close(
        roi_align_matmul(one, first, (4, 4), 1.0, 2, True), roi_align(one, first, 4, 1.0, 2, True)
    )


def test_layer_runs_the_product_forward_from_the_box_threshold_with_either_backward():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 2, 16, 19, generator=g)
    few, many = (
        _rois(g, num, 2, 16, 19, 1 / 8, dtype=torch.float32)
        for num in (MATMUL_FORWARD_MIN_BOXES - 1, MATMUL_FORWARD_MIN_BOXES)
    )
    for cpu_grad in ("matmul", "torchvision"):
        layer = R2IOSROIAlign((40, 40), 1 / 8, 1, aligned=True, cpu_grad=cpu_grad)
        assert set_cpu_roi_align_forward(_pooler_of(layer), "matmul") is not None
        assert layer.cpu_forward == "matmul" and "cpu_forward=matmul" in repr(layer)
        for rois in (few, many):
            grad_out = torch.randn(len(rois), 2, 40, 40, generator=g)
            ref = roi_align(x, rois, (40, 40), 1 / 8, 1, True)
            ref_grad = _torchvision_grad(x, rois, grad_out, (40, 40), 1 / 8, 1, True)
            xg = x.clone().requires_grad_()
            out = layer(xg, rois)
            (grad,) = torch.autograd.grad(out, xg, grad_out)
            if rois is few:  # torchvision's forward below the threshold
                assert torch.equal(out, ref)
            else:
                assert out.grad_fn.name().endswith("_RoIAlignMatmulBackward")
                torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
            if cpu_grad == "torchvision":  # its own backward on the same boxes
                assert torch.equal(grad, ref_grad)
            else:
                torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
            with torch.no_grad():  # inference: the same forward, no graph
                torch.testing.assert_close(layer(x, rois), out.detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cpu_forward must be one of"):
        R2IOSROIAlign((7, 7), 0.5, 0, cpu_forward="products")


def _pooler_of(layer: R2IOSROIAlign) -> ROIPooler:
    pooler = ROIPooler((40, 40), (1 / 8,), sampling_ratio=1, pooler_type="ROIAlignV2")
    pooler.level_poolers[0] = layer
    return pooler


def test_gradcheck_double_with_the_product_forward(monkeypatch):
    monkeypatch.setattr(roi_align_mod, "MATMUL_FORWARD_MIN_BOXES", 1)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, generator=g, requires_grad=True)
    rois = _rois(g, 6, 2, 6, 7, 1.0, outside=0.1)
    for cpu_grad in ("matmul", "torchvision"):
        layer = R2IOSROIAlign((3, 3), 1.0, 2, aligned=True, cpu_grad=cpu_grad)
        layer.cpu_forward = "matmul"
        assert layer(x, rois).grad_fn.name().endswith("_RoIAlignMatmulBackward")
        assert torch.autograd.gradcheck(lambda t, layer=layer: layer(t, rois), (x,))


def test_no_boxes_images_without_boxes_and_chunks(monkeypatch):
    g = torch.Generator().manual_seed(4)
    grad_none = roi_align_input_grad(
        torch.zeros(0, 3, 7, 7), torch.zeros(0, 5), (2, 3, 8, 9), 1, 0, True
    )
    assert grad_none.shape == (2, 3, 8, 9) and not grad_none.any()
    x = torch.randn(3, 5, 8, 9, dtype=torch.float64, generator=g)
    rois = _rois(g, 30, 2, 8, 9, 1.0)  # image 2 has none
    grad_out = torch.randn(30, 5, 7, 7, dtype=torch.float64, generator=g)
    whole = roi_align_input_grad(grad_out, rois, x.shape, 1.0, 2, True)
    assert not whole[2].any()
    monkeypatch.setattr(roi_align_mod, "_CHUNK_ELEMENTS", 8 * 5 * 7 * 3)  # 3 boxes per chunk
    chunked = roi_align_input_grad(grad_out, rois, x.shape, 1.0, 2, True)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(whole, _torchvision_grad(x, rois, grad_out, (7, 7), 1.0, 2, True))


def test_layer_keeps_the_forward_and_switches_the_backward():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 12, 15, generator=g)
    rois = _rois(g, 16, 2, 12, 15, 0.5, dtype=torch.float32)
    grad_out = torch.randn(16, 4, 7, 7, generator=g)
    ref_out = roi_align(x, rois, (7, 7), 0.5, 0, True)
    ref_grad = _torchvision_grad(x, rois, grad_out, (7, 7), 0.5, 0, True)
    for cpu_grad in ("matmul", "torchvision"):
        layer = R2IOSROIAlign((7, 7), 0.5, 0, aligned=True, cpu_grad=cpu_grad)
        xg = x.clone().requires_grad_()
        out = layer(xg, rois)
        assert torch.equal(out, ref_out)  # torchvision's forward either way
        (grad,) = torch.autograd.grad(out, xg, grad_out)
        if cpu_grad == "torchvision":
            assert torch.equal(grad, ref_grad)
        else:
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
            assert out.grad_fn.name().endswith("_RoIAlignMatmulGradBackward")
        with torch.no_grad():
            assert torch.equal(layer(xg, rois), ref_out)
    assert "cpu_grad=matmul" in repr(R2IOSROIAlign((7, 7), 0.5, 0))
    with pytest.raises(ValueError, match="cpu_grad must be one of"):
        R2IOSROIAlign((7, 7), 0.5, 0, cpu_grad="dense")
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        R2IOSROIAlign((7, 7), 0.5, 0)(x.requires_grad_(), rois[:, 1:])


def test_gradcheck_double():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, generator=g, requires_grad=True)
    rois = _rois(g, 6, 2, 6, 7, 1.0, outside=0.1)
    layer = R2IOSROIAlign((3, 3), 1.0, 2, aligned=True)
    assert torch.autograd.gradcheck(lambda t: layer(t, rois), (x,))


def test_set_cpu_roi_align_grad_on_poolers():
    pooler = ROIPooler((7, 7), (1 / 16, 1 / 32), sampling_ratio=0, pooler_type="ROIAlignV2")
    assert set_cpu_roi_align_grad(pooler, "matmul") is pooler
    for level, scale in zip(pooler.level_poolers, (1 / 16, 1 / 32)):
        assert type(level) is R2IOSROIAlign and level.cpu_grad == "matmul"
        assert (level.spatial_scale, level.sampling_ratio, level.aligned) == (scale, 0, True)
    set_cpu_roi_align_grad(pooler, "torchvision")
    assert {level.cpu_grad for level in pooler.level_poolers} == {"torchvision"}
    legacy = ROIPooler((7, 7), (1 / 16,), sampling_ratio=2, pooler_type="ROIAlign")
    assert not set_cpu_roi_align_grad(legacy, "matmul").level_poolers[0].aligned
    max_pool = ROIPooler((7, 7), (1 / 16,), sampling_ratio=0, pooler_type="ROIPool")
    kept = max_pool.level_poolers[0]
    assert set_cpu_roi_align_grad(max_pool, "matmul").level_poolers[0] is kept
    with pytest.raises(ValueError, match="cpu_grad must be one of"):
        set_cpu_roi_align_grad(pooler, "fast")


def test_set_cpu_roi_align_forward_on_poolers():
    pooler = ROIPooler((40, 40), (1 / 8,), sampling_ratio=1, pooler_type="ROIAlignV2")
    assert set_cpu_roi_align_forward(pooler, "matmul") is pooler
    (level,) = pooler.level_poolers
    # a detectron2 ROIAlign keeps torchvision's backward when only the forward changes
    assert type(level) is R2IOSROIAlign and (level.cpu_forward, level.cpu_grad) == (
        "matmul",
        "torchvision",
    )
    set_cpu_roi_align_grad(pooler, "matmul")
    set_cpu_roi_align_forward(pooler, "torchvision")
    assert (level.cpu_forward, level.cpu_grad) == ("torchvision", "matmul")
    grad_only = set_cpu_roi_align_grad(
        ROIPooler((7, 7), (1 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2"), "matmul"
    )
    assert grad_only.level_poolers[0].cpu_forward == "torchvision"
    max_pool = ROIPooler((7, 7), (1 / 16,), sampling_ratio=0, pooler_type="ROIPool")
    kept = max_pool.level_poolers[0]
    assert set_cpu_roi_align_forward(max_pool, "matmul").level_poolers[0] is kept
    with pytest.raises(ValueError, match="cpu_forward must be one of"):
        set_cpu_roi_align_forward(pooler, "Matmul")


def test_heads_pool_masks_with_the_configured_forward_and_agree(monkeypatch, synthetic_inputs):
    """The mask head's pooler takes CPU_MASK_POOL_FORWARD (the box pooler keeps torchvision's
    forward); training losses and gradients, and inference outputs, agree with torchvision's
    forward to float rounding (every pool on the products: the threshold lowered to 1)."""
    monkeypatch.setattr(roi_align_mod, "MATMUL_FORWARD_MIN_BOXES", 1)
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.1
    assert cfg.MODEL.R2IOS.CPU_MASK_POOL_FORWARD == "matmul"
    grads, outputs, calls = [], [], []
    real = roi_align_mod.roi_align_matmul
    monkeypatch.setattr(
        roi_align_mod, "roi_align_matmul", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    for forward in ("matmul", "torchvision"):
        cfg.MODEL.R2IOS.CPU_MASK_POOL_FORWARD = forward
        torch.manual_seed(0)
        model = build_model(cfg).train()
        heads = model.roi_heads
        assert {p.cpu_forward for p in heads.mask_head.pooler.level_poolers} == {forward}
        assert {p.cpu_forward for p in heads.box_pooler.level_poolers} == {"torchvision"}
        calls.clear()
        torch.manual_seed(5)
        with EventStorage():
            losses = model(synthetic_inputs)
        sum(losses.values()).backward()
        assert bool(calls) == (forward == "matmul")
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        with torch.no_grad():
            outputs.append([o["instances"] for o in model.eval()(synthetic_inputs)])
    a, b = grads
    assert sorted(a) == sorted(b) and "roi_heads.mask_head.score.weight" in a
    for name in b:
        scale = b[name].abs().max().item()
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4 * scale, msg=name)
    assert sum(len(i) for i in outputs[0]) > 0
    for x, y in zip(*outputs):
        assert len(x) == len(y)
        torch.testing.assert_close(x.scores, y.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x.pred_masks, y.pred_masks, rtol=1e-4, atol=1e-5)
    cfg.MODEL.R2IOS.CPU_MASK_POOL_FORWARD = "products"
    with pytest.raises(ValueError, match=r"MODEL\.R2IOS\.CPU_MASK_POOL_FORWARD.*'matmul'"):
        validate_r2ios_config(cfg)
    with pytest.raises(ValueError, match=r"MODEL\.R2IOS\.CPU_MASK_POOL_FORWARD"):
        build_model(cfg)


def test_heads_use_the_configured_backward_and_train_alike(synthetic_inputs):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.1
    assert cfg.MODEL.R2IOS.CPU_ROI_ALIGN_GRAD == "matmul"
    results = []
    for cpu_grad in ("matmul", "torchvision"):
        cfg.MODEL.R2IOS.CPU_ROI_ALIGN_GRAD = cpu_grad
        torch.manual_seed(0)
        model = build_model(cfg).train()
        heads = model.roi_heads
        for pooler in (heads.box_pooler, heads.mask_head.pooler):
            assert {type(p) for p in pooler.level_poolers} == {R2IOSROIAlign}
            assert {p.cpu_grad for p in pooler.level_poolers} == {cpu_grad}
        torch.manual_seed(5)  # the same RoI sampling
        with EventStorage():
            losses = model(synthetic_inputs)
        sum(losses.values()).backward()
        results.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    a, b = results
    # the gradients reaching the backbone pass through both poolers' backward
    assert sorted(a) == sorted(b) and "roi_heads.mask_head.score.weight" in a
    assert any(n.startswith("backbone.") for n in a)
    for name in b:
        scale = b[name].abs().max().item()
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4 * scale, msg=name)
    # the stock heads keep detectron2's own RoIAlign
    stock = tiny_r2ios_cfg()
    stock.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    stock.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    levels = build_model(stock).roi_heads.box_pooler.level_poolers
    assert {type(p) for p in levels} == {ROIAlign}
    cfg.MODEL.R2IOS.CPU_ROI_ALIGN_GRAD = "Matmul"
    with pytest.raises(ValueError, match=r"MODEL\.R2IOS\.CPU_ROI_ALIGN_GRAD.*'matmul'"):
        validate_r2ios_config(cfg)
    with pytest.raises(ValueError, match=r"MODEL\.R2IOS\.CPU_ROI_ALIGN_GRAD"):
        build_model(cfg)


def test_pool_boxes_rows_equal_per_image_boxes():
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(3, 4, 10, 12, generator=g)]
    rois = _rois(g, 12, 3, 10, 12, 0.5, outside=0.1, dtype=torch.float32)
    rois = rois[torch.argsort(rois[:, 0], stable=True)]  # image order
    per_image = [Boxes(rois[rois[:, 0] == i, 1:]) for i in range(3)]
    one = ROIPooler((5, 5), (0.5,), sampling_ratio=2, pooler_type="ROIAlignV2")
    assert torch.equal(pool_boxes(one, feats, rois), one(feats, per_image))
    assert torch.equal(pool_boxes(one, feats, per_image), one(feats, per_image))
    two = ROIPooler((5, 5), (0.5, 0.25), sampling_ratio=2, pooler_type="ROIAlignV2")
    feats2 = feats + [torch.randn(3, 4, 5, 6, generator=g)]
    assert torch.equal(pool_boxes(two, feats2, rois), two(feats2, per_image))


def test_inference_on_rows_equals_the_per_image_boxes_route(monkeypatch, synthetic_inputs):
    """The recursion pools its (R, 5) rows directly; the route through per-image ``Boxes``
    and ``ROIPooler`` gives the same outputs, bit for bit."""
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.1
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    calls = []

    def through_boxes(pooler, features, boxes):
        if isinstance(boxes, torch.Tensor):
            calls.append(len(boxes))
            counts = torch.bincount(boxes[:, 0].long(), minlength=features[0].shape[0])
            boxes = [Boxes(b) for b in boxes[:, 1:].split(counts.tolist())]
        return pooler(features, boxes)

    outputs = []
    for route in ("rows", "boxes"):
        if route == "boxes":
            monkeypatch.setattr(roi_heads_mod, "pool_boxes", through_boxes)
            monkeypatch.setattr(mask_head_mod, "pool_boxes", through_boxes)
        with torch.no_grad():
            outputs.append([o["instances"] for o in model(synthetic_inputs)])
    assert calls and sum(len(i) for i in outputs[0]) > 0
    for a, b in zip(*outputs):
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.pred_masks, b.pred_masks)


def test_mask_head_takes_rows_or_boxes_with_and_without_grad_rows():
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.1
    torch.manual_seed(0)
    head = build_model(cfg).roi_heads.mask_head
    g = torch.Generator().manual_seed(8)
    scored = [torch.randn(2, 2, 12, 14, generator=g, requires_grad=True)]
    stride = 1.0 / head.pooler.level_poolers[0].spatial_scale
    rois = _rois(g, 9, 2, 12, 14, 1.0 / stride, outside=0.1, dtype=torch.float32)
    rois = rois[torch.argsort(rois[:, 0], stable=True)]
    rois[:, 3:] = torch.maximum(rois[:, 3:], rois[:, 1:3] + 4)  # no empty boxes
    per_image = [Boxes(rois[rois[:, 0] == i, 1:]) for i in range(2)]
    grad_rows = torch.arange(9) % 3 == 0
    results = []
    for boxes in (rois, per_image):
        for rows in (None, grad_rows):
            maps: list = []
            d = head.foreground_logits(scored, boxes, maps, grad_rows=rows)
            (grad,) = torch.autograd.grad(d.sum(), scored[0])
            results.append((d.detach(), maps[0].detach(), grad))
    for d, c, _ in results[1:]:
        torch.testing.assert_close(d, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(c, results[0][1], rtol=0, atol=0)
    # with grad_rows, only those rows send gradients (rows and boxes alike)
    assert torch.equal(results[1][2], results[3][2]) and torch.equal(results[0][2], results[2][2])
    assert not torch.equal(results[1][2], results[0][2])
