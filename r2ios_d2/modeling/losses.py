"""Training losses of the R2-IOS recursion: the batch as rows, the per-iteration losses with
the reversible gate, and the gradient probes."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from torch.nn import functional as F
from torchvision.ops import roi_align

from .mask_head import R2IOSMaskHead
from .recursion import flatten_proposals, gate_iterations

__all__ = [
    "TrainingRows",
    "mask_loss",
    "probe_gradients",
    "put_scalar",
    "recursion_losses",
    "training_gate",
]


def put_scalar(name: str, value: float) -> None:
    """``storage.put_scalar`` inside a detectron2 EventStorage, a no-op outside one."""
    # Training runs inside an EventStorage; plain forward passes (tests, scripts) may not.
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalar(name, value)


class TrainingRows:
    """The sampled proposals of a training batch as image-ordered rows: boxes, images and
    labels, the foreground subset with its ground truth (F rows)."""

    def __init__(self, proposals: List[Instances], num_classes: int) -> None:
        k = num_classes
        self.num_images = len(proposals)
        self.boxes, self.image_idx, self.hw = flatten_proposals(proposals, "proposal_boxes")
        self.num_rois = max(len(self.boxes), 1)
        self.gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals]
        )
        self.fg_idx = torch.nonzero((self.gt_classes >= 0) & (self.gt_classes < k)).squeeze(1)
        self.bg_rows = self.gt_classes == k  # ignored (-1) rows count nowhere
        self.fg_cls = self.gt_classes[self.fg_idx]
        self.fg_gt_boxes = gt_boxes[self.fg_idx]
        self.fg_image = self.image_idx[self.fg_idx]
        self.fg_per_image = torch.bincount(self.fg_image, minlength=self.num_images).tolist()
        self.fg_masks = []  # per image: the matched GT instance of each foreground proposal
        # Per image with bitmasks: its distinct matched instances as float (G_i, H, W) and
        # each foreground row's index into them. Every iteration crops them again, so they
        # are found and converted once, not once per iteration and row.
        self.fg_mask_sources: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = []
        for p, n in zip(proposals, self.fg_per_image):
            local = torch.nonzero((p.gt_classes >= 0) & (p.gt_classes < k)).squeeze(1)
            masks = p.gt_masks[local] if n > 0 else None
            self.fg_masks.append(masks)
            # R2IOSROIHeads labels each row with its instance's index (gt_index): exact
            # groups; without it rows are grouped by box and class.
            key = p.gt_index[local] if p.has("gt_index") else None
            rows = (p.gt_boxes.tensor[local], p.gt_classes[local], key) if n > 0 else None
            self.fg_mask_sources.append(_distinct_bitmasks(masks, *rows) if rows else None)

    def mask_targets(
        self, boxes: torch.Tensor, size: int, device: torch.device
    ) -> Optional[torch.Tensor]:
        """(F, size, size) mask targets: each foreground row's matched instance in the frame
        of its box in ``boxes`` (F, 4); None without foreground rows.

        Bitmasks are cropped as ``BitMasks.crop_and_resize`` does (RoIAlign of the float
        mask, adaptive sampling, aligned, then >= 0.5), from each image's distinct instances:
        RoIAlign computes every box from its own mask only, so the result is the same.
        """
        if len(self.fg_idx) == 0:
            return None
        targets = []
        for m, src, b in zip(self.fg_masks, self.fg_mask_sources, boxes.split(self.fg_per_image)):
            if m is None:
                continue
            if src is None:  # polygons: rasterised per box
                targets.append(m.crop_and_resize(b, size))
                continue
            float_masks, index = src
            rois = torch.cat([index[:, None].to(b.dtype), b], dim=1).to(float_masks.device)
            cropped = roi_align(
                float_masks[:, None], rois.to(float_masks.dtype), (size, size), 1.0, 0, True
            )
            targets.append(cropped.squeeze(1) >= 0.5)
        return cat(targets).to(device)


def _distinct_bitmasks(
    masks: object,
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    gt_index: Optional[torch.Tensor] = None,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The distinct instances among the (F, H, W) ``BitMasks`` of F foreground rows, as a
    float (G, H, W) tensor, and each row's (F,) index into it; None for other masks.

    With ``gt_index`` (F,), each row's ground-truth instance, rows of one instance share its
    mask. Without it rows are grouped by box and class, and a group only merges if its masks
    are equal, so the result is exact whatever the matching was.
    """
    if not isinstance(masks, BitMasks):
        return None
    t = masks.tensor
    if gt_index is not None:
        key = gt_index[:, None]
    else:
        key = torch.cat([gt_boxes.to(torch.float64), gt_classes[:, None].to(torch.float64)], 1)
    _, index = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(index.max()) + 1,), len(index), dtype=torch.long, device=t.device)
    first = first.scatter_reduce(0, index, torch.arange(len(index), device=t.device), "amin")
    if gt_index is None and not torch.equal(t, t[first[index]]):
        return t.to(torch.float32), torch.arange(len(t), device=t.device)  # masks differ
    return t[first].to(torch.float32), index


