"""Two-branch VGG-16 backbone of R2-IOS (DESIGN 2.1).

One trunk (conv1_1 .. conv3_3 with pool1-3, stride 8) feeds two branches with their own
weights (with ``shared_conv4`` the trunk also holds one conv4_1 .. conv4_3, and the branches
start at conv5: det with pool4):

- ``det``: conv4_1 .. conv4_3, pool4, conv5_1 .. conv5_3 (stride 16, no pool5), the input of
  the Fast R-CNN style refinement sub-network;
- ``seg``: conv4_1 .. conv4_3 (no pool4), conv5_1 .. conv5_3 dilated, then ``seg_fc6`` (3x3,
  dilated) and ``seg_fc7`` (1x1) as convolutions (DeepLab-LargeFOV style), stride 8, the input
  of the segmentation sub-network.

Parameter names are fixed (``conv1_1``, ``det_conv4_1``, ``seg_fc6`` ...): the VGG-16 weight
converter maps the ImageNet layers onto them.

With conv1-conv3 or more frozen, ``MODEL.VGG.FROZEN_FEATURE_CACHE_MB`` keeps what the frozen
layers compute for each training image (:mod:`.feature_cache`), so that a step runs only the
layers that learn.
"""

import logging
import math
from typing import Dict, List, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.nn import functional as F

from .feature_cache import FrozenFeatureCache

__all__ = ["VGG16TwoBranch", "build_r2ios_vgg_backbone"]

logger = logging.getLogger(__name__)

# Channels of VGG-16's five conv blocks at WIDTH 1 and the number of convs in each.
_BLOCK_CHANNELS = (64, 128, 256, 512, 512)
_BLOCK_DEPTHS = (2, 2, 3, 3, 3)


