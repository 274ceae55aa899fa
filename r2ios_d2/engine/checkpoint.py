"""Checkpointing that never loses a run and never unpickles by surprise.

`R2IOSCheckpointer` is detectron2's `DetectionCheckpointer` with these changes:

* checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same
  folder and moved into place with ``os.replace``, so a run killed during a write leaves the
  previous complete checkpoint as the one ``--resume`` finds; a stop signal waits for the
  pair to be written (:mod:`r2ios_d2.preemption`), a full disk is a
  :class:`~r2ios_d2.atomic.DiskFullError` that names the file and the free space;
* ``.pth`` files are read with ``torch.load(weights_only=True)`` after the CRC-32 of every
  part of the archive is checked (``torch.load`` reads a garbled tensor without noticing),
  and ``.pkl`` files (Detectron / Caffe2 model-zoo pickles) only with an explicit opt-in;
* ``--resume`` (:meth:`R2IOSCheckpointer.resume_or_load`) falls back to the newest periodic
  checkpoint that loads when the last one is damaged, and says so; when none loads it stops
  with an error, never starting afresh in silence;
* ``max_to_keep`` keeps only the newest periodic checkpoints (never the one ``last_checkpoint``
  names);
* parameters whose shapes do not match the model are an error that lists them, unless
  shape mismatches are explicitly allowed (e.g. fine-tuning to another number of classes).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .. import preemption
from ..atomic import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)


# Periodic checkpoints (detectron2's PeriodicCheckpointer names them model_<iteration>.pth).
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")
_FINAL = "model_final.pth"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked (unsafe format, damaged, wrong shapes)."""


def _checkpoint_order(name: str) -> float:
    """Training order of a checkpoint file name: its iteration; ``model_final`` last."""
    m = _PERIODIC.match(name)
    return float(m.group(1)) if m else math.inf


