"""R2-IOS ROI heads: the recursive refinement loop, the reversible gate, losses and inference.

One iteration t takes the boxes ``l_{t-1}`` and runs both sub-networks with shared weights:
the mask head gives ``v_t`` (2 x M x M), the box head + seg-aware predictor give ``p_t`` (K+1
class logits) and ``o_t`` (class-specific deltas). Training matches and samples the proposals
once, moves foreground proposals by ``o_{t,g}`` of their GT class and recomputes the box and
mask targets against ``l_{t-1}`` each iteration. Inference moves each proposal by the deltas
of its predicted class and reverses to the iteration ``t'`` with the best gate score.

Class indices follow detectron2: foreground classes are ``[0, K)``, background is ``K`` (the
paper's ``g = 0``).
"""

import logging
import math
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import ROI_HEADS_REGISTRY, ROI_MASK_HEAD_REGISTRY, build_mask_head
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from ..config_checks import validate_r2ios_config
from .box_head import SegAwareFastRCNNOutputLayers
from .mask_head import InstanceAwareAEMaskHead

__all__ = ["R2IOSROIHeads", "reframe_masks", "scale_trace_boxes"]

logger = logging.getLogger(__name__)

# Refined boxes with a side below this many pixels are rejected (the box stays where it was).
_MIN_BOX_SIDE = 1.0
# Mask-IoU NMS compares masks pasted on a grid whose longer side is at most this many pixels
# (the masks themselves are only MASK_SIZE wide, so a finer grid adds little).
_MASK_NMS_MAX_SIDE = 320