def _scaled(channels: int, width: float) -> int:
    """Channel count scaled by the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


# Normalisation after every conv: none (VGG-16 as published) or GroupNorm.
VGG_NORMS = ("", "GN")


class VGG16TwoBranch(Backbone):
    """VGG-16 trunk with a detection branch (stride 16) and a segmentation branch (stride 8).

    Every conv is an ``nn.Conv2d`` (optionally followed by GroupNorm, ``MODEL.VGG.NORM``) and a
    ReLU, set directly on this module.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int = 3,
        width: float = 1.0,
        seg_fc_dim: int = 1024,
        seg_conv5_dilation: int = 2,
        seg_fc6_dilation: int = 12,
        seg_fc_dropout: float = 0.0,
        shared_conv4: bool = False,
        out_features: Sequence[str] = ("det", "seg"),
        freeze_at: int = 0,
        norm: str = "",
        frozen_feature_cache_mb: int = 0,
        frozen_feature_cache_dir: str = "",
    ):
        """
        Args:
            in_channels: channels of the input image (3).
            width: channel multiplier of every layer (1.0 = VGG-16).
            seg_fc_dim: output channels of ``seg_fc6`` / ``seg_fc7`` at width 1.
            seg_conv5_dilation: dilation of the seg branch's conv5 layers.
            seg_fc6_dilation: dilation of the 3x3 ``seg_fc6`` conv.
            seg_fc_dropout: dropout probability after ``seg_fc6`` and ``seg_fc7`` in training
                (0 = off).
            shared_conv4: one conv4 (``conv4_1`` .. ``conv4_3``) in the trunk for both
                branches instead of ``det_conv4_*`` and ``seg_conv4_*``. Checkpoints with the
                branches' conv4 (e.g. converted ImageNet weights) load into it from
                ``det_conv4_*``.
            out_features: subset of ``("det", "seg")`` to return.
            freeze_at: freeze the first ``freeze_at`` conv blocks (0 = nothing; 1 = conv1_*,
                2 = conv1_* + conv2_*, 3 also conv3_*, 4 also conv4_* (both branches' or the
                shared one), 5 also
                both branches' conv5_*, 6 also ``seg_fc6`` / ``seg_fc7``).
            norm: ``""`` (VGG-16 as published, no normalisation) or ``"GN"`` (GroupNorm after
                every conv, gcd(32, channels) groups; for training from scratch).
            frozen_feature_cache_mb: memory (MB) for the outputs of the frozen blocks per image
                (:class:`FrozenFeatureCache`; 0 = off). Needs ``freeze_at`` 3, 4 or 5.
            frozen_feature_cache_dir: folder where the cache also keeps the features on disk,
                for the next run on the same images and weights ("" = memory only).
        """
        super().__init__()
        for name in out_features:
            if name not in ("det", "seg"):
                raise ValueError(f"Unknown VGG output feature {name!r}; expected 'det' or 'seg'")
        if norm not in VGG_NORMS:
            raise ValueError(f"MODEL.VGG.NORM must be one of {VGG_NORMS}, got {norm!r}")
        self._norm = norm
        self._shared_conv4 = bool(shared_conv4)
        if not 0 <= freeze_at <= 6:
            raise ValueError(f"freeze_at must be in [0, 6], got {freeze_at}")
        ch = [_scaled(c, width) for c in _BLOCK_CHANNELS]
        fc_dim = _scaled(seg_fc_dim, width)

        # blocks[k] lists the layer names of conv block k+1; used for freezing.
        self._blocks: List[List[str]] = [[] for _ in range(6)]
        self._add_layers(in_channels, ch, fc_dim, seg_conv5_dilation, seg_fc6_dilation)
        self.seg_fc_dropout = nn.Dropout(seg_fc_dropout) if seg_fc_dropout > 0 else nn.Identity()

        self._out_features = list(out_features)
        self._out_feature_strides = {"det": 16, "seg": 8}
        self._out_feature_channels = {"det": ch[4], "seg": fc_dim}
        self.freeze(freeze_at)
        self._freeze_at = freeze_at
        self.feature_cache = None
        if frozen_feature_cache_mb < 0:
            raise ValueError(
                f"MODEL.VGG.FROZEN_FEATURE_CACHE_MB must be >= 0, got {frozen_feature_cache_mb}"
            )
        if frozen_feature_cache_mb > 0:
            if not 3 <= freeze_at <= 5:
                raise ValueError(
                    "MODEL.VGG.FROZEN_FEATURE_CACHE_MB caches the outputs of frozen conv blocks: "
                    f"it needs MODEL.BACKBONE.FREEZE_AT 3, 4 or 5 (conv1-conv3 at least, the "
                    f"seg branch's fc6/fc7 learning), got {freeze_at}"
                )
            frozen = [
                p
                for b in self._blocks[:freeze_at]
                for n in b
                for p in getattr(self, n).parameters()
            ]
            tag = repr((freeze_at, seg_conv5_dilation, norm, self._shared_conv4))
            self.feature_cache = FrozenFeatureCache(
                int(frozen_feature_cache_mb * 2**20),
                frozen,
                folder=frozen_feature_cache_dir or None,
                tag=tag,
            )

    def _add_layers(
        self,
        in_channels: int,
        ch: List[int],
        fc_dim: int,
        seg_conv5_dilation: int,
        seg_fc6_dilation: int,
    ) -> None:
        """The shared trunk (conv1-conv3, and conv4 if shared), each branch's conv4/conv5, and
        seg_fc6/fc7."""
        prev = in_channels
        shared_blocks = self._trunk_blocks
        for b in range(shared_blocks):  # shared trunk
            for i in range(_BLOCK_DEPTHS[b]):
                prev = self._add_conv(f"conv{b + 1}_{i + 1}", prev, ch[b], b)
        trunk_out = prev
        for branch, dilation5 in (("det", 1), ("seg", seg_conv5_dilation)):
            prev = trunk_out
            for b, dilation in ((3, 1), (4, dilation5))[shared_blocks - 3 :]:
                for i in range(_BLOCK_DEPTHS[b]):
                    name = f"{branch}_conv{b + 1}_{i + 1}"
                    prev = self._add_conv(name, prev, ch[b], b, dilation=dilation)
        self._add_conv("seg_fc6", ch[4], fc_dim, 5, dilation=seg_fc6_dilation)
        self._add_conv("seg_fc7", fc_dim, fc_dim, 5, kernel_size=1)

    def _add_conv(
        self,
        name: str,
        in_ch: int,
        out_ch: int,
        block: int,
        *,
        dilation: int = 1,
        kernel_size: int = 3,
    ) -> int:
        # "same" padding keeps the resolution of dilated convs (the paper adds padding "when
        # necessary to keep the resolution of feature maps").
        padding = dilation * (kernel_size // 2)
        gn = nn.GroupNorm(math.gcd(32, out_ch), out_ch) if self._norm == "GN" else None
        # detectron2's Conv2d is an nn.Conv2d (same parameter names, so converted VGG-16
        # weights load); with GN the norm's parameters are "<name>.norm.*".
        conv = Conv2d(
            in_ch,
            out_ch,
            kernel_size,
            padding=padding,
            dilation=dilation,
            bias=gn is None,
            norm=gn,
        )
        # He init as torchvision's VGG: without BatchNorm, PyTorch's default init shrinks the
        # signal ~3x per layer, so a from-scratch 16-layer net barely trains. Pre-trained
        # ImageNet weights (tools/convert_vgg16.py) replace it in real runs.
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.constant_(conv.bias, 0.0)
        setattr(self, name, conv)
        self._blocks[block].append(name)
        return out_ch

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A shared conv4 takes the det branch's conv4 of a two-conv4 checkpoint (converted
        # ImageNet / HED weights hold the same layer twice); the seg copy is dropped.
        if self._shared_conv4:
            for key in [k for k in state_dict if k.startswith(f"{prefix}det_conv4_")]:
                rest = key[len(f"{prefix}det_") :]
                if f"{prefix}{rest}" in state_dict:
                    continue
                det = state_dict.pop(key)
                seg = state_dict.pop(f"{prefix}seg_{rest}", None)
                if seg is not None and (seg.shape != det.shape or not torch.equal(seg, det)):
                    logger.warning(
                        "MODEL.VGG.SHARED_CONV4: %s%s loaded from det_%s; the checkpoint's "
                        "different seg_%s is not used",
                        prefix,
                        rest,
                        rest,
                        rest,
                    )
                state_dict[f"{prefix}{rest}"] = det
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def freeze(self, freeze_at: int = 0) -> "VGG16TwoBranch":
        """Stop gradients of the first ``freeze_at`` conv blocks (see ``__init__``).

        Returns:
            self.
        """
        for block in self._blocks[:freeze_at]:
            for name in block:
                for p in getattr(self, name).parameters():
                    p.requires_grad_(False)
        return self

    def _run(self, names: List[str], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = F.relu(getattr(self, name)(x), inplace=True)
        return x

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        # Caffe's VGG pools with ceil rounding; identical to floor on 16-divisible inputs.
        return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)

    def _trunk(self, x: torch.Tensor, start: int = 0, stop: int = 4) -> torch.Tensor:
        """The trunk's blocks ``start + 1 .. stop``: conv1-conv3 with pool1-pool3, then the
        shared conv4 if there is one: (N, C, H, W) -> (N, C', H/8, W/8)."""
        for b in range(start, min(stop, 3)):
            x = self._pool(self._run(self._blocks[b][: _BLOCK_DEPTHS[b]], x))
        if self._shared_conv4 and start < 4 <= stop:
            x = self._run([f"conv4_{i}" for i in (1, 2, 3)], x)
        return x

    @property
    def _trunk_blocks(self) -> int:
        """Conv blocks in the trunk (3, or 4 with the shared conv4)."""
        return 4 if self._shared_conv4 else 3

    def _det(self, x: torch.Tensor, start: int, stop: int = 5) -> torch.Tensor:
        """The det branch's conv blocks ``start + 1 .. stop`` (4: conv4 + pool4, 5: conv5;
        with the shared conv4, pool4 comes with conv5)."""
        if start < 4 <= stop:
            x = self._pool(self._run([f"det_conv4_{i}" for i in (1, 2, 3)], x))
        if start < 5 <= stop:
            if self._shared_conv4:
                x = self._pool(x)
            x = self._run([f"det_conv5_{i}" for i in (1, 2, 3)], x)
        return x

    def _seg(self, x: torch.Tensor, start: int, stop: int = 6) -> torch.Tensor:
        """The seg branch's blocks ``start + 1 .. stop`` (4: conv4, 5: conv5, 6: fc6 + fc7)."""
        if start < 4 <= stop:
            x = self._run([f"seg_conv4_{i}" for i in (1, 2, 3)], x)
        if start < 5 <= stop:
            x = self._run([f"seg_conv5_{i}" for i in (1, 2, 3)], x)
        if start < 6 <= stop:
            x = self.seg_fc_dropout(F.relu(self.seg_fc6(x), inplace=True))
            x = self.seg_fc_dropout(F.relu(self.seg_fc7(x), inplace=True))
        return x

    def _frozen(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Outputs of the frozen blocks (``freeze_at`` 3..5): the trunk's, or each branch's."""
        x = self._trunk(x, 0, self._freeze_at)
        if self._freeze_at <= self._trunk_blocks:
            return {"trunk": x}
        branches = {"det": self._det, "seg": self._seg}
        return {k: branches[k](x, self._trunk_blocks, self._freeze_at) for k in self._out_features}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C, H, W) normalised images (H, W divisible by 16 for exact strides), zero
                padded (as detectron2's ``ImageList``) where the frozen-feature cache is on.

        Returns:
            dict with the requested keys of ``"det"``: (N, 512*width, H/16, W/16) and
            ``"seg"``: (N, SEG_FC_DIM*width, H/8, W/8).
        """
        if self.feature_cache is not None:
            strides = {k: self._out_feature_strides[k] for k in self._out_features}
            if self._freeze_at <= self._trunk_blocks:
                strides = {"trunk": 8}
            cached = self.feature_cache.batch(x, self._frozen, self.size_divisibility, strides)
            start = self._freeze_at
            if "trunk" in cached:
                det_in = seg_in = self._trunk(cached["trunk"], start)
                start = self._trunk_blocks
            else:
                det_in, seg_in = cached.get("det"), cached.get("seg")
        else:
            start = self._trunk_blocks
            det_in = seg_in = self._trunk(x)
        out = {}
        if "det" in self._out_features:
            out["det"] = self._det(det_in, start)
        if "seg" in self._out_features:
            out["seg"] = self._seg(seg_in, start)
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """
        Returns:
            dict[str, ShapeSpec]: channels and stride of each returned feature map.
        """
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        # Four 2x poolings in the det branch: pad inputs to a multiple of 16.
        return 16

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict:
        return {
            "in_channels": input_shape.channels,
            "width": cfg.MODEL.VGG.WIDTH,
            "seg_fc_dim": cfg.MODEL.VGG.SEG_FC_DIM,
            "seg_conv5_dilation": cfg.MODEL.VGG.SEG_CONV5_DILATION,
            "seg_fc6_dilation": cfg.MODEL.VGG.SEG_FC6_DILATION,
            "seg_fc_dropout": cfg.MODEL.VGG.SEG_FC_DROPOUT,
            "shared_conv4": cfg.MODEL.VGG.SHARED_CONV4,
            "out_features": cfg.MODEL.VGG.OUT_FEATURES,
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
            "norm": cfg.MODEL.VGG.NORM,
            "frozen_feature_cache_mb": cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB,
            "frozen_feature_cache_dir": cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR,
        }


@BACKBONE_REGISTRY.register()
def build_r2ios_vgg_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> VGG16TwoBranch:
    """Build :class:`VGG16TwoBranch` from ``cfg.MODEL.VGG.*`` (``MODEL.BACKBONE.NAME:
    "build_r2ios_vgg_backbone"``).

    Args:
        cfg: a config with the r2ios keys (``add_r2ios_config``).
        input_shape: shape of the input image (channels = len(PIXEL_MEAN)).

    Returns:
        the backbone.
    """
    return VGG16TwoBranch(cfg, input_shape)
