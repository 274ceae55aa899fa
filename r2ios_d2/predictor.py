"""Inference on one image at a time, with the proposals R2-IOS needs: `R2IOSPredictor`.

detectron2's ``DefaultPredictor`` takes a BGR image and returns ``{"instances": ...}``, but an
R2-IOS model on precomputed proposals also needs its initial boxes ``l_0``. `R2IOSPredictor`
obtains them in one of three ways:

* **selective search on the fly** (the default for ``PrecomputedProposals`` configs): the same
  function and settings as ``tools/selective_search.py`` (``selective_search(image, "fast",
  2000)`` on the original BGR image), then the mapper's filtering (``filter_proposals`` with
  ``DATASETS.PROPOSAL_MIN_SIZE`` and ``DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST``);
* **given by the caller**: ``predictor(image, proposals=boxes)``, (N, 4) XYXY in the original
  image's pixels, validated as proposal files are (``validate_proposals``) and filtered alike;
* **the model's RPN**, when ``MODEL.PROPOSAL_GENERATOR.NAME`` is not ``PrecomputedProposals``.

Pre- and post-processing are detectron2's own: ``ResizeShortestEdge`` with
``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` (proposals follow through ``transform_proposals``),
``GeneralizedRCNN``'s forward with ``proposals`` in the input dict, and its
``detector_postprocess`` back to the original size. Weights are read with
`R2IOSCheckpointer` (no unpickling unless ``MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from .config_checks import validate_r2ios_config
from .data.mapper import proposal_fields
from .data.proposals import filter_proposals, validate_proposals
from .data.selective_search import selective_search
from .engine import R2IOSCheckpointer
from .modeling.postprocessing import TRACE_OUTPUT_FIELDS as TRACE_FIELDS

logger = logging.getLogger(__name__)

__all__ = ["R2IOSPredictor", "TRACE_FIELDS"]


class R2IOSPredictor:
    """``DefaultPredictor`` for R2-IOS: one BGR image in, detectron2 ``Instances`` out.

    Attributes:
        cfg: a frozen copy of the config.
        model: the ``GeneralizedRCNN`` in eval mode, weights from ``MODEL.WEIGHTS``.
        metadata: ``MetadataCatalog`` entry of ``DATASETS.TEST[0]`` (empty if none).
        aug: ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``.
        input_format: ``INPUT.FORMAT`` ("BGR" or "RGB"), the channel order the model expects.
        uses_precomputed_proposals: True when proposals come from selective search or the
            caller, False when the model's RPN makes them.

    Example::

        predictor = R2IOSPredictor(cfg)
        out = predictor(cv2.imread("a.jpg"))                      # selective search
        out = predictor(image, proposals=boxes)                   # your (N, 4) XYXY boxes
        out = predictor(image, return_trace=True)["trace"]["gate_iteration"]
    """

    def __init__(
        self,
        cfg: CfgNode,
        *,
        return_trace: bool = False,
        ss_mode: str = "fast",
        ss_max_boxes: int = 2000,
    ) -> None:
        """
        Args:
            cfg: a config with the R2-IOS keys (``add_r2ios_config``); not modified.
            return_trace: default of ``__call__``'s ``return_trace``.
            ss_mode: selective search strategy, ``"fast"`` or ``"quality"`` (as
                ``tools/selective_search.py --mode``; default the same).
            ss_max_boxes: selective search boxes kept before filtering (as ``--max-boxes``).

        Raises:
            ValueError: a value of ``cfg`` cannot work (``ConfigValueError``, naming each).
        """
        validate_r2ios_config(cfg)  # every bad value named before anything is built
        self.cfg = cfg.clone()
        self.cfg.defrost()
        self.return_trace = bool(return_trace)
        # The trace is cheap to record (a few tensors per proposal); record it always, so
        # that return_trace can be chosen per call without rebuilding the model.
        self.cfg.MODEL.R2IOS.TEST_RECORD_TRACE = True
        self.cfg.freeze()
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        self.ss_mode = ss_mode
        self.ss_max_boxes = int(ss_max_boxes)

        self.model = build_model(self.cfg)
        self.model.eval()
        R2IOSCheckpointer.for_config(self.model, self.cfg).load(self.cfg.MODEL.WEIGHTS)
        if not self.cfg.MODEL.WEIGHTS:
            logger.warning(
                "MODEL.WEIGHTS is empty: the predictor runs a randomly initialised model"
            )

        self.metadata = (
            MetadataCatalog.get(self.cfg.DATASETS.TEST[0]) if len(self.cfg.DATASETS.TEST) else None
        )
        self.aug = T.ResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST],
            self.cfg.INPUT.MAX_SIZE_TEST,
        )
        self.uses_precomputed_proposals = (
            self.cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals"
        )
        self.proposal_min_size = float(self.cfg.DATASETS.PROPOSAL_MIN_SIZE)
        self.proposal_topk = int(self.cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST)

    # ------------------------------------------------------------------------------ proposals

    def compute_proposals(self, image_bgr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Selective search on the original image, as ``tools/selective_search.py`` does.

        Args:
            image_bgr: uint8 (H, W, 3) BGR image.

        Returns:
            boxes float32 (N, 4) XYXY original pixels, rank-based scores float32 (N,), unfiltered.
        """
        return selective_search(image_bgr, self.ss_mode, self.ss_max_boxes)

    def _prepare_proposals(
        self,
        image_bgr: np.ndarray,
        proposals: Optional[Any],
        proposal_scores: Optional[Any],
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Proposals in original pixels, validated and filtered as the dataset mapper does."""
        h, w = image_bgr.shape[:2]
        if proposals is None:
            boxes, scores = self.compute_proposals(image_bgr)
            source = "the selective search output"
        else:
            boxes = proposals
            if isinstance(boxes, torch.Tensor):
                boxes = boxes.detach().cpu().numpy()
            boxes = np.asarray(boxes)
            # Files must hold floats (an integer file is taken to be a wrong file); a caller's
            # integer pixel coordinates are fine.
            if boxes.dtype.kind in "iu":
                boxes = boxes.astype(np.float32)
            scores = proposal_scores
            if isinstance(scores, torch.Tensor):
                scores = scores.detach().cpu().numpy()
            source = "predictor(image, proposals=...)"
        boxes, scores = validate_proposals(boxes, scores, h, w, source)
        n_in = len(boxes)
        boxes, scores = filter_proposals(
            boxes, scores, h, w, self.proposal_min_size, self.proposal_topk
        )
        logger.debug("%s: %d proposals, %d after filtering", source, n_in, len(boxes))
        return boxes, scores

    # ---------------------------------------------------------------------------- inference

    def __call__(
        self,
        original_image: np.ndarray,
        proposals: Optional[Any] = None,
        *,
        proposal_scores: Optional[Any] = None,
        return_trace: Optional[bool] = None,
    ) -> Dict[str, Any]:
        """Run the model on one image.

        Args:
            original_image: uint8 (H, W, 3) image in BGR order (as ``cv2.imread`` gives).
            proposals: optional (N, 4) XYXY boxes in the original image's pixels (numpy or
                torch, float or integer) to use as ``l_0`` instead of selective search; boxes
                are clipped, small/duplicate ones dropped and the top
                ``PRECOMPUTED_PROPOSAL_TOPK_TEST`` kept. Not allowed with an RPN config.
            proposal_scores: optional (N,) scores of ``proposals`` (higher = better; default:
                their order), used to rank them for the top-k.
            return_trace: also return the per-iteration trace (default: the constructor's).

        Returns:
            dict with

            * ``"instances"``: ``Instances`` of image size (H, W) with ``pred_boxes`` (Boxes,
              XYXY original pixels), ``scores`` (N,), ``pred_classes`` (N,) and
              ``pred_masks`` (N, H, W) bool;
            * ``"proposals"``: float32 (P, 4) the boxes given to the model, original pixels
              (absent with an RPN config);
            * ``"trace"`` (with ``return_trace``): dict of ``boxes`` (N, T, 4; ``l_1..l_T``,
              original pixels), ``proposals`` (N, 4; ``l_0``, original pixels, or None if the
              ROI heads do not record it), ``scores`` (N, T; gate scores), ``classes`` (N, T;
              K = background), ``masks`` (N, T, M, M; foreground probabilities, mask t in the
              frame of the box it was predicted in, ``l_{t-1}``) and ``gate_iteration``
              (N,; 0-based ``t' - 1``), row i describing detection i.

        Raises:
            ValueError: a malformed image, or proposals that are not (N, 4), contain NaN/inf,
                are inverted or lie far outside the image, or proposals with an RPN config.
        """
        if return_trace is None:
            return_trace = self.return_trace
        image = _check_image(original_image)
        height, width = image.shape[:2]
        out: Dict[str, Any] = {}
        with torch.no_grad():
            inputs = self._model_inputs(image, proposals, proposal_scores, out)
            if inputs is None:  # no proposal left
                logger.warning("No proposals left for a %dx%d image", width, height)
                out["instances"] = _empty_instances((height, width))
                if return_trace:
                    out["trace"] = _empty_trace(self.cfg)
                return out
            instances = self.model([inputs])[0]["instances"].to("cpu")
        trace = _pop_trace(instances)
        out["instances"] = instances
        if return_trace:
            out["trace"] = trace
        return out

    def _model_inputs(
        self,
        image: np.ndarray,
        proposals: Optional[Any],
        proposal_scores: Optional[Any],
        out: Dict[str, Any],
    ) -> Optional[Dict[str, Any]]:
        """The model's input dict for a BGR ``image`` (resized as the test mapper does, with
        the proposals transformed alike), or None if no proposal is left; sets
        ``out["proposals"]`` (original pixels) when the model uses precomputed ones."""
        height, width = image.shape[:2]
        model_image = image[:, :, ::-1] if self.input_format == "RGB" else image
        transform = self.aug.get_transform(model_image)
        resized = transform.apply_image(model_image)
        inputs: Dict[str, Any] = {
            "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
            "height": height,
            "width": width,
        }
        if not self.uses_precomputed_proposals:
            if proposals is not None:
                generator = self.cfg.MODEL.PROPOSAL_GENERATOR.NAME
                raise ValueError(
                    f"This model makes its own proposals ({generator}); proposals can only be "
                    "given with MODEL.PROPOSAL_GENERATOR.NAME 'PrecomputedProposals'."
                )
            return inputs
        boxes, scores = self._prepare_proposals(image, proposals, proposal_scores)
        out["proposals"] = boxes
        d = proposal_fields(boxes, scores)
        utils.transform_proposals(
            d, resized.shape[:2], T.TransformList([transform]), proposal_topk=None
        )
        inputs["proposals"] = d["proposals"]
        return inputs if len(inputs["proposals"]) else None


def _check_image(original_image: Any) -> np.ndarray:
    """The image as a uint8 (H, W, 3) array, or ``ValueError``."""
    image = np.asarray(original_image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"R2IOSPredictor expects a uint8 (H, W, 3) BGR image, got {image.dtype} {image.shape}"
        )
    return image


def _pop_trace(instances: Instances) -> Dict[str, Optional[torch.Tensor]]:
    """Remove the ROI heads' trace fields from ``instances`` (in place) and return them (boxes
    in the frame of ``pred_boxes``, the original image)."""
    fields = {k: instances.get(k) if instances.has(k) else None for k in TRACE_FIELDS}
    for k in TRACE_FIELDS:
        if instances.has(k):
            instances.remove(k)
    return {
        "boxes": fields["trace_boxes"],
        "proposals": fields["trace_proposals"],
        "scores": fields["trace_scores"],
        "classes": fields["trace_classes"],
        "masks": fields["trace_masks"],
        "gate_iteration": fields["gate_iteration"],
    }


def _empty_instances(hw: Tuple[int, int]) -> Instances:
    inst = Instances(hw)
    inst.pred_boxes = Boxes(torch.zeros(0, 4))
    inst.scores = torch.zeros(0)
    inst.pred_classes = torch.zeros(0, dtype=torch.long)
    inst.pred_masks = torch.zeros(0, *hw, dtype=torch.bool)
    return inst


def _empty_trace(cfg: CfgNode) -> Dict[str, torch.Tensor]:
    t, m = cfg.MODEL.R2IOS.TEST_NUM_ITERATIONS, cfg.MODEL.R2IOS.MASK_SIZE
    return {
        "boxes": torch.zeros(0, t, 4),
        "proposals": torch.zeros(0, 4),
        "scores": torch.zeros(0, t),
        "classes": torch.zeros(0, t, dtype=torch.long),
        "masks": torch.zeros(0, t, m, m),
        "gate_iteration": torch.zeros(0, dtype=torch.long),
    }
