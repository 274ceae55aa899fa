#!/usr/bin/env python
"""Convert torchvision's ImageNet VGG-16 weights into an R2-IOS initialisation checkpoint.

    python tools/convert_vgg16.py vgg16-397923af.pth checkpoints/vgg16_r2ios_init.pth

The input is a ``torchvision.models.vgg16`` state dict (e.g. ``vgg16-397923af.pth``, fetched
on a machine with network access). The output is a detectron2 checkpoint of tensors only
(``{"model": ..., "__author__": ...}``) that ``MODEL.WEIGHTS`` loads; see
``r2ios_d2/engine/vgg_weights.py`` for the layer mapping. Use it with ``INPUT.FORMAT: RGB`` and
torchvision's normalisation, as configs/Base-R2IOS-VGG16.yaml does.
"""

from __future__ import annotations

import argparse

import torch

from r2ios_d2.engine import atomic_torch_save
from r2ios_d2.engine.vgg_weights import convert_torchvision_vgg16


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision VGG-16 state dict (.pth)")
    parser.add_argument("output", help="R2-IOS initialisation checkpoint (.pth)")
    parser.add_argument("--seg-fc-dim", type=int, default=1024, help="= MODEL.VGG.SEG_FC_DIM")
    args = parser.parse_args(argv)
    state = torch.load(args.input, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    converted = convert_torchvision_vgg16(state, seg_fc_dim=args.seg_fc_dim)
    atomic_torch_save(
        {"model": converted, "__author__": "r2ios_d2 tools/convert_vgg16.py"}, args.output
    )
    print(f"wrote {len(converted)} tensors to {args.output}")


if __name__ == "__main__":
    main()
