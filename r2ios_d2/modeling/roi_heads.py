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
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling import ROI_HEADS_REGISTRY, build_mask_head
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torch.nn import functional as F

from .box_head import SegAwareFastRCNNOutputLayers, build_r2ios_box_head
from .linear import CPU_LINEAR_BACKENDS, DEFAULT_PACK_MB, set_cpu_linear
from .losses import TrainingRows, probe_gradients, put_scalar, recursion_losses, training_gate
from .mask_head import R2IOSMaskHead, r2ios_mask_head_names
from .postprocessing import (
    attach_trace,
    bind_trace,
    candidate_masks,
    class_wise_nms,
    per_class_candidates,
    proposal_candidates,
)
from .recursion import (
    BestIteration,
    IterationTrace,
    class_boxes,
    flatten_proposals,
    refine_boxes,
    refined_from_class_boxes,
    reframe_masks,
    split_by_image,
)
from .roi_align import (
    CPU_ROI_ALIGN_FORWARDS,
    CPU_ROI_ALIGN_GRADS,
    pool_boxes,
    set_cpu_roi_align_forward,
    set_cpu_roi_align_grad,
)

__all__ = ["R2IOSROIHeads", "reframe_masks"]

logger = logging.getLogger(__name__)

# The choices of the string arguments (the config validator reads them from here).
GATE_SCORES = ("all", "foreground")
OUTPUT_MODES = ("proposal", "per_class")
TEST_SCORES = ("gate", "mean")
NMS_TYPES = ("box", "mask")
MASK_LOSS_NORMALIZERS = ("fg", "rois")

# The arguments of R2IOSROIHeads that are MODEL.R2IOS keys (from_config reads them).
CONFIG_KEYS = {
    "num_iterations": "NUM_ITERATIONS",
    "test_num_iterations": "TEST_NUM_ITERATIONS",
    "gate": "GATE",
    "gate_score": "GATE_SCORE",
    "test_gate": "TEST_GATE",
    "mask_from_output_box": "TEST_MASK_FROM_OUTPUT_BOX",
    "skip_background": "SKIP_BACKGROUND",
    "refine_nms": "TEST_REFINE_NMS",
    "refine_topk": "TEST_REFINE_TOPK",
    "output_mode": "OUTPUT_MODE",
    "test_score": "TEST_SCORE",
    "nms_type": "NMS_TYPE",
    "reframe_mask": "REFRAME_MASK",
    "record_trace": "TEST_RECORD_TRACE",
    "mask_threshold": "MASK_THRESHOLD",
    "mask_loss_weight": "MASK_LOSS_WEIGHT",
    "mask_loss_normalizer": "MASK_LOSS_NORMALIZER",
    "conf_loss_weight": "CONF_LOSS_WEIGHT",
    "train_move_background": "TRAIN_MOVE_BACKGROUND",
    "train_relabel_iterations": "TRAIN_RELABEL_ITERATIONS",
    "train_move_foreground_by_prediction": "TRAIN_MOVE_FOREGROUND_BY_PREDICTION",
    "grad_probe_period": "GRAD_PROBE_PERIOD",
    "cpu_linear": "CPU_LINEAR",
    "cpu_linear_pack_mb": "CPU_LINEAR_PACK_MB",
    "cpu_roi_align_grad": "CPU_ROI_ALIGN_GRAD",
    "cpu_mask_pool_forward": "CPU_MASK_POOL_FORWARD",
}


_CHOICES = {
    "gate_score": GATE_SCORES,
    "output_mode": OUTPUT_MODES,
    "test_score": TEST_SCORES,
    "nms_type": NMS_TYPES,
    "mask_loss_normalizer": MASK_LOSS_NORMALIZERS,
    "cpu_linear": CPU_LINEAR_BACKENDS,
    "cpu_roi_align_grad": CPU_ROI_ALIGN_GRADS,
    "cpu_mask_pool_forward": CPU_ROI_ALIGN_FORWARDS,
}


