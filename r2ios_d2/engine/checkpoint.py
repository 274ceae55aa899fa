"""Checkpointing that never loses a run and never unpickles by surprise.

`R2IOSCheckpointer` is detectron2's `DetectionCheckpointer` with three changes:

* checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same
  folder and moved into place with ``os.replace``, so a run killed during a write leaves the
  previous complete checkpoint as the one ``--resume`` finds;
* ``.pth`` files are read with ``torch.load(weights_only=True)`` and ``.pkl`` files (Detectron
  / Caffe2 model-zoo pickles) only with an explicit opt-in;
* parameters whose shapes do not match the model are an error that lists them, unless
  shape mismatches are explicitly allowed (e.g. fine-tuning to another number of classes).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..atomic import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked (unsafe format, wrong shapes)."""


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`r2ios_d2.atomic.atomic_open`)."""
    with atomic_open(path, "wb", suffix=".pth") as f:
        torch.save(obj, f)


class R2IOSCheckpointer(DetectionCheckpointer):
    """`DetectionCheckpointer` with atomic writes, safe loading and strict shapes.

    Args:
        model, save_dir, save_to_disk, checkpointables: as `DetectionCheckpointer`.
        allow_pickle: read ``.pkl`` files (pickle can run code: only for trusted files).
        allow_shape_mismatch: skip parameters of the wrong shape with a warning (detectron2's
            behaviour) instead of raising.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        allow_pickle: bool = False,
        allow_shape_mismatch: bool = False,
        **checkpointables: Any,
    ) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_pickle = allow_pickle
        self.allow_shape_mismatch = allow_shape_mismatch

    @classmethod
    def for_config(
        cls, model: torch.nn.Module, cfg: Any, save_dir: str = "", **kwargs: Any
    ) -> R2IOSCheckpointer:
        """A checkpointer with the opt-ins of ``cfg`` (``MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS``,
        ``MODEL.R2IOS.ALLOW_SHAPE_MISMATCH``); ``kwargs`` as for the constructor."""
        return cls(
            model,
            save_dir,
            allow_pickle=cfg.MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS,
            allow_shape_mismatch=cfg.MODEL.R2IOS.ALLOW_SHAPE_MISMATCH,
            **kwargs,
        )

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def load(self, path: str, checkpointables=None) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist (MODEL.WEIGHTS?)")
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            if not self.allow_pickle:
                raise CheckpointError(
                    f"{filename} is a pickle file, which can run arbitrary code when loaded; "
                    "convert it to a .pth of tensors, or set MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS "
                    "True if you trust it"
                )
            return super()._load_file(filename)
        try:
            loaded = torch.load(filename, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise CheckpointError(
                f"cannot read checkpoint {filename} as tensors (torch.load weights_only=True): {e}"
            ) from e
        if not isinstance(loaded, dict):
            raise CheckpointError(f"checkpoint {filename} holds a {type(loaded).__name__}")
        if "model" not in loaded:
            loaded = {"model": loaded}
        loaded.setdefault("matching_heuristics", False)
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None and incompatible.incorrect_shapes:
            rows = ", ".join(
                f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}"
                for k, a, b in incompatible.incorrect_shapes
            )
            if not self.allow_shape_mismatch:
                raise CheckpointError(
                    f"checkpoint does not match the model ({rows}); set "
                    "MODEL.R2IOS.ALLOW_SHAPE_MISMATCH True to skip these parameters"
                )
        return incompatible