def training_gate(iters: list, rows: TrainingRows, gate: bool, num_iterations: int) -> torch.Tensor:
    """The reversible gate in training: ``t' = argmax_t p_{t,g}`` (first on ties) with
    ``gate``, else the last iteration; iterations after ``t'`` drop out of the losses. Logs
    the histogram of ``t'`` (``r2ios/gate_frac_t<t>``).

    Args:
        iters: per iteration, the foreground rows' outputs (logits second).
        rows: the batch's rows.

    Returns:
        (F,) 0-based ``t'`` of the foreground rows.
    """
    num_fg = len(rows.fg_idx)
    if gate and num_fg > 0 and len(iters) > 1:
        with torch.no_grad():
            t_prime = gate_iterations([it[1] for it in iters], rows.fg_cls)
    else:
        t_prime = torch.full((num_fg,), len(iters) - 1, dtype=torch.long, device=rows.boxes.device)
    for t in range(num_iterations if num_fg else 0):
        put_scalar(f"r2ios/gate_frac_t{t + 1}", (t_prime == t).float().mean().item())
    return t_prime


def recursion_losses(
    iters: list,
    bg_ce: torch.Tensor,
    t_prime: torch.Tensor,
    rows: TrainingRows,
    *,
    box_predictor: FastRCNNOutputLayers,
    mask_head: R2IOSMaskHead,
    gate: bool,
    mask_loss_weight: float,
    conf_loss_weight: float,
    mask_loss_normalizer: str,
    moving_background: Optional[List[torch.Tensor]] = None,
    relabel_iou: Optional[float] = None,
) -> Dict[str, torch.Tensor]:
    """The losses of every iteration ``t <= t'``, summed over the iterations; each iteration
    normalised like one Fast R-CNN step (by the number of sampled RoIs; the mask losses by
    ``mask_loss_normalizer``: "fg" = foreground rows, "rois" = all sampled rows).

    Args:
        iters: per iteration, the foreground rows' ``(l_{t-1}, logits (F, K+1), deltas,
            mask logits (F, M, M) ``d`` or (F, 2, M, M) ``v``, C (F, 2, M, M) or None)``.
        bg_ce: summed classification loss of the background rows (iteration 1).
        t_prime: (F,) 0-based gate iteration of each foreground row.
        rows: the batch's rows.
        box_predictor: gives the box loss and the loss weights.
        mask_head: gives the per-RoI mask loss and M.
        gate: training with the reversible gate (background rows then count once).
        moving_background: per iteration, the (B, K+1) logits of the background rows that
            moved (``TRAIN_MOVE_BACKGROUND``); each counts in the iterations up to its own
            gate iteration (``argmax_t p_{t,background}``) with the gate, in all without.
        mask_loss_weight, conf_loss_weight: weights of ``loss_mask`` and ``loss_mask_conf``
            (the latter only if ``iters`` carry ``C``).
        relabel_iou: ``TRAIN_RELABEL_ITERATIONS``: from iteration 2 on, a foreground row
            whose input box ``l_{t-1}`` overlaps its ground-truth box by less than this IoU
            is trained as background in that iteration (no box or mask loss); None = the
            paper (labels fixed by ``l_0``).

    Returns:
        ``loss_cls``, ``loss_box_reg``, ``loss_mask`` and (with ``C``) ``loss_mask_conf``.
    """
    num_fg, num_rois = len(rows.fg_idx), rows.num_rois
    mask_norm = max(num_fg, 1) if mask_loss_normalizer == "fg" else num_rois
    totals = {"loss_cls": 0.0, "loss_box_reg": 0.0, "loss_mask": 0.0}
    if iters[0][4] is not None:
        totals["loss_mask_conf"] = 0.0
    moving = _moving_background_ce(moving_background, len(iters), gate, box_predictor)
    for t, it in enumerate(iters):
        counted = t_prime >= t
        # Background rows count in iteration 1, and in every iteration without the gate.
        with_bg = t == 0 or not gate
        bg_t = bg_ce if with_bg else None
        if moving is not None:
            bg_t = moving[t][0] if bg_t is None else bg_t + moving[t][0]
        foreground = None
        if relabel_iou is not None and t > 0 and num_fg > 0:
            overlap = matched_pairwise_iou(Boxes(it[0]), Boxes(rows.fg_gt_boxes))
            foreground = overlap >= relabel_iou
            put_scalar(f"r2ios/relabelled_frac_t{t + 1}", 1.0 - foreground.float().mean().item())
        step = _iteration_losses(
            it, bg_t, counted, rows, box_predictor, mask_head, mask_norm, foreground
        )
        step["loss_mask"] = step["loss_mask"] * mask_loss_weight
        if "loss_mask_conf" in step:
            step["loss_mask_conf"] = step["loss_mask_conf"] * conf_loss_weight
        for k, value in step.items():
            totals[k] = totals[k] + value
            put_scalar(f"r2ios/{k}_t{t + 1}", value.item())
        # all background rows (moving ones included) with_bg; else the moving ones counted
        n_bg = rows.bg_rows.sum().item() if with_bg else (moving[t][1] if moving else 0)
        put_scalar(f"r2ios/frac_counted_t{t + 1}", (counted.sum().item() + n_bg) / num_rois)
    put_scalar("r2ios/frac_moving", num_fg / num_rois)
    return totals


