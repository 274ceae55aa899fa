#!/usr/bin/env python
"""Plot training scalars of detectron2 runs (their ``metrics.json``) into one PNG.

    python tools/plot_metrics.py --output mask_loss.png \\
        --curve "R2-IOS (v, t = 4)" demo_output/stage1/metrics.json r2ios/loss_mask_t4 \\
        --curve "Mask R-CNN heads" demo_output/mask_rcnn_heads/metrics.json loss_mask
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--curve",
        nargs=3,
        action="append",
        required=True,
        metavar=("LABEL", "METRICS_JSON", "KEY"),
        help="one line of the plot (repeat)",
    )
    parser.add_argument("--output", required=True, help="PNG file")
    parser.add_argument("--title", default="")
    parser.add_argument("--ylabel", default="loss")
    args = parser.parse_args(argv)
    from r2ios_d2.visualization import draw_training_curves, save_figure_atomic

    fig = draw_training_curves([tuple(c) for c in args.curve], args.title, args.ylabel)
    save_figure_atomic(fig, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