def verify_archive(filename: str) -> None:
    """Check the CRC-32 of every part of a zip-format ``.pth`` (what ``torch.save`` writes).

    Raises:
        CheckpointError: naming the file and the damaged part. Files that are not zip
            archives are left to ``torch.load``.
    """
    if not zipfile.is_zipfile(filename):
        return
    try:
        with zipfile.ZipFile(filename) as archive:
            bad = archive.testzip()
    except Exception as e:  # noqa: BLE001 - a damaged archive fails in many ways
        raise CheckpointError(f"checkpoint {filename} is damaged: {type(e).__name__}: {e}") from e
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {filename} is damaged: its part {bad} fails its CRC-32 check "
            "(a truncated or garbled file)"
        )


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
        max_to_keep: keep only this many periodic checkpoints (``model_<iter>.pth``, the
            newest by iteration) besides the one ``last_checkpoint`` names; 0 keeps all.

    Attributes:
        resumed_from: the checkpoint :meth:`resume_or_load` resumed from (None: it started
            from the given weights).
        last_saved: ``(file name, iteration)`` of the last checkpoint :meth:`save` wrote.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: bool | None = None,
        allow_pickle: bool = False,
        allow_shape_mismatch: bool = False,
        max_to_keep: int = 0,
        **checkpointables: Any,
    ) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_pickle = allow_pickle
        self.allow_shape_mismatch = allow_shape_mismatch
        self.max_to_keep = int(max_to_keep or 0)
        self.resumed_from: Optional[str] = None
        self.last_saved: Optional[Tuple[str, Optional[int]]] = None
        self._preloaded: Optional[Tuple[str, Dict[str, Any]]] = None

    @classmethod
    def for_config(
        cls, model: torch.nn.Module, cfg: Any, save_dir: str = "", **kwargs: Any
    ) -> R2IOSCheckpointer:
        """A checkpointer with the opt-ins of ``cfg`` (``MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS``,
        ``MODEL.R2IOS.ALLOW_SHAPE_MISMATCH``) and ``SOLVER.CHECKPOINT_MAX_TO_KEEP``;
        ``kwargs`` as for the constructor."""
        return cls(
            model,
            save_dir,
            allow_pickle=cfg.MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS,
            allow_shape_mismatch=cfg.MODEL.R2IOS.ALLOW_SHAPE_MISMATCH,
            max_to_keep=cfg.SOLVER.get("CHECKPOINT_MAX_TO_KEEP", 0),
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
        # A stop signal waits until the checkpoint and its tag are both written.
        with preemption.deferred():
            atomic_torch_save(data, save_file)
            self.tag_last_checkpoint(basename)
            iteration = kwargs.get("iteration")
            self.last_saved = (basename, None if iteration is None else int(iteration))
            self._prune()

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    # ------------------------------------------------------------------ files in save_dir
    def _tagged(self) -> Optional[str]:
        """The file name ``last_checkpoint`` holds (None without a readable tag)."""
        try:
            with open(os.path.join(self.save_dir, "last_checkpoint")) as f:
                name = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return name or None

    def periodic_checkpoints(self) -> List[str]:
        """File names of the periodic checkpoints ``model_<iter>.pth`` in the save folder,
        oldest (lowest iteration) first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        names = [n for n in os.listdir(self.save_dir) if _PERIODIC.match(n)]
        return sorted(names, key=_checkpoint_order)

    def _prune(self) -> None:
        """Delete all but the newest ``max_to_keep`` periodic checkpoints, never the tagged one."""
        if self.max_to_keep <= 0:
            return
        tagged = self._tagged()
        for name in self.periodic_checkpoints()[: -self.max_to_keep]:
            if name == tagged:
                continue
            os.remove(os.path.join(self.save_dir, name))
            self.logger.info(
                "Removed %s: only the newest %d periodic checkpoints are kept",
                name,
                self.max_to_keep,
            )

    def _remove_unfinished_writes(self) -> None:
        """Delete the temporary files of checkpoint writes that a killed run left behind."""
        if not self.save_to_disk or not os.path.isdir(self.save_dir):
            return
        for tmp in glob.glob(os.path.join(glob.escape(self.save_dir), ".tmp-*.pth")):
            os.remove(tmp)
            self.logger.info("Removed %s, an unfinished checkpoint write", tmp)

    def _resume_candidates(self) -> List[str]:
        """The checkpoints to try, in order: the tagged one, then the older periodic ones
        (and ``model_final.pth``), newest first."""
        present = [*self.periodic_checkpoints()]
        if os.path.isfile(os.path.join(self.save_dir, _FINAL)):
            present.append(_FINAL)
        tagged = self._tagged()
        if tagged is None:
            if present:
                self.logger.warning(
                    "%s has checkpoints but no readable last_checkpoint: resuming from the "
                    "newest that loads",
                    self.save_dir,
                )
            return [os.path.join(self.save_dir, n) for n in reversed(present)]
        older = [n for n in present if _checkpoint_order(n) < _checkpoint_order(tagged)]
        if not _PERIODIC.match(tagged) and tagged != _FINAL:
            older = [n for n in present if n != tagged]
        return [os.path.join(self.save_dir, n) for n in [tagged, *reversed(older)]]

    # --------------------------------------------------------------------------- loading
    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume``, load the last checkpoint of the save folder (model and every
        checkpointable); if it cannot be read, warn naming it and fall back to the newest
        older checkpoint there that loads. Without ``resume``, or without any checkpoint in
        the folder, load the model weights of ``path`` only.

        Raises:
            CheckpointError: with ``resume``, when the folder has checkpoints and none loads.
        """
        self.resumed_from = None
        if not resume:
            return self.load(path, checkpointables=[])
        candidates = self._resume_candidates() if self.save_dir else []
        if not candidates:
            self.logger.info(
                "--resume: no checkpoint in %s yet; starting from %s",
                self.save_dir,
                path or "freshly initialised weights",
            )
            return self.load(path, checkpointables=[])
        self._remove_unfinished_writes()
        failures: List[str] = []
        for file in candidates:
            try:
                checkpoint = self._load_file(file)
            except (CheckpointError, OSError) as e:
                self.logger.warning("Cannot resume from %s: %s", file, e)
                failures.append(os.path.basename(file))
                continue
            if failures:
                self.logger.warning(
                    "Resuming from %s instead of %s: the newest checkpoint in %s that loads",
                    os.path.basename(file),
                    failures[0],
                    self.save_dir,
                )
            self._preloaded = (file, checkpoint)
            try:
                loaded = self.load(file)
            finally:
                self._preloaded = None
            self.resumed_from = file
            return loaded
        raise CheckpointError(
            f"--resume: no checkpoint in {self.save_dir} can be read "
            f"({', '.join(failures)}; see the warnings above). Training does not start "
            "afresh on its own: move these files away (or choose another OUTPUT_DIR) to start "
            "from the initial weights"
        )

    def load(self, path: str, checkpointables=None) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist (MODEL.WEIGHTS?)")
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if self._preloaded is not None and self._preloaded[0] == filename:
            return self._preloaded[1]
        if not os.path.isfile(filename):
            raise CheckpointError(f"checkpoint {filename} does not exist")
        if filename.endswith(".pkl"):
            if not self.allow_pickle:
                raise CheckpointError(
                    f"{filename} is a pickle file, which can run arbitrary code when loaded; "
                    "convert it to a .pth of tensors, or set MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS "
                    "True if you trust it"
                )
            return super()._load_file(filename)
        verify_archive(filename)
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