def _moving_background_ce(
    logits: Optional[List[torch.Tensor]], num_iterations: int, gate: bool, box_predictor
) -> Optional[List[Tuple[torch.Tensor, int]]]:
    """Per iteration, the summed cross-entropy (target: background) of the moving
    background rows that count in it (see :func:`recursion_losses`), and how many count."""
    if not logits or len(logits[0]) == 0:
        return None
    k = box_predictor.num_classes
    target = torch.full((len(logits[0]),), k, dtype=torch.long, device=logits[0].device)
    if gate:
        with torch.no_grad():
            t_prime = gate_iterations(logits, target)
    else:
        t_prime = torch.full_like(target, num_iterations - 1)
    counted = [t_prime >= t for t in range(len(logits))]
    return [
        ((F.cross_entropy(x, target, reduction="none") * c).sum(), int(c.sum()))
        for x, c in zip(logits, counted)
    ]


def _iteration_losses(
    it: tuple,
    bg_ce: Optional[torch.Tensor],
    counted: torch.Tensor,
    rows: TrainingRows,
    box_predictor: FastRCNNOutputLayers,
    mask_head: R2IOSMaskHead,
    mask_norm: float,
    foreground: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """The unweighted mask losses and the weighted cls/box losses of one iteration ``it``
    (see :func:`recursion_losses`) over the ``counted`` foreground rows, plus the background
    rows' ``bg_ce`` if given. ``foreground`` (F,) bool: the rows that keep their class in
    this iteration (the others count as background); None = all."""
    in_boxes, logits_t, deltas_t, v_t, c_t = it
    num_fg, num_rois, K = len(rows.fg_idx), rows.num_rois, box_predictor.num_classes
    loss_weight = box_predictor.loss_weight
    cls_t = rows.fg_cls
    if foreground is not None:
        cls_t = torch.where(foreground, rows.fg_cls, K)
        counted_fg = counted & foreground
    else:
        counted_fg = counted
    ce = F.cross_entropy(logits_t, cls_t, reduction="none") if num_fg else None
    loss_cls = (ce * counted).sum() if num_fg else logits_t[:, 0].sum() * 0.0
    loss_cls = loss_cls + bg_ce if bg_ce is not None else loss_cls
    # detectron2's box loss on the foreground rows, with uncounted rows relabelled as
    # background (no box loss) and its 1/num_fg normalisation turned into 1/num_rois.
    loss_box = box_predictor.box_reg_loss(
        in_boxes, rows.fg_gt_boxes, deltas_t, torch.where(counted_fg, rows.fg_cls, K)
    ) * (num_fg / num_rois)
    targets = rows.mask_targets(in_boxes, mask_head.mask_size, v_t.device)
    step = {
        "loss_cls": loss_cls / num_rois * loss_weight.get("loss_cls", 1.0),
        "loss_box_reg": loss_box * loss_weight.get("loss_box_reg", 1.0),
        "loss_mask": mask_loss(mask_head, v_t, targets, counted_fg, mask_norm),
    }
    if c_t is not None:
        step["loss_mask_conf"] = mask_loss(mask_head, c_t, targets, counted_fg, mask_norm)
    return step


def mask_loss(
    mask_head: R2IOSMaskHead,
    logits: torch.Tensor,
    targets: Optional[torch.Tensor],
    counted: torch.Tensor,
    norm: float,
) -> torch.Tensor:
    """Pixel-wise cross-entropy of (F, 2, M, M) mask logits ``v`` (or their (F, M, M)
    foreground-minus-background logits ``d``) against (F, M, M) targets,
    summed over the ``counted`` rows and divided by ``norm``."""
    if targets is None:  # keep the graph connected so every parameter gets a (zero) grad
        return logits.sum() * 0.0
    return (mask_head.per_roi_loss(logits, targets) * counted).sum() / norm


def probe_gradients(
    losses: Dict[str, torch.Tensor],
    scored: List[torch.Tensor],
    mask_logits: List[torch.Tensor],
    period: int,
) -> None:
    """Log the norm of the gradient that each loss term sends into the segmentation branch
    (the scored stride-8 map, i.e. what the seg branch and the scoring conv receive) and
    into ``v`` (all iterations) as ``r2ios/grad_seg/<loss>`` and ``r2ios/grad_v/<loss>``,
    every ``period`` iterations (0 = never).

    This is the measurement that shows whether the mask head learns from the mask loss or
    is driven by the classification loss through the seg-aware feature. Where the mask
    logits come as ``d = v[:, 1] - v[:, 0]`` (F, M, M), every loss depends on ``v`` only
    through ``d``, so the gradient w.r.t. ``v`` is ``(-g, g)`` for ``g`` w.r.t. ``d``: its
    norm, ``sqrt(2) * |g|``, is logged.
    """
    if period <= 0 or not torch.is_grad_enabled():
        return
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    if (storage.iter + 1) % period != 0:  # the rows metrics.json writes
        return
    seg = [x for x in scored if x.requires_grad]
    inputs = seg + list(mask_logits)
    for name, loss in losses.items():
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            continue
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        # |d/dv|^2 = 2 |d/dd|^2 for the (F, M, M) d tensors (see above)
        factors = [1.0] * len(seg) + [2.0 if x.dim() == 3 else 1.0 for x in mask_logits]
        for where, lo, hi in (("seg", 0, len(seg)), ("v", len(seg), len(inputs))):
            part = [(g, f) for g, f in zip(grads[lo:hi], factors[lo:hi]) if g is not None]
            if hi > lo:
                sq = sum(f * float(g.pow(2).sum()) for g, f in part)
                storage.put_scalar(f"r2ios/grad_{where}/{name}", math.sqrt(sq))
