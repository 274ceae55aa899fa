"""The dataset mapper that reads, checks and transforms precomputed proposals.

:class:`PrecomputedProposalMapper` is detectron2's ``DatasetMapper`` plus the proposal steps:
read (:mod:`r2ios_d2.data.proposals`), validate, filter in original pixels, then let detectron2
move the proposals with the image's transforms. :func:`proposal_fields` is the hand-over to
detectron2's ``transform_proposals``, shared with :class:`r2ios_d2.R2IOSPredictor`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, Optional, Tuple

import numpy as np
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode

from .proposals import filter_proposals, load_proposal_file, validate_proposals

logger = logging.getLogger(__name__)

__all__ = ["PrecomputedProposalMapper", "proposal_fields"]


def proposal_fields(boxes: np.ndarray, scores: np.ndarray) -> Dict[str, Any]:
    """The dataset-dict fields from which detectron2's ``transform_proposals`` (and so
    ``DatasetMapper``) builds the ``proposals`` Instances.

    Args:
        boxes: float32 (N, 4) XYXY boxes in original pixels.
        scores: float32 (N,) scores (become ``objectness_logits``).

    Returns:
        ``{"proposal_boxes", "proposal_objectness_logits", "proposal_bbox_mode"}``.
    """
    return {
        "proposal_boxes": boxes,
        "proposal_objectness_logits": scores,
        "proposal_bbox_mode": BoxMode.XYXY_ABS,
    }


class PrecomputedProposalMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` that also loads, checks and transforms the proposals.

    For each dataset dict it reads the proposals (from ``proposal_file``, from arrays attached
    by :func:`~r2ios_d2.data.proposals.attach_proposals`, or from
    ``<proposal_dir>/<image_id>.npz``), validates them against the image
    (:func:`~r2ios_d2.data.proposals.validate_proposals`), drops degenerate, small and duplicate
    boxes and keeps the top k (:func:`~r2ios_d2.data.proposals.filter_proposals`, in original
    pixels), then lets detectron2 apply the image's transforms (resize, flip) to them, so that
    proposals and ground truth move together. Output: ``dataset_dict["proposals"]`` =
    ``Instances`` with ``proposal_boxes`` (Boxes) and ``objectness_logits``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        load_proposals: bool = True,
        proposal_min_size: float = 0.0,
        proposal_dir: Optional[str] = None,
        **kwargs: Any,
    ):
        """
        Args:
            is_train: training or inference.
            load_proposals: read proposals (False: behave as ``DatasetMapper``).
            proposal_min_size: drop proposals with a side below this (original pixels).
            proposal_dir: folder used for dicts that carry no proposal information.
            kwargs: ``DatasetMapper`` arguments (augmentations, image_format,
                use_instance_mask, instance_mask_format, precomputed_proposal_topk, ...).
        """
        if load_proposals and kwargs.get("precomputed_proposal_topk") is None:
            kwargs["precomputed_proposal_topk"] = sys.maxsize
        super().__init__(is_train, **kwargs)
        self.load_proposals = load_proposals
        self.proposal_min_size = float(proposal_min_size)
        self.proposal_dir = proposal_dir
        if not load_proposals:
            self.proposal_topk = None

    @classmethod
    def from_config(
        cls, cfg: CfgNode, is_train: bool = True, proposal_dir: Optional[str] = None
    ) -> Dict[str, Any]:
        ret = super().from_config(cfg, is_train)
        # R2-IOS always trains a mask head; masks come as RLE, which needs the bitmask path.
        use_masks = bool(cfg.MODEL.MASK_ON) or "R2IOS" in cfg.MODEL.ROI_HEADS.NAME
        ret["use_instance_mask"] = use_masks
        if use_masks and cfg.INPUT.MASK_FORMAT != "bitmask":
            logger.warning(
                f"INPUT.MASK_FORMAT is {cfg.INPUT.MASK_FORMAT!r}; r2ios_d2 datasets store RLE "
                "masks, so the mapper uses 'bitmask'."
            )
            ret["instance_mask_format"] = "bitmask"
        ret["load_proposals"] = bool(cfg.MODEL.LOAD_PROPOSALS)
        ret["precomputed_proposal_topk"] = (
            cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN
            if is_train
            else cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST
        )
        ret["proposal_min_size"] = cfg.DATASETS.PROPOSAL_MIN_SIZE
        ret["proposal_dir"] = proposal_dir
        return ret

    def _read_proposals(self, d: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        h, w = d.get("height"), d.get("width")
        if "proposal_boxes" in d:
            source = d.pop("proposal_source", f"the proposals of image {d.get('image_id')}")
            mode = d.pop("proposal_bbox_mode", BoxMode.XYXY_ABS)
            boxes = np.asarray(d.pop("proposal_boxes"))
            scores = d.pop("proposal_objectness_logits", None)
            if mode != BoxMode.XYXY_ABS and boxes.ndim == 2 and boxes.shape[1] == 4:
                boxes = BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS)
            return validate_proposals(boxes, scores, h, w, source)
        path = d.pop("proposal_file", None)
        if path is None:
            if self.proposal_dir is None:
                raise ValueError(
                    f"Image {d.get('image_id')} has no proposals: build the loader with "
                    "build_r2ios_train_loader/build_r2ios_test_loader, or give proposal_dir."
                )
            path = os.path.join(self.proposal_dir, f"{d['image_id']}.npz")
        return load_proposal_file(path, d.get("image_id"), h, w)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            dataset_dict: one image's dataset dict (not modified).

        Returns:
            detectron2's model input dict: ``image`` (uint8 tensor C, H, W), ``instances``
            (training), ``proposals`` (Instances with ``proposal_boxes``, ``objectness_logits``,
            in the transformed image's pixels), and the dict's other fields.
        """
        d = dict(dataset_dict)
        if self.load_proposals:
            boxes, scores = self._read_proposals(d)
            boxes, scores = filter_proposals(
                boxes, scores, d["height"], d["width"], self.proposal_min_size, self.proposal_topk
            )
            d.update(proposal_fields(boxes, scores))
        else:
            for key in ("proposal_file", "proposal_source", "proposal_boxes"):
                d.pop(key, None)
        try:
            return super().__call__(d)
        except OSError as e:
            raise OSError(f"Cannot read image {d.get('file_name')}: {e}") from e