def reframe_masks(masks: torch.Tensor, src_boxes: torch.Tensor, dst_boxes: torch.Tensor):
    """Resample box-relative masks from the frame of ``src_boxes`` into that of ``dst_boxes``.

    Pixel (i, j) of an M x M mask covers the cell ``[j, j+1) x [i, i+1)`` of the box divided
    into M x M cells, as in detectron2's ``paste_masks_in_image``. Values are sampled
    bilinearly at the destination cell centres; outside the source box they are 0.

    Args:
        masks: (N, M, M) masks (e.g. probabilities) in the frame of ``src_boxes``.
        src_boxes: (N, 4) XYXY boxes the masks were predicted in.
        dst_boxes: (N, 4) XYXY boxes to express them in.

    Returns:
        (N, M, M) masks in the frame of ``dst_boxes``.
    """
    n, m = masks.shape[0], masks.shape[-1]
    if n == 0:
        return masks.clone()
    src = src_boxes.to(masks.dtype)
    dst = dst_boxes.to(masks.dtype)
    centres = (torch.arange(m, device=masks.device, dtype=masks.dtype) + 0.5) / m  # (M,)
    grids = []
    for lo, hi in ((0, 2), (1, 3)):  # x, then y
        pos = dst[:, lo, None] + centres[None] * (dst[:, hi] - dst[:, lo])[:, None]  # (N, M)
        # Degenerate source boxes would divide by zero; such masks sample (almost) nothing.
        size = (src[:, hi] - src[:, lo]).clamp(min=1e-6)[:, None]
        grids.append((pos - src[:, lo, None]) / size * 2.0 - 1.0)
    gx, gy = grids
    grid = torch.stack([gx[:, None, :].expand(n, m, m), gy[:, :, None].expand(n, m, m)], dim=-1)
    out = F.grid_sample(
        masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[:, 0]


def scale_trace_boxes(
    trace_boxes: torch.Tensor, from_size: Tuple[int, int], to_size: Tuple[int, int]
) -> torch.Tensor:
    """Map ``trace_boxes`` from the network-input image to another resolution.

    ``detector_postprocess`` rescales ``pred_boxes`` to the original image but leaves extra
    fields alone, so ``trace_boxes`` stay in the frame of the (resized) network input.

    Args:
        trace_boxes: (N, T, 4) XYXY boxes in an image of size ``from_size`` (H, W).
        from_size: (H, W) of the network input image (``images.image_sizes[i]``).
        to_size: (H, W) to map to (e.g. the dataset dict's ``height``, ``width``).

    Returns:
        (N, T, 4) boxes in the ``to_size`` frame.
    """
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return trace_boxes * trace_boxes.new_tensor([sx, sy, sx, sy])


def _clip(boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
    """Clip (R, 4) XYXY boxes to per-row image sizes ``hw`` (R, 2) = (H, W)."""
    h, w = hw[:, 0].to(boxes.dtype), hw[:, 1].to(boxes.dtype)
    zero = torch.zeros_like(w)
    return torch.stack(
        [
            torch.minimum(torch.maximum(boxes[:, 0], zero), w),
            torch.minimum(torch.maximum(boxes[:, 1], zero), h),
            torch.minimum(torch.maximum(boxes[:, 2], zero), w),
            torch.minimum(torch.maximum(boxes[:, 3], zero), h),
        ],
        dim=1,
    )


def _split_by_image(boxes: torch.Tensor, image_idx: torch.Tensor, num_images: int) -> List[Boxes]:
    """Per-image ``Boxes`` of image-ordered rows (``image_idx`` non-decreasing)."""
    counts = torch.bincount(image_idx, minlength=num_images).tolist()
    return [Boxes(b) for b in boxes.split(counts)]


def _put_scalar(name: str, value: float) -> None:
    # Training runs inside an EventStorage; plain forward passes (tests, scripts) may not.
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalar(name, value)


@ROI_HEADS_REGISTRY.register()
class R2IOSROIHeads(StandardROIHeads):
    """Recursive instance-level segmentation and proposal refinement (Sec. 3 of the paper).

    Works on the two-branch VGG (box features ``"det"``, mask features ``"seg"``) and on any
    other backbone, e.g. ResNet-FPN (``ROI_HEADS.IN_FEATURES`` / ``R2IOS.MASK_IN_FEATURES``).

    Inference returns ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes`` and
    ``pred_masks`` (N, 1, M, M foreground probabilities in the frame of ``pred_boxes``); with
    ``record_trace`` also ``trace_boxes`` (N, T, 4; frame of the network input image, see
    :func:`scale_trace_boxes`), ``trace_scores`` (N, T; gate scores), ``trace_classes``
    (N, T; predicted class, K = background), ``trace_masks`` (N, T, M, M; foreground
    probabilities in the frame of the box each was predicted in, ``l_{t-1}``),
    ``trace_proposals`` (N, 4; ``l_0``, same frame as ``trace_boxes``) and
    ``gate_iteration`` (N,; 0-based ``t' - 1``).
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: nn.Module,
        box_head: nn.Module,
        box_predictor: SegAwareFastRCNNOutputLayers,
        mask_head: InstanceAwareAEMaskHead,
        num_iterations: int = 4,
        test_num_iterations: int = 4,
        gate: bool = False,
        gate_score: str = "all",
        test_gate: bool = True,
        mask_from_output_box: bool = False,
        skip_background: bool = True,
        output_mode: str = "proposal",
        nms_type: str = "box",
        reframe_mask: bool = True,
        record_trace: bool = False,
        mask_threshold: float = 0.5,
        mask_loss_weight: float = 1.0,
        mask_loss_normalizer: str = "fg",
        conf_loss_weight: float = 1.0,
        grad_probe_period: int = 0,
        **kwargs,
    ):
        """
        Args:
            box_in_features, box_pooler, box_head: as in :class:`StandardROIHeads`.
            box_predictor: the seg-aware predictor (cls + class-specific deltas).
            mask_head: the mask head; it scores and pools its own ``in_features``.
            num_iterations: T in training (1 = recursive only in testing).
            test_num_iterations: T at test time.
            gate: use the reversible gate in training (stage 2).
            gate_score: ``"all"`` (max over K+1 classes) or ``"foreground"`` (max over K).
            test_gate: reverse to the iteration with the best gate score at test time (the
                paper's R2-IOS); False keeps each proposal's last iteration (the paper's
                "recursive_k" rows of Table 2, which are "obtained without using the
                reversible gates").
            mask_from_output_box: at test time, predict each output's mask once more inside
                its output box ``l_{t'}`` (one mask-head pass over the final detections)
                instead of re-framing ``v_{t'}``, which was predicted inside ``l_{t'-1}``
                and is empty wherever the refinement grew the box.
            skip_background: at test time, drop a proposal from later iterations once it is
                predicted background (its box stops, so later iterations are exact copies).
            output_mode: ``"proposal"`` (one detection per proposal) or ``"per_class"``.
            nms_type: ``"box"`` or ``"mask"`` IoU for the class-wise NMS.
            reframe_mask: resample ``v_{t'}`` from ``l_{t'-1}`` into the output box.
            record_trace: add the per-iteration trace fields to the outputs.
            mask_threshold: binarisation threshold of masks for mask-IoU NMS.
            mask_loss_weight: weight of ``loss_mask``.
            mask_loss_normalizer: ``"fg"`` (sampled foreground RoIs) or ``"rois"`` (all
                sampled RoIs), per iteration.
            conf_loss_weight: weight of ``loss_mask_conf``, the same pixel-wise
                cross-entropy on the pooled confidence maps ``C`` (the AE's input); 0 = off
                (the paper). Without it the mask loss reaches ``C`` only through the randomly
                initialised autoencoder, and ``C`` gets no spatially meaningful signal.
            grad_probe_period: every this many iterations, log the gradient norm that each
                loss term sends into the scored segmentation map and into ``v``
                (``r2ios/grad_seg/<loss>``, ``r2ios/grad_v/<loss>``); 0 = off.
            kwargs: the :class:`ROIHeads` arguments (num_classes, sampling, matcher).
        """
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=box_head,
            box_predictor=box_predictor,
            mask_in_features=mask_head.in_features,
            mask_pooler=None,  # the mask head pools from its scored maps itself
            mask_head=mask_head,
            **kwargs,
        )
        checks = {
            "gate_score": (gate_score, ("all", "foreground")),
            "output_mode": (output_mode, ("proposal", "per_class")),
            "nms_type": (nms_type, ("box", "mask")),
            "mask_loss_normalizer": (mask_loss_normalizer, ("fg", "rois")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
        if num_iterations < 1 or test_num_iterations < 1:
            raise ValueError("The number of iterations must be at least 1")
        self.num_iterations = num_iterations
        self.test_num_iterations = test_num_iterations
        self.gate = gate
        self.gate_score = gate_score
        self.test_gate = test_gate
        self.mask_from_output_box = mask_from_output_box
        self.skip_background = skip_background
        self.output_mode = output_mode
        self.nms_type = nms_type
        self.reframe_mask = reframe_mask
        self.record_trace = record_trace
        self.mask_threshold = mask_threshold
        self.mask_loss_weight = mask_loss_weight
        self.mask_loss_normalizer = mask_loss_normalizer
        if conf_loss_weight < 0 or grad_probe_period < 0:
            raise ValueError("conf_loss_weight and grad_probe_period must be >= 0")
        self.conf_loss_weight = conf_loss_weight
        self.grad_probe_period = grad_probe_period

    # ------------------------------------------------------------------------------- build
    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("R2IOSROIHeads has no keypoint head; set MODEL.KEYPOINT_ON=False")
        # Also for models built without train_net (build_model, the predictor, notebooks).
        validate_r2ios_config(cfg)
        ret = super().from_config(cfg, input_shape)
        r = cfg.MODEL.R2IOS
        ret.update(
            num_iterations=r.NUM_ITERATIONS,
            test_num_iterations=r.TEST_NUM_ITERATIONS,
            gate=r.GATE,
            gate_score=r.GATE_SCORE,
            test_gate=r.TEST_GATE,
            mask_from_output_box=r.TEST_MASK_FROM_OUTPUT_BOX,
            skip_background=r.SKIP_BACKGROUND,
            output_mode=r.OUTPUT_MODE,
            nms_type=r.NMS_TYPE,
            reframe_mask=r.REFRAME_MASK,
            record_trace=r.TEST_RECORD_TRACE,
            mask_threshold=r.MASK_THRESHOLD,
            mask_loss_weight=r.MASK_LOSS_WEIGHT,
            mask_loss_normalizer=r.MASK_LOSS_NORMALIZER,
            conf_loss_weight=r.CONF_LOSS_WEIGHT,
            grad_probe_period=r.GRAD_PROBE_PERIOD,
        )
        return ret

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        ret = super()._init_box_head(cfg, input_shape)
        # Same pooler and FastRCNNConvFCHead (fc1/fc2 = VGG fc6/fc7); only the predictor differs.
        ret["box_predictor"] = SegAwareFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        if not cfg.MODEL.MASK_ON:
            # v feeds the seg-aware features and the outputs: R2-IOS always segments.
            raise ValueError("R2IOSROIHeads needs MODEL.MASK_ON=True (ground-truth masks)")
        name = cfg.MODEL.ROI_MASK_HEAD.NAME
        if issubclass(ROI_MASK_HEAD_REGISTRY.get(name), InstanceAwareAEMaskHead):
            head = build_mask_head(cfg, input_shape)
        else:
            # e.g. a Mask R-CNN config that only switched ROI_HEADS.NAME.
            logger.info("ROI_MASK_HEAD.NAME=%s ignored: R2IOSROIHeads uses its own head", name)
            head = InstanceAwareAEMaskHead(cfg, input_shape)
        return {"mask_head": head}

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """See :meth:`detectron2.modeling.ROIHeads.forward`.

        Returns:
            training: (sampled proposals, dict with ``loss_cls``, ``loss_box_reg``,
            ``loss_mask``); inference: (one ``Instances`` per image, {}).
        """
        del images
        if self.training:
            assert targets, "'targets' argument is required during training"
            proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self.forward_train(features, proposals)
        return self.forward_inference(features, proposals), {}

    def _predict(
        self,
        box_features: List[torch.Tensor],
        scored: List[torch.Tensor],
        boxes: List[Boxes],
        confidence_maps: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One iteration of both sub-networks on the given boxes.

        Args:
            confidence_maps: if a list, the pooled confidence maps ``C`` (R, 2, M, M) are
                appended to it.

        Returns:
            class logits (R, K+1), deltas (R, 4K or 4), mask logits v (R, 2, M, M).
        """
        x = self.box_head(self.box_pooler(box_features, boxes))
        v = self.mask_head(scored, boxes, confidence_maps)
        logits, deltas = self.box_predictor(x, v)
        return logits, deltas, v

    def _decode(self, deltas: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor):
        """Apply the deltas of the given classes (R,) in [0, K) to boxes (R, 4)."""
        if deltas.shape[1] > 4:  # class-specific regression
            deltas = deltas.view(len(deltas), deltas.shape[1] // 4, 4)
            deltas = deltas[torch.arange(len(deltas)), classes]
        return self.box_predictor.box2box_transform.apply_deltas(deltas, boxes)

    def _refine(
        self, deltas: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, hw: torch.Tensor
    ) -> torch.Tensor:
        """``l_t = decode(l_{t-1}, o_{t,c})`` clipped to the image; a box that would collapse
        (a side under ``_MIN_BOX_SIDE`` px, e.g. moved off the image by a wild early
        prediction) keeps ``l_{t-1}``, as its targets and pooling would be undefined.

        Args:
            deltas: (R, 4K or 4) predicted deltas; boxes: (R, 4) ``l_{t-1}``;
            classes: (R,) in [0, K); hw: (R, 2) image (H, W) of each row.

        Returns:
            (R, 4) ``l_t``.
        """
        new = _clip(self._decode(deltas, boxes, classes), hw)
        ok = ((new[:, 2:] - new[:, :2]) >= _MIN_BOX_SIDE).all(dim=1, keepdim=True)
        return torch.where(ok, new, boxes)

    @staticmethod
    def _flatten(proposals: List[Instances], field: str):
        """Concatenated boxes, per-row image index and per-row (H, W) of image-ordered rows."""
        boxes = cat([getattr(p, field).tensor for p in proposals], dim=0)
        device = boxes.device
        image_idx = torch.cat(
            [
                torch.full((len(p),), i, dtype=torch.long, device=device)
                for i, p in enumerate(proposals)
            ]
        )
        sizes = torch.tensor([p.image_size for p in proposals], device=device).view(-1, 2)
        return boxes, image_idx, sizes[image_idx]

    # ---------------------------------------------------------------------------- training
    def forward_train(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """Losses of the T-iteration recursion on already sampled proposals.

        Args:
            features: backbone outputs, each (N, C, H_l, W_l).
            proposals: per image, the sampled proposals with ``proposal_boxes``,
                ``gt_classes`` and, where the image has ground truth, ``gt_boxes`` and
                ``gt_masks`` (output of :meth:`label_and_sample_proposals`).

        Returns:
            ``loss_cls``, ``loss_box_reg``, ``loss_mask``: sums over the iterations, each
            iteration normalised like one Fast R-CNN step (by the number of sampled RoIs;
            the mask loss by ``mask_loss_normalizer``).
        """
        num_images, K, T = len(proposals), self.num_classes, self.num_iterations
        box_features = [features[f] for f in self.box_in_features]
        scored = self.mask_head.score_maps(features)
        boxes, image_idx, hw = self._flatten(proposals, "proposal_boxes")
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals]
        )
        num_rois = max(len(boxes), 1)
        fg_idx = torch.nonzero((gt_classes >= 0) & (gt_classes < K)).squeeze(1)
        bg_rows = gt_classes == K  # ignored (-1) rows count nowhere
        fg_cls, fg_gt_boxes, fg_image = gt_classes[fg_idx], gt_boxes[fg_idx], image_idx[fg_idx]
        fg_per_image = torch.bincount(fg_image, minlength=num_images).tolist()
        fg_masks = []  # per image: the matched GT instance of each foreground proposal
        for p, n in zip(proposals, fg_per_image):
            local = torch.nonzero((p.gt_classes >= 0) & (p.gt_classes < K)).squeeze(1)
            fg_masks.append(p.gt_masks[local] if n > 0 else None)

        # Iteration 1 runs every sampled proposal; background ones never move, so their later
        # iterations would repeat it exactly: they are computed once and weighted (DESIGN 2.4).
        conf: Optional[List[torch.Tensor]] = [] if self.conf_loss_weight > 0 else None
        logits, deltas, v = self._predict(
            box_features, scored, _split_by_image(boxes, image_idx, num_images), conf
        )
        v_first = v  # all sampled rows; background rows reach the losses only here
        bg_ce = F.cross_entropy(logits[bg_rows], gt_classes[bg_rows], reduction="sum")
        _put_scalar(
            "r2ios/cls_accuracy_t1",
            (logits.argmax(1) == gt_classes).float().mean().item() if len(logits) else 0.0,
        )
        # per iteration, the foreground rows: (in_boxes, logits, deltas, v, C or None)
        iters = []
        cur = boxes[fg_idx]
        iters.append(
            (cur, logits[fg_idx], deltas[fg_idx], v[fg_idx], conf[-1][fg_idx] if conf else None)
        )
        for _ in range(1, T):
            if len(fg_idx) == 0:
                break
            with torch.no_grad():  # l_t is detached between iterations
                cur = self._refine(iters[-1][2], cur, fg_cls, hw[fg_idx])
            logits, deltas, v = self._predict(
                box_features, scored, _split_by_image(cur, fg_image, num_images), conf
            )
            iters.append((cur, logits, deltas, v, conf[-1] if conf else None))

        # Reversible gate: t' = argmax_t p_{t,g} (first on ties); iterations after t' drop out.
        num_fg = len(fg_idx)
        if self.gate and num_fg > 0 and len(iters) > 1:
            with torch.no_grad():
                p_gt = torch.stack(
                    [F.softmax(it[1], dim=1)[torch.arange(num_fg), fg_cls] for it in iters]
                )
                t_prime = p_gt.argmax(dim=0)  # (F,), 0-based, first maximum
        else:
            t_prime = torch.full((num_fg,), len(iters) - 1, dtype=torch.long, device=boxes.device)
        for t in range(T if num_fg else 0):  # histogram of t' over the foreground proposals
            _put_scalar(f"r2ios/gate_frac_t{t + 1}", (t_prime == t).float().mean().item())

        loss_weight = self.box_predictor.loss_weight
        mask_norm = max(num_fg, 1) if self.mask_loss_normalizer == "fg" else num_rois
        totals = {"loss_cls": 0.0, "loss_box_reg": 0.0, "loss_mask": 0.0}
        if conf is not None:
            totals["loss_mask_conf"] = 0.0
        for t, (in_boxes, logits_t, deltas_t, v_t, c_t) in enumerate(iters):
            counted = t_prime >= t
            ce = F.cross_entropy(logits_t, fg_cls, reduction="none") if num_fg else logits_t[:, 0]
            loss_cls = (ce * counted).sum()
            if t == 0 or not self.gate:  # background rows count in every iteration without gate
                loss_cls = loss_cls + bg_ce
            # detectron2's box loss on the foreground rows, with uncounted rows relabelled as
            # background (no box loss) and its 1/num_fg normalisation turned into 1/num_rois.
            loss_box = self.box_predictor.box_reg_loss(
                in_boxes, fg_gt_boxes, deltas_t, torch.where(counted, fg_cls, K)
            ) * (num_fg / num_rois)
            targets = [
                m.crop_and_resize(b, self.mask_head.mask_size)
                for m, b in zip(fg_masks, in_boxes.split(fg_per_image))
                if m is not None
            ]
            mask_targets = cat(targets).to(v_t.device) if num_fg else None
            step = {
                "loss_cls": loss_cls / num_rois * loss_weight.get("loss_cls", 1.0),
                "loss_box_reg": loss_box * loss_weight.get("loss_box_reg", 1.0),
                "loss_mask": self._mask_loss(v_t, mask_targets, counted, mask_norm)
                * self.mask_loss_weight,
            }
            if c_t is not None:
                step["loss_mask_conf"] = (
                    self._mask_loss(c_t, mask_targets, counted, mask_norm) * self.conf_loss_weight
                )
            for k, value in step.items():
                totals[k] = totals[k] + value
                _put_scalar(f"r2ios/{k}_t{t + 1}", value.item())
            _put_scalar(
                f"r2ios/frac_counted_t{t + 1}",
                (counted.sum().item() + (bg_rows.sum().item() if t == 0 or not self.gate else 0))
                / num_rois,
            )
        _put_scalar("r2ios/frac_moving", num_fg / num_rois)
        self._probe_gradients(totals, scored, [v_first] + [it[3] for it in iters[1:]])
        return totals

    def _mask_loss(
        self,
        logits: torch.Tensor,
        targets: Optional[torch.Tensor],
        counted: torch.Tensor,
        norm: float,
    ) -> torch.Tensor:
        """Pixel-wise cross-entropy of (F, 2, M, M) mask logits against (F, M, M) targets,
        summed over the ``counted`` rows and divided by ``norm``."""
        if targets is None:  # keep the graph connected so every parameter gets a (zero) grad
            return logits.sum() * 0.0
        return (self.mask_head.per_roi_loss(logits, targets) * counted).sum() / norm

    def _probe_gradients(
        self,
        losses: Dict[str, torch.Tensor],
        scored: List[torch.Tensor],
        mask_logits: List[torch.Tensor],
    ) -> None:
        """Log the norm of the gradient that each loss term sends into the segmentation branch
        (the scored stride-8 map, i.e. what the seg branch and the scoring conv receive) and
        into ``v`` (all iterations), every ``grad_probe_period`` iterations.

        This is the measurement that shows whether the mask head learns from the mask loss or
        is driven by the classification loss through the seg-aware feature.
        """
        if self.grad_probe_period <= 0 or not torch.is_grad_enabled():
            return
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        if (storage.iter + 1) % self.grad_probe_period != 0:  # the rows metrics.json writes
            return
        seg = [x for x in scored if x.requires_grad]
        inputs = seg + list(mask_logits)
        for name, loss in losses.items():
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
            for where, part in (("seg", grads[: len(seg)]), ("v", grads[len(seg) :])):
                if part:
                    sq = sum(float(g.pow(2).sum()) for g in part if g is not None)
                    storage.put_scalar(f"r2ios/grad_{where}/{name}", math.sqrt(sq))

    # --------------------------------------------------------------------------- inference
    @torch.no_grad()
    def forward_inference(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> List[Instances]:
        """Recursive refinement of every proposal, the reversible gate and post-processing.

        Args:
            features: backbone outputs, each (N, C, H_l, W_l).
            proposals: per image, ``proposal_boxes`` (R_i) in network-input coordinates.

        Returns:
            one ``Instances`` per image (fields: see the class docstring).
        """
        num_images, K, T = len(proposals), self.num_classes, self.test_num_iterations
        box_features = [features[f] for f in self.box_in_features]
        scored = self.mask_head.score_maps(features)
        boxes, image_idx, hw = self._flatten(proposals, "proposal_boxes")
        R, M, device = len(boxes), self.mask_head.mask_size, boxes.device
        per_class = self.output_mode == "per_class"

        cur = boxes.clone()  # l_{t-1} of every proposal
        best = {
            "gate": torch.full((R,), -math.inf, device=device),
            "t": torch.zeros(R, dtype=torch.long, device=device),
            "cls": torch.full((R,), K, dtype=torch.long, device=device),
            "score": torch.zeros(R, device=device),
            "box": boxes.clone(),
            "frame": boxes.clone(),
            "mask": torch.zeros(R, M, M, device=device),
        }
        if per_class:
            best["probs"] = torch.zeros(R, K + 1, device=device)
            best["class_boxes"] = boxes[:, None].repeat(1, K, 1)
        if self.record_trace:
            trace = {
                "boxes": torch.zeros(R, T, 4, device=device),
                "scores": torch.zeros(R, T, device=device),
                "classes": torch.zeros(R, T, dtype=torch.long, device=device),
                "masks": torch.zeros(R, T, M, M, device=device),
            }
            last_t = torch.zeros(R, dtype=torch.long, device=device)
        active = torch.arange(R, device=device)
        num_active = []
        for t in range(T):
            if len(active) == 0:
                break
            num_active.append(len(active))
            in_boxes = cur[active]
            logits, deltas, v = self._predict(
                box_features, scored, _split_by_image(in_boxes, image_idx[active], num_images)
            )
            probs = F.softmax(logits, dim=1)
            score, cls = probs.max(dim=1)  # ĝ_t over K+1 classes (K = background)
            gate = score if self.gate_score == "all" else probs[:, :K].max(dim=1).values
            moving = cls < K
            new_boxes = in_boxes.clone()
            new_boxes[moving] = self._refine(
                deltas[moving], in_boxes[moving], cls[moving], hw[active[moving]]
            )
            mask_probs = self.mask_head.foreground_probs(v)
            # Strictly better only: a tie keeps the earliest iteration.
            if self.test_gate:
                better = gate > best["gate"][active]
            else:  # the last iteration a proposal reaches is its output
                better = torch.ones_like(gate, dtype=torch.bool)
            rows = active[better]
            best["gate"][rows] = gate[better]
            best["t"][rows] = t
            best["cls"][rows] = cls[better]
            best["score"][rows] = score[better]
            best["box"][rows] = new_boxes[better]
            best["frame"][rows] = in_boxes[better]
            best["mask"][rows] = mask_probs[better]
            if per_class:
                best["probs"][rows] = probs[better]
                sel = better.nonzero().squeeze(1)
                n_reg = deltas.shape[1] // 4  # K (class-specific) or 1; explicit: sel may be empty
                class_boxes = self.box_predictor.box2box_transform.apply_deltas(
                    deltas[sel], in_boxes[sel]
                ).view(len(sel), n_reg, 4)
                best["class_boxes"][rows] = (
                    _clip(class_boxes.reshape(-1, 4), hw[rows].repeat_interleave(n_reg, 0))
                    .view(len(sel), n_reg, 4)
                    .expand(-1, K, -1)
                )
            if self.record_trace:
                trace["boxes"][active, t] = new_boxes
                trace["scores"][active, t] = gate
                trace["classes"][active, t] = cls
                trace["masks"][active, t] = mask_probs
                last_t[active] = t
            cur[active] = new_boxes
            if self.skip_background:
                # A background prediction keeps the box, so the next iteration would see the
                # same input and repeat this one exactly (and never win the gate on a tie).
                active = active[moving]
        logger.debug("R2-IOS inference: active proposals per iteration %s", num_active)
        if self.record_trace:
            for t in range(1, T):  # fill the skipped iterations with their exact copies
                stale = last_t < t
                for v_ in trace.values():
                    v_[stale, t] = v_[stale, t - 1]

        results = []
        for i, p in enumerate(proposals):
            rows = torch.nonzero(image_idx == i).squeeze(1)
            if per_class:
                inst, src = self._per_class_candidates(best, rows, p.image_size)
            else:
                inst, src = self._proposal_candidates(best, rows, p.image_size)
            if self.record_trace:
                for k, v_ in trace.items():
                    inst.set(f"trace_{k}", v_[src])
                inst.trace_proposals = boxes[src]
                inst.gate_iteration = best["t"][src]
            results.append(self._postprocess(inst))
        if self.mask_from_output_box:
            self.forward_with_given_boxes(features, results)
        return results

    def _proposal_candidates(self, best: dict, rows: torch.Tensor, image_size: Tuple[int, int]):
        """One candidate per non-background proposal (the paper's output)."""
        keep = rows[
            (best["cls"][rows] < self.num_classes)
            & (best["score"][rows] > self.box_predictor.test_score_thresh)
        ]
        masks = best["mask"][keep]
        if self.reframe_mask:
            masks = reframe_masks(masks, best["frame"][keep], best["box"][keep])
        inst = Instances(image_size)
        inst.pred_boxes = Boxes(best["box"][keep])
        inst.scores = best["score"][keep]
        inst.pred_classes = best["cls"][keep]
        inst.pred_masks = masks[:, None]
        return inst, keep

    def _per_class_candidates(self, best: dict, rows: torch.Tensor, image_size: Tuple[int, int]):
        """Fast R-CNN style: every (proposal, foreground class) above the score threshold,
        from the gate's iteration, with the class-specific box."""
        probs = best["probs"][rows, : self.num_classes]
        r, k = torch.nonzero(probs > self.box_predictor.test_score_thresh, as_tuple=True)
        src = rows[r]
        boxes = best["class_boxes"][src, k]
        masks = best["mask"][src]
        if self.reframe_mask:
            masks = reframe_masks(masks, best["frame"][src], boxes)
        inst = Instances(image_size)
        inst.pred_boxes = Boxes(boxes)
        inst.scores = probs[r, k]
        inst.pred_classes = k
        inst.pred_masks = masks[:, None]
        return inst, src

    def _postprocess(self, inst: Instances) -> Instances:
        """Class-wise NMS (box or mask IoU) and the top-k detections, sorted by score."""
        if len(inst) == 0:
            return inst
        boxes, scores, classes = inst.pred_boxes.tensor, inst.scores, inst.pred_classes
        thresh = self.box_predictor.test_nms_thresh
        if self.nms_type == "box":
            keep = batched_nms(boxes, scores, classes, thresh)
        else:
            keep = self._mask_nms(inst, thresh)
        topk = self.box_predictor.test_topk_per_image
        if topk >= 0:
            keep = keep[:topk]
        return inst[keep]

    def _mask_nms(self, inst: Instances, thresh: float) -> torch.Tensor:
        """Greedy class-wise NMS on mask IoU; returns kept indices by decreasing score."""
        h, w = inst.image_size
        scale = min(1.0, _MASK_NMS_MAX_SIDE / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        order = inst.scores.argsort(descending=True)
        masks = (
            paste_masks_in_image(
                inst.pred_masks[order, 0],
                inst.pred_boxes.tensor[order] * scale,
                size,
                threshold=self.mask_threshold,
            )
            .flatten(1)
            .float()
        )
        inter = masks @ masks.T
        area = masks.sum(1)
        iou = inter / (area[:, None] + area[None] - inter).clamp(min=1.0)
        classes = inst.pred_classes[order]
        iou = iou * (classes[:, None] == classes[None]).to(iou.dtype)
        suppress = iou > thresh
        removed = torch.zeros(len(order), dtype=torch.bool, device=order.device)
        keep = []
        for a in range(len(order)):  # greedy NMS is sequential by definition
            if removed[a]:
                continue
            keep.append(a)
            removed |= suppress[a]
        return order[torch.tensor(keep, dtype=torch.long, device=order.device)]

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """Masks for given boxes (one mask-head pass, no recursion), e.g. for test-time
        augmentation.

        Args:
            features: backbone outputs.
            instances: per image, with ``pred_boxes`` and ``pred_classes``.

        Returns:
            the same ``Instances`` with ``pred_masks`` (N, 1, M, M) foreground probabilities.
        """
        assert not self.training
        scored = self.mask_head.score_maps(features)
        v = self.mask_head(scored, [x.pred_boxes for x in instances])
        probs = self.mask_head.foreground_probs(v)[:, None]
        for inst, m in zip(instances, probs.split([len(x) for x in instances])):
            inst.pred_masks = m
        return instances
