"""R2IOSRCNN: GeneralizedRCNN whose pasted masks are binarised at MODEL.R2IOS.MASK_THRESHOLD."""

import copy

import pytest
import torch
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.postprocessing import detector_postprocess

from projects_tests.conftest import make_synthetic_inputs, tiny_r2ios_cfg
from r2ios_d2.modeling import R2IOSRCNN


def _models(threshold: float):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    stock = build_model(cfg).eval()
    cfg.MODEL.META_ARCHITECTURE = "R2IOSRCNN"
    cfg.MODEL.R2IOS.MASK_THRESHOLD = threshold
    ours = build_model(cfg).eval()
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def _inputs():
    inputs = make_synthetic_inputs(num_images=2, size=64)
    for x in inputs:  # detections mapped to another size than the network input's
        x["height"], x["width"] = 80, 96
    return inputs


@torch.no_grad()
def test_at_one_half_outputs_equal_generalized_rcnn():
    stock, ours = _models(0.5)
    assert type(ours) is R2IOSRCNN and type(stock) is GeneralizedRCNN
    assert ours.mask_threshold == 0.5
    inputs = _inputs()
    for a, b in zip(stock(inputs), ours(inputs)):
        a, b = a["instances"], b["instances"]
        assert a.image_size == b.image_size == (80, 96)
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_masks, b.pred_masks)


@torch.no_grad()
def test_threshold_binarises_the_pasted_probabilities():
    inputs = _inputs()
    _, ref = _models(0.5)
    out = {}
    for thr in (0.3, 0.5, 0.7):
        _, model = _models(thr)
        out[thr] = [r["instances"].pred_masks for r in model(inputs)]
    for i, raw in enumerate(ref.inference(inputs, do_postprocess=False)):
        probs = raw.pred_masks
        # Fresh AE heads predict ~0.5 inside the box, less where re-framing reaches its edge.
        assert probs.max() < 0.7 and ((probs >= 0.3) & (probs < 0.5)).any()
        for thr, masks in out.items():
            expected = detector_postprocess(copy.deepcopy(raw), 80, 96, mask_threshold=thr)
            assert masks[i].dtype == torch.bool
            assert torch.equal(masks[i], expected.pred_masks)
        assert not out[0.7][i].any() and out[0.5][i].any()
        assert (out[0.5][i] <= out[0.3][i]).all() and out[0.3][i].sum() > out[0.5][i].sum()


def test_threshold_comes_from_the_config_or_the_roi_heads():
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.META_ARCHITECTURE = "R2IOSRCNN"
    cfg.MODEL.R2IOS.MASK_THRESHOLD = 0.35
    model = build_model(cfg)
    assert model.mask_threshold == 0.35 and model.roi_heads.mask_threshold == 0.35
    kwargs = R2IOSRCNN.from_config(cfg)
    kwargs.pop("mask_threshold")
    assert R2IOSRCNN(**kwargs).mask_threshold == 0.35  # None: the ROI heads' threshold
    with pytest.raises(ValueError, match=r"mask_threshold must be in \(0, 1\), got 1.5"):
        R2IOSRCNN(mask_threshold=1.5, **kwargs)
