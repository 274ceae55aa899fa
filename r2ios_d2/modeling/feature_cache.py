"""A bounded in-memory cache of what a backbone's frozen layers compute for each image.

With the first conv blocks frozen (``MODEL.BACKBONE.FREEZE_AT``), their output for a given input
image never changes during training, yet every step recomputes it; on a CPU that is most of a
step. :class:`FrozenFeatureCache` keeps those outputs per image, keyed by the image's content,
so each (image, flip) pair is computed once per process.

An image of a padded batch is recognised by its content alone: trailing rows and columns that
are exactly zero (detectron2 pads normalised images with zeros) are stripped, and the rest is
hashed. The frozen layers are then run on that image alone, padded to the backbone's size
divisibility, which is what inference with one image per batch computes; features of a batch
differ from those of the images alone only next to the padding, where the convolutions' zero
padding and the batch's padded pixels differ.

The cache also notices new frozen weights (a checkpoint loaded after features were cached: the
parameters' in-place version counters move) and starts afresh.

With a folder (``MODEL.VGG.FROZEN_FEATURE_CACHE_DIR``) the features are also kept on disk, as
``.npy`` files under a digest of the frozen weights and the layers' settings, so that the next
training on the same photos and weights (stage 2, the baseline, a resumed run) reads them
instead of computing them. Files are written atomically and read without pickle; a damaged one
is computed again.
"""

import hashlib
import logging
import os
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..atomic import atomic_open

__all__ = ["FrozenFeatureCache", "image_extent"]

logger = logging.getLogger(__name__)

Features = Dict[str, torch.Tensor]


def image_extent(image: torch.Tensor) -> Tuple[int, int]:
    """Height and width of ``image`` without its trailing all-zero rows and columns.

    Args:
        image: (C, H, W) one image of a zero-padded batch.

    Returns:
        (h, w), at least (1, 1).
    """
    nonzero = image.ne(0).any(dim=0)  # (H, W)
    rows = nonzero.any(dim=1).nonzero()
    cols = nonzero.any(dim=0).nonzero()
    h = int(rows[-1]) + 1 if len(rows) else 1
    w = int(cols[-1]) + 1 if len(cols) else 1
    return h, w


def _fingerprint(params: Iterable[nn.Parameter]) -> Tuple[Tuple[int, int], ...]:
    """Identity and in-place version of each parameter: changes when weights are loaded."""
    return tuple((p.data_ptr(), p._version) for p in params)


class FrozenFeatureCache:
    """Per-image outputs of a backbone's frozen layers, least recently used evicted first.

    Args:
        max_bytes: memory budget of the cached tensors.
        frozen_params: the parameters of the frozen layers (to notice new weights).
        folder: where to keep the features on disk too (None = memory only).
        tag: what else decides the frozen layers' outputs (their settings), part of the
            on-disk digest.
    """

    def __init__(
        self,
        max_bytes: int,
        frozen_params: List[nn.Parameter],
        folder: Optional[str] = None,
        tag: str = "",
    ):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._params = frozen_params
        self._fingerprint = _fingerprint(frozen_params)
        self.folder = folder
        self._tag = tag
        self._digest: Optional[str] = None
        self.disk_reads = 0
        self._entries: OrderedDict[str, Features] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return self._bytes

    def clear(self) -> None:
        """Forget every cached image (the files on disk stay: they name their weights)."""
        self._entries.clear()
        self._bytes = 0
        self._digest = None

    def _weights_folder(self) -> str:
        """``<folder>/<digest of the frozen weights and the tag>``."""
        if self._digest is None:
            h = hashlib.blake2b(self._tag.encode(), digest_size=12)
            for p in self._params:
                h.update(repr((tuple(p.shape), str(p.dtype))).encode())
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
            self._digest = h.hexdigest()
        return os.path.join(self.folder, self._digest)

    def _read(self, key: str, names: List[str]) -> Optional[Features]:
        """The features of ``key`` from disk, None where a file is missing or unreadable."""
        features = {}
        for name in names:
            path = os.path.join(self._weights_folder(), f"{key}_{name}.npy")
            if not os.path.exists(path):
                return None
            try:
                features[name] = torch.from_numpy(np.load(path, allow_pickle=False))
            except (OSError, ValueError) as e:
                logger.warning("Unreadable cached features %s (%s): computing them again", path, e)
                return None
        self.disk_reads += 1
        return features

    def _write(self, key: str, features: Features) -> None:
        for name, t in features.items():
            path = os.path.join(self._weights_folder(), f"{key}_{name}.npy")
            with atomic_open(path, "wb", suffix=".npy") as f:
                np.save(f, t.cpu().numpy(), allow_pickle=False)

    @staticmethod
    def _key(image: torch.Tensor) -> str:
        data = image.detach().contiguous().cpu().numpy()
        digest = hashlib.blake2b(data.tobytes(), digest_size=16)
        digest.update(repr((tuple(data.shape), str(data.dtype), str(image.device))).encode())
        return digest.hexdigest()

    def _store(self, key: str, features: Features) -> None:
        size = sum(t.numel() * t.element_size() for t in features.values())
        if size > self.max_bytes:
            return
        while self._entries and self._bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= sum(t.numel() * t.element_size() for t in old.values())
        self._entries[key] = features
        self._bytes += size

    def batch(
        self,
        x: torch.Tensor,
        compute: Callable[[torch.Tensor], Features],
        divisibility: int,
        strides: Dict[str, int],
    ) -> Features:
        """The frozen layers' outputs for a padded batch, from the cache where possible.

        Args:
            x: (N, C, H, W) zero-padded normalised images, H and W divisible by
                ``divisibility``.
            compute: the frozen layers: (1, C, h, w) -> {name: (1, C_k, h / s_k, w / s_k)},
                the names being those of ``strides``.
            divisibility: the backbone's size divisibility (each image alone is padded to it).
            strides: stride ``s_k`` of each output of ``compute``.

        Returns:
            {name: (N, C_k, H / s_k, W / s_k)}: each image's features top-left, zeros beyond.
        """
        fingerprint = _fingerprint(self._params)
        if fingerprint != self._fingerprint:
            if self._entries:
                logger.info("Frozen backbone weights changed: cleared %d cached images", len(self))
            self.clear()
            self._fingerprint = fingerprint
        per_image: List[Features] = []
        for image in x:
            h, w = image_extent(image)
            alone = image[:, :h, :w]
            key = self._key(alone)
            features = self._entries.get(key)
            if features is None and self.folder:
                features = self._read(key, list(strides))
                if features is not None:
                    features = {k: v.to(x.device) for k, v in features.items()}
                    self._store(key, features)
            if features is None:
                self.misses += 1
                pad_h, pad_w = (-h) % divisibility, (-w) % divisibility
                with torch.no_grad():
                    features = compute(F.pad(alone, (0, pad_w, 0, pad_h))[None])
                features = {k: v.detach() for k, v in features.items()}
                self._store(key, features)
                if self.folder:
                    self._write(key, features)
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            per_image.append(features)
        out = {}
        height, width = x.shape[-2:]
        for name, stride in strides.items():
            first = per_image[0][name]
            full = first.new_zeros(
                (len(per_image), first.shape[1], height // stride, width // stride)
            )
            for i, features in enumerate(per_image):
                f = features[name][0]
                h, w = min(f.shape[1], full.shape[2]), min(f.shape[2], full.shape[3])
                full[i, :, :h, :w] = f[:, :h, :w]
            out[name] = full
        return out