def _invalid_number(arg: str, value: object) -> Optional[str]:
    """The allowed values of a numeric :data:`CONFIG_KEYS` argument, as text, when ``value``
    is not one of them; else None."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if arg in ("num_iterations", "test_num_iterations"):
        ok = number and isinstance(value, int) and value >= 1
        return None if ok else "an integer >= 1"
    if arg == "grad_probe_period":
        return None if number and isinstance(value, int) and value >= 0 else "an integer >= 0"
    if arg in ("mask_loss_weight", "conf_loss_weight"):
        return None if number and math.isfinite(value) and value >= 0 else "a number >= 0"
    if arg == "refine_nms":
        return None if number and 0 <= value < 1 else "a number >= 0 and < 1 (0 = off)"
    if arg == "refine_topk":
        return None if number and isinstance(value, int) and value >= 0 else "an integer >= 0"
    if arg == "cpu_linear_pack_mb":
        return None if number and math.isfinite(value) and value >= 0 else "a number >= 0"
    if arg == "mask_threshold":
        return None if number and 0 < value < 1 else "a number > 0 and < 1"
    return None


def check_r2ios_head_settings(
    settings: Dict[str, object], name: Callable[[str], str] = lambda arg: arg
) -> None:
    """Check the :data:`CONFIG_KEYS` arguments of :class:`R2IOSROIHeads`.

    Args:
        settings: argument name -> value, e.g. ``{"gate_score": "all", ...}``.
        name: how an argument is named in the error (``from_config`` names the config key,
            ``MODEL.R2IOS.GATE_SCORE``).

    Raises:
        ValueError: naming every invalid argument, its value and the allowed values.
    """
    problems = []
    for arg, value in settings.items():
        if arg in _CHOICES:
            bad = None if value in _CHOICES[arg] else ", ".join(map(repr, _CHOICES[arg]))
        else:
            bad = _invalid_number(arg, value)
        if bad is not None:
            problems.append(f"{name(arg)} = {value!r} is invalid; allowed values: {bad}")
    if problems:
        raise ValueError("R2IOSROIHeads: " + "; ".join(problems))


def _with_instance_index(targets: Instances) -> Instances:
    """A shallow copy of one image's ground truth with ``gt_index`` (G,): each instance's
    index. Sampling copies it to every matched proposal like the other ``gt_*`` fields."""
    out = Instances(targets.image_size, **targets.get_fields())
    out.gt_index = torch.arange(len(targets), device=targets.gt_classes.device)
    return out


@ROI_HEADS_REGISTRY.register()
class R2IOSROIHeads(StandardROIHeads):
    """Recursive instance-level segmentation and proposal refinement (Sec. 3 of the paper).

    Works on the two-branch VGG (box features ``"det"``, mask features ``"seg"``) and on any
    other backbone, e.g. ResNet-FPN (``ROI_HEADS.IN_FEATURES`` / ``R2IOS.MASK_IN_FEATURES``).

    Inference returns ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes`` and
    ``pred_masks`` (N, 1, M, M foreground probabilities in the frame of ``pred_boxes``); with
    ``record_trace`` also ``trace_boxes`` (N, T, 4; frame of ``pred_boxes``: scaled with
    them by ``detector_postprocess``, see :class:`~.postprocessing.TracedBoxes`),
    ``trace_scores`` (N, T; gate scores), ``trace_classes`` (N, T; predicted class,
    K = background), ``trace_masks`` (N, T, M, M; foreground probabilities in the frame of
    the box each was predicted in, ``l_{t-1}``),
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
        mask_head: R2IOSMaskHead,
        num_iterations: int = 4,
        test_num_iterations: int = 4,
        gate: bool = False,
        gate_score: str = "all",
        test_gate: bool = True,
        mask_from_output_box: bool = False,
        skip_background: bool = True,
        refine_nms: float = 0.0,
        refine_topk: int = 0,
        output_mode: str = "proposal",
        test_score: str = "gate",
        nms_type: str = "box",
        reframe_mask: bool = True,
        record_trace: bool = False,
        mask_threshold: float = 0.5,
        mask_loss_weight: float = 1.0,
        mask_loss_normalizer: str = "fg",
        conf_loss_weight: float = 1.0,
        train_move_background: bool = False,
        train_relabel_iterations: bool = False,
        train_move_foreground_by_prediction: bool = False,
        grad_probe_period: int = 0,
        cpu_linear: str = "onednn",
        cpu_linear_pack_mb: float = DEFAULT_PACK_MB,
        cpu_roi_align_grad: str = "matmul",
        cpu_mask_pool_forward: str = "matmul",
        **kwargs,
    ):
        """
        Args:
            box_in_features, box_pooler, box_head: as in :class:`StandardROIHeads`.
            box_predictor: the seg-aware predictor (cls + class-specific deltas).
            mask_head: an R2-IOS mask head; it scores and pools its own ``in_features``.
            kwargs: the :class:`ROIHeads` arguments (num_classes, sampling, matcher).
            others: the ``MODEL.R2IOS`` key of :data:`CONFIG_KEYS` (meaning and paper value
                in ``r2ios_d2/config.py`` and the README's configuration reference), e.g.
                ``num_iterations`` = ``NUM_ITERATIONS`` (T in training; 1 = recursive only in
                testing), ``test_gate`` = ``TEST_GATE`` (False: the last iteration, Table 2's
                "recursive_k" rows), ``record_trace`` = ``TEST_RECORD_TRACE``.
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
        settings = {arg: value for arg, value in locals().items() if arg in CONFIG_KEYS}
        check_r2ios_head_settings(settings)
        for arg, value in settings.items():  # self.num_iterations, self.gate, ...
            setattr(self, arg, value)
        # the box head's, predictor's and mask head's layers
        set_cpu_linear(self, cpu_linear, cpu_linear_pack_mb)
        set_cpu_roi_align_grad(self.box_pooler, cpu_roi_align_grad)
        set_cpu_roi_align_grad(self.mask_head.pooler, cpu_roi_align_grad)
        set_cpu_roi_align_forward(self.mask_head.pooler, cpu_mask_pool_forward)

    # ------------------------------------------------------------------------------- build
    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("R2IOSROIHeads has no keypoint head; set MODEL.KEYPOINT_ON=False")
        settings = {arg: cfg.MODEL.R2IOS[key] for arg, key in CONFIG_KEYS.items()}
        # Named by their config keys, before anything is built (e.g. by build_model in a
        # notebook; the trainer and the predictor check the whole config first).
        check_r2ios_head_settings(settings, lambda arg: f"MODEL.R2IOS.{CONFIG_KEYS[arg]}")
        ret = super().from_config(cfg, input_shape)
        ret.update(settings)
        return ret

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        return build_r2ios_box_head(cfg, input_shape)

    @classmethod
    def _init_mask_head(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        if not cfg.MODEL.MASK_ON:
            # v feeds the seg-aware features and the outputs: R2-IOS always segments.
            raise ValueError("R2IOSROIHeads needs MODEL.MASK_ON=True (ground-truth masks)")
        name = cfg.MODEL.ROI_MASK_HEAD.NAME
        if name not in r2ios_mask_head_names():
            raise ValueError(
                f"R2IOSROIHeads needs an R2-IOS mask head: MODEL.ROI_MASK_HEAD.NAME must be one "
                f"of {r2ios_mask_head_names()}, got {name!r}"
            )
        head = build_mask_head(cfg, input_shape)
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
        # The iterations share the mask head's derived weights (computed once per pass).
        with self.mask_head.reusing_derived_weights():
            if self.training:
                assert targets, "'targets' argument is required during training"
                proposals = self.label_and_sample_proposals(proposals, targets)
                return proposals, self.forward_train(features, proposals)
            return self.forward_inference(features, proposals), {}

    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """detectron2's matching and sampling; each sampled row also carries ``gt_index``, the
        index of its ground-truth instance in ``targets`` (the targets are not modified), so
        that rows of one instance share its mask-target source without comparing masks."""
        indexed = [_with_instance_index(t) for t in targets]
        return super().label_and_sample_proposals(proposals, indexed)

    def _predict(
        self,
        box_features: List[torch.Tensor],
        scored: List[torch.Tensor],
        boxes: Union[List[Boxes], torch.Tensor],
        confidence_maps: Optional[List[torch.Tensor]] = None,
        mask_probs: Optional[List[torch.Tensor]] = None,
        mask_grad_rows: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One iteration of both sub-networks on the given boxes.

        Args:
            boxes: one ``Boxes`` per image, or (R, 5) rows ``(image index, x1, y1, x2, y2)``
                in image order (pooled as they are, :func:`pool_boxes`).
            confidence_maps: if a list, the pooled confidence maps ``C`` (R, 2, M, M) are
                appended to it.
            mask_probs: if a list and autograd is off, the foreground probabilities (R, M, M)
                are computed once, fed to the seg-aware predictor and appended to it.
            mask_grad_rows: (R,) bool, the rows whose mask losses train the mask head. Where
                the predictor sends no gradient into the masks (``SEG_AWARE_GRAD_SCALE`` 0,
                the default), the other rows' masks are computed without autograd: the same
                values and gradients, the mask head's backward on those rows only.

        Returns:
            class logits (R, K+1), deltas (R, 4K or 4) and the mask logits: (R, M, M)
            ``d = v[:, 1] - v[:, 0]``, or (R, 2, M, M) ``v`` where the predictor needs both
            channels (the raw-logits seg-aware input); every later use takes either.
        """
        x = self.box_head(pool_boxes(self.box_pooler, box_features, boxes))
        pred = self.box_predictor
        if pred.seg_aware and pred.seg_grad_scale > 0:
            mask_grad_rows = None  # the class and box losses of every row reach the masks
        if pred.needs_mask_channels:
            v = self.mask_head(scored, boxes, confidence_maps, grad_rows=mask_grad_rows)
        else:
            v = self.mask_head.foreground_logits(
                scored, boxes, confidence_maps, grad_rows=mask_grad_rows
            )
        if mask_probs is not None and not torch.is_grad_enabled():
            mask_probs.append(self.mask_head.foreground_probs(v))
            logits, deltas = self.box_predictor(x, v, mask_probs=mask_probs[-1])
        else:
            logits, deltas = self.box_predictor(x, v)
        return logits, deltas, v

    def _refine(
        self, deltas: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, hw: torch.Tensor
    ) -> torch.Tensor:
        """``l_t`` from ``l_{t-1}`` (see :func:`r2ios_d2.modeling.recursion.refine_boxes`)."""
        return refine_boxes(self.box_predictor.box2box_transform, deltas, boxes, classes, hw)

    # ---------------------------------------------------------------------------- training
    def forward_train(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """Losses of the T-iteration recursion on already sampled proposals.

        Args:
            features: backbone outputs, each (N, C, H_l, W_l).
            proposals: per image, the sampled proposals with ``proposal_boxes``,
                ``gt_classes`` and, where the image has ground truth, ``gt_boxes``,
                ``gt_masks`` and ``gt_index`` (output of :meth:`label_and_sample_proposals`;
                without ``gt_index`` rows are grouped by box and class).

        Returns:
            ``loss_cls``, ``loss_box_reg``, ``loss_mask`` (and ``loss_mask_conf``): sums over
            the iterations, each iteration normalised like one Fast R-CNN step (by the number
            of sampled RoIs; the mask losses by ``mask_loss_normalizer``).
        """
        box_features = [features[f] for f in self.box_in_features]
        scored = self.mask_head.score_maps(features)
        rows = TrainingRows(proposals, self.num_classes)
        conf: Optional[List[torch.Tensor]] = [] if self.conf_loss_weight > 0 else None
        iters, bg_ce, bg_iters, v_first = self._train_iterations(box_features, scored, rows, conf)
        t_prime = training_gate(iters, rows, self.gate, self.num_iterations)
        totals = recursion_losses(
            iters,
            bg_ce,
            t_prime,
            rows,
            moving_background=bg_iters,
            box_predictor=self.box_predictor,
            mask_head=self.mask_head,
            gate=self.gate,
            mask_loss_weight=self.mask_loss_weight,
            conf_loss_weight=self.conf_loss_weight,
            mask_loss_normalizer=self.mask_loss_normalizer,
            relabel_iou=self._foreground_iou() if self.train_relabel_iterations else None,
        )
        probe_gradients(
            totals, scored, [v_first] + [it[3] for it in iters[1:]], self.grad_probe_period
        )
        return totals

    def _foreground_iou(self) -> float:
        """The IoU from which the proposal matcher labels a proposal foreground."""
        m = self.proposal_matcher
        return next(lo for lo, label in zip(m.thresholds[:-1], m.labels) if label == 1)

    def _train_iterations(
        self,
        box_features: List[torch.Tensor],
        scored: List[torch.Tensor],
        rows: TrainingRows,
        conf: Optional[List[torch.Tensor]],
    ) -> Tuple[list, torch.Tensor, List[torch.Tensor], torch.Tensor]:
        """Run the T iterations of training.

        Iteration 1 runs every sampled proposal. Foreground ones move by the deltas of their
        ground-truth class. Background ones never move in the paper, so their later
        iterations would repeat iteration 1 exactly: they are computed once and weighted
        (DESIGN 2.4). With ``train_move_background``, the background proposals that are
        predicted foreground move as they would at test time (by the deltas of the predicted
        class, until predicted background) and are trained as background at every iteration.
        With ``train_move_foreground_by_prediction`` the foreground ones move that way too
        (their losses keep the ground-truth class and box).

        Returns:
            per iteration, the foreground rows' ``(l_{t-1}, logits, deltas, v, C or None)``
            (``v``: the mask logits as :meth:`_predict` returns them, ``d`` or ``v``);
            the summed cross-entropy of the background rows that stay; per iteration, the
            (B, K+1) logits of the B moving background rows; ``v`` of iteration 1 for all
            rows.
        """
        fg_rows = torch.zeros(len(rows.boxes), dtype=torch.bool, device=rows.boxes.device)
        fg_rows[rows.fg_idx] = True  # only their masks are trained
        logits, deltas, v = self._predict(
            box_features,
            scored,
            split_by_image(rows.boxes, rows.image_idx, rows.num_images),
            conf,
            mask_grad_rows=fg_rows,
        )
        bg = rows.bg_rows
        moving = torch.zeros_like(bg)
        if self.train_move_background and self.num_iterations > 1:
            moving = bg & (logits.detach().argmax(dim=1) < self.num_classes)
        static = bg & ~moving
        bg_ce = F.cross_entropy(logits[static], rows.gt_classes[static], reduction="sum")
        put_scalar(
            "r2ios/cls_accuracy_t1",
            (logits.argmax(1) == rows.gt_classes).float().mean().item() if len(logits) else 0.0,
        )
        fg, mov = rows.fg_idx, torch.nonzero(moving).squeeze(1)
        num_fg = len(fg)
        if self.train_move_background:
            put_scalar("r2ios/moving_background_frac", len(mov) / max(int(bg.sum()), 1))
        # Foreground rows first, then the moving background rows; _predict needs them in
        # image order.
        run = torch.cat([fg, mov])
        order = torch.sort(rows.image_idx[run], stable=True).indices
        unsort = torch.empty_like(order)
        unsort[order] = torch.arange(len(order), device=order.device)
        run_hw, run_images = rows.hw[run], rows.image_idx[run][order]
        move_cls = torch.cat([rows.fg_cls, torch.empty_like(mov)])  # background part: below
        cur = rows.boxes[run]
        out = (logits[run], deltas[run], v[run], conf[-1][run] if conf else None)
        iters = [(cur[:num_fg], *(x[:num_fg] if x is not None else None for x in out))]
        bg_iters = [out[0][num_fg:]]
        for _ in range(1, self.num_iterations if len(run) else 1):
            with torch.no_grad():  # l_t is detached between iterations
                # Foreground rows move by their GT class (or, as tested, by the predicted
                # class); background rows by the predicted class while it is foreground
                # (they stay once predicted background).
                first = 0 if self.train_move_foreground_by_prediction else num_fg
                move_cls[first:] = out[0][first:].argmax(dim=1)
                go = move_cls < self.num_classes
                new = cur.clone()
                new[go] = self._refine(out[1][go], cur[go], move_cls[go], run_hw[go])
                cur = new
            sorted_boxes = split_by_image(cur[order], run_images, rows.num_images)
            fg_run = (torch.arange(len(run), device=run.device) < num_fg)[order]
            pred = self._predict(box_features, scored, sorted_boxes, conf, mask_grad_rows=fg_run)
            out = (*(x[unsort] for x in pred), conf[-1][unsort] if conf else None)
            iters.append((cur[:num_fg], *(x[:num_fg] if x is not None else None for x in out)))
            bg_iters.append(out[0][num_fg:])
        return iters, bg_ce, bg_iters, v

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
        box_features = [features[f] for f in self.box_in_features]
        scored = self.mask_head.score_maps(features)
        boxes, image_idx, hw = flatten_proposals(proposals, "proposal_boxes")
        best, trace = self._infer_iterations(box_features, scored, boxes, image_idx, hw)
        candidates = per_class_candidates if best.per_class else proposal_candidates
        predictor = self.box_predictor
        results = []
        for i, p in enumerate(proposals):
            rows = torch.nonzero(image_idx == i).squeeze(1)
            inst, src = candidates(best, rows, p.image_size, predictor.test_score_thresh)
            if trace is not None:
                attach_trace(inst, src, trace, boxes, best.t)
            if self.nms_type == "mask":
                inst.pred_masks = candidate_masks(
                    best, src, inst.pred_boxes.tensor, self.reframe_mask
                )
            inst, keep = class_wise_nms(
                inst,
                self.nms_type,
                predictor.test_nms_thresh,
                predictor.test_topk_per_image,
                self.mask_threshold,
            )
            if not self.mask_from_output_box and not inst.has("pred_masks"):
                # Resampled for the kept detections only.
                inst.pred_masks = candidate_masks(
                    best, src[keep], inst.pred_boxes.tensor, self.reframe_mask
                )
            results.append(bind_trace(inst))
        if self.mask_from_output_box:
            self._masks_in_boxes(scored, results)
        return results

    def _infer_iterations(
        self,
        box_features: List[torch.Tensor],
        scored: List[torch.Tensor],
        boxes: torch.Tensor,
        image_idx: torch.Tensor,
        hw: torch.Tensor,
    ) -> Tuple[BestIteration, Optional[Dict[str, torch.Tensor]]]:
        """Run the T test iterations on all (R) proposals: each moves by the deltas of its
        predicted class and keeps the iteration with the best gate score (``TEST_GATE``) or
        its last one.

        Returns:
            the kept iteration of every proposal, and the per-iteration trace (or None).
        """
        K, T, M = self.num_classes, self.test_num_iterations, self.mask_head.mask_size
        # The gate's v_{t'} is kept only where an output uses it (not when every output's
        # mask is predicted again in its output box, unless mask NMS compares them first).
        keep_masks = not self.mask_from_output_box or self.nms_type == "mask"
        best = BestIteration(boxes, K, M, self.output_mode == "per_class", keep_masks)
        trace = IterationTrace(len(boxes), T, M, boxes.device) if self.record_trace else None
        cur = boxes.clone()  # l_{t-1} of every proposal
        active = torch.arange(len(boxes), device=boxes.device)
        # TEST_SCORE "mean": each proposal's class probabilities summed over the T
        # iterations (an iteration it skipped repeats its last one: exactly so with
        # SKIP_BACKGROUND; a proposal the refine budget stopped keeps its result so far).
        mean_score = self.test_score == "mean"
        last_probs = boxes.new_zeros(len(boxes), K + 1) if mean_score else None
        prob_sum = boxes.new_zeros(len(boxes), K + 1) if mean_score else None
        done = 0
        for t in range(T):
            if len(active) == 0:
                break
            done = t + 1
            # Proposals iteration t runs on (SKIP_BACKGROUND drops background ones), for the
            # speed benchmark; skipped silently outside an EventStorage.
            put_scalar(f"r2ios/test_active_t{t + 1}", len(active))
            in_boxes = cur[active]
            fg_probs: List[torch.Tensor] = []
            # The poolers' own row format, made once for both (rows stay in image order).
            rois = torch.cat([image_idx[active, None].to(in_boxes.dtype), in_boxes], dim=1)
            logits, deltas, v = self._predict(box_features, scored, rois, mask_probs=fg_probs)
            # The predictor's foreground probabilities are the output mask too: computed once.
            mask_probs = fg_probs[0] if fg_probs else self.mask_head.foreground_probs(v)
            probs = F.softmax(logits, dim=1)
            score, cls = probs.max(dim=1)  # ĝ_t over K+1 classes (K = background)
            gate = score if self.gate_score == "all" else probs[:, :K].max(dim=1).values
            moving = cls < K
            values = dict(gate=gate, cls=cls, score=score, frame=in_boxes)
            if best.per_class:
                # Every class's box is an output: decoded once, l_t taken from them.
                transform = self.box_predictor.box2box_transform
                values["class_boxes"] = class_boxes(transform, deltas, in_boxes, hw[active], K)
                values["probs"] = probs
                new_boxes = refined_from_class_boxes(values["class_boxes"], in_boxes, cls, moving)
            else:
                new_boxes = in_boxes.clone()
                new_boxes[moving] = self._refine(
                    deltas[moving], in_boxes[moving], cls[moving], hw[active[moving]]
                )
            values["box"] = new_boxes
            # Strictly better only: a tie keeps the earliest iteration. Without the test gate
            # the last iteration a proposal reaches is its output.
            better = gate > best.gate[active] if self.test_gate else torch.ones_like(moving)
            if keep_masks:
                values["mask"] = mask_probs
            best.update(active, better, t, **values)
            if trace is not None:
                trace.record(active, t, boxes=new_boxes, scores=gate, classes=cls, masks=mask_probs)
            cur[active] = new_boxes
            if mean_score:
                last_probs[active] = probs
                prob_sum += last_probs
            # A background prediction keeps the box, and so does a refinement that collapses
            # or changes nothing: the next iteration would see the same input and repeat this
            # one exactly (and never win the gate on a tie). SKIP_BACKGROUND drops them.
            go = moving & (new_boxes != in_boxes).any(dim=1) if self.skip_background else None
            if t + 1 < T and (self.refine_nms > 0 or self.refine_topk > 0):
                go = torch.ones_like(moving) if go is None else go
                go = self._refine_budget(go, new_boxes, gate, cls, image_idx[active])
            if go is not None:
                active = active[go]
        if mean_score:
            mean = (prob_sum + (T - done) * last_probs) / T
            best.score = mean.gather(1, best.cls[:, None]).squeeze(1)
            if best.per_class:
                best.probs = mean
        return best, (trace.filled() if trace is not None else None)

    def _refine_budget(
        self,
        go: torch.Tensor,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        classes: torch.Tensor,
        images: torch.Tensor,
    ) -> torch.Tensor:
        """``TEST_REFINE_NMS`` / ``TEST_REFINE_TOPK``: which of the rows that would continue
        (``go``, (A,) bool) do, given their refined boxes (A, 4), scores, predicted classes
        and images (A,)."""
        rows = torch.nonzero(go).squeeze(1)
        if len(rows) == 0:
            return go
        s = scores[rows]
        if self.refine_nms > 0:
            group = images[rows] * (self.num_classes + 1) + classes[rows]
            keep = batched_nms(boxes[rows], s, group, self.refine_nms)
        else:
            keep = torch.argsort(s, descending=True, stable=True)
        if self.refine_topk > 0:
            img = images[rows][keep]  # in descending score order
            order = torch.argsort(img, stable=True)
            first = torch.searchsorted(img[order], img[order])
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order), device=order.device) - first
            keep = keep[rank < self.refine_topk]
        out = torch.zeros_like(go)
        out[rows[keep]] = True
        return out

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
        return self._masks_in_boxes(self.mask_head.score_maps(features), instances)

    def _masks_in_boxes(
        self, scored: List[torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """:meth:`forward_with_given_boxes` on the mask head's scored maps."""
        d = self.mask_head.foreground_logits(scored, [x.pred_boxes for x in instances])
        probs = self.mask_head.foreground_probs(d)[:, None]
        for inst, m in zip(instances, probs.split([len(x) for x in instances])):
            inst.pred_masks = m
        return instances
