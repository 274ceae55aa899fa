"""Degenerate inputs run through R2IOSROIHeads training and inference without errors, NaNs or
boxes outside the image: empty images, zero proposals, one-pixel boxes, boxes refined off
the image, all-background batches. (Zero proposals at the heads level alone:
test_modeling.py::test_inference_without_proposals_returns_empty_instances.)"""

import pytest
import torch
from conftest import make_synthetic_inputs, tiny_r2ios_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

SIZE = 64


@pytest.fixture(scope="module")
def model():
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.R2IOS.MASK_SIZE = 20
    torch.manual_seed(0)
    m = build_model(cfg)
    # Spread the class scores so that inference has foreground predictions that move.
    torch.nn.init.normal_(m.roi_heads.box_predictor.cls_score.weight, std=0.3)
    with torch.no_grad():
        m.roi_heads.box_predictor.cls_score.bias[-1] = -3.0
    return m


def _proposals(boxes):
    p = Instances((SIZE, SIZE))
    p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    p.objectness_logits = torch.zeros(len(p.proposal_boxes))
    return p


def _gt(boxes, classes):
    gt = Instances((SIZE, SIZE))
    masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[int(y0) : int(y1), int(x0) : int(x1)] = True
    gt.gt_masks = BitMasks(masks)
    gt.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    gt.gt_classes = torch.tensor(classes, dtype=torch.long)
    return gt


def _image(proposals, gt):
    img = make_synthetic_inputs(1, SIZE, seed=5)[0]["image"]
    return {"image": img, "height": SIZE, "width": SIZE, "proposals": proposals, "instances": gt}


def _train_and_infer(model, inputs, append_gt=True):
    heads = model.roi_heads
    old = heads.proposal_append_gt
    heads.proposal_append_gt = append_gt
    try:
        model.train()
        model.zero_grad()
        with EventStorage():
            losses = model(inputs)
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_mask_conf"}
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        model.eval()
        with torch.no_grad():
            outputs = model(inputs)
    finally:
        heads.proposal_append_gt = old
        model.zero_grad()
    for out in outputs:
        inst = out["instances"]
        b = inst.pred_boxes.tensor
        assert torch.isfinite(b).all() and torch.isfinite(inst.scores).all()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= SIZE).all() and (b[:, 3] <= SIZE).all()
        assert inst.pred_masks.shape[1:] == (SIZE, SIZE)
    return losses, outputs


def test_image_without_ground_truth(model):
    props = _proposals([[4, 4, 30, 30], [20, 10, 60, 50]])
    empty = _image(props, _gt([], []))
    normal = make_synthetic_inputs(1, SIZE, seed=1)[0]
    losses, _ = _train_and_infer(model, [empty, normal])
    losses, _ = _train_and_infer(model, [empty])  # a whole batch without ground truth
    assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0


def test_image_with_zero_proposals(model):
    none = _image(_proposals([]), _gt([[10, 10, 40, 40]], [1]))
    normal = make_synthetic_inputs(1, SIZE, seed=1)[0]
    _, outputs = _train_and_infer(model, [none, normal], append_gt=False)
    assert len(outputs[0]["instances"]) == 0
    _train_and_infer(model, [none], append_gt=False)


def test_one_pixel_boxes(model):
    props = _proposals([[10, 10, 11, 11], [30, 30, 31, 40], [0, 0, 1, 1], [10, 10, 40, 40]])
    gt = _gt([[10, 10, 11, 11], [20, 20, 50, 50]], [0, 2])
    _train_and_infer(model, [_image(props, gt)])


def test_boxes_refined_off_the_image(model):
    pred = model.roi_heads.box_predictor
    saved = pred.bbox_pred.bias.detach().clone()
    with torch.no_grad():  # every class moves its box ~e^4 box sizes right and down
        pred.bbox_pred.bias.view(-1, 4)[:] = torch.tensor([40.0, 40.0, 4.0, 4.0])
    try:
        props = _proposals([[40, 40, 62, 62], [2, 2, 20, 20], [30, 5, 60, 30]])
        gt = _gt([[42, 42, 63, 63]], [1])
        _, outputs = _train_and_infer(model, [_image(props, gt)])
        assert len(outputs[0]["instances"]) > 0
    finally:
        with torch.no_grad():
            pred.bbox_pred.bias.copy_(saved)


def test_all_background_batch(model):
    props = [_proposals([[0, 0, 8, 8], [50, 50, 63, 63], [0, 50, 10, 63]]) for _ in range(2)]
    gts = [_gt([[20, 20, 44, 44]], [0]), _gt([[24, 18, 40, 46]], [2])]
    inputs = [_image(p, g) for p, g in zip(props, gts)]
    losses, _ = _train_and_infer(model, inputs, append_gt=False)
    assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0 and losses["loss_cls"] > 0
