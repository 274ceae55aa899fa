#!/usr/bin/env python
"""Draw R2-IOS predictions: final results and the T iterations of the top detections.

    python tools/visualize.py --config-file configs/synthetic/r2ios_tiny_stage2.yaml \\
        --dataset r2ios_synthetic_val --num-images 4 --output demo_output/pictures \\
        MODEL.WEIGHTS demo_output/stage2/model_final.pth

For each image it writes ``<image_id>_result.png`` (detections over the image, detectron2's
Visualizer) and ``<image_id>_trace.png`` (rows = top detections, columns = iterations; dashed
= input box, solid = refined box, mask in the input box, gate's choice framed in red; with
``MODEL.R2IOS.TEST_GATE False`` the output is the last iteration, labelled "last, no gate").
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_options import parse_before_imports  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--image-ids", nargs="*", help="these images instead of the first N")
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--max-instances", type=int, default=4, help="rows of the trace grid")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


parse_before_imports(__name__, build_parser)

import r2ios_d2  # noqa: E402, F401  (first: filters detectron2 v0.6's known-harmless warnings)

# isort: split
import torch  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from tqdm import tqdm  # noqa: E402

from r2ios_d2.config_checks import load_r2ios_config  # noqa: E402
from r2ios_d2.data import build_r2ios_test_loader  # noqa: E402
from r2ios_d2.engine import R2IOSCheckpointer, exit_on_usage_error  # noqa: E402
from r2ios_d2.visualization import draw_detections, draw_trace, save_figure_atomic  # noqa: E402


def main(argv=None) -> list:
    """Draw the pictures of the command line ``argv``; returns the paths written."""
    parser = build_parser()
    args = parser.parse_args(argv)

    with exit_on_usage_error(parser):  # a misspelt key: one line, exit status 2
        cfg, _ = load_r2ios_config(args.config_file, args.opts)
    cfg.MODEL.R2IOS.TEST_RECORD_TRACE = True
    cfg.freeze()
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset)

    model = build_model(cfg)
    R2IOSCheckpointer.for_config(model, cfg).load(cfg.MODEL.WEIGHTS)
    model.eval()

    wanted = set(args.image_ids or [])
    written = []
    loader = build_r2ios_test_loader(cfg, dataset)
    todo = len(wanted) if wanted else args.num_images
    with torch.no_grad(), tqdm(total=todo, desc="visualize") as bar:
        for (inp,) in loader:
            image_id = str(inp["image_id"])
            if wanted and image_id not in wanted:
                continue
            inst = model([inp])[0]["instances"].to("cpu")
            image = read_image(inp["file_name"], format="RGB")
            result = os.path.join(args.output, f"{image_id}_result.png")
            save_figure_atomic(draw_detections(image, inst, metadata, args.score_thresh), result)
            trace = os.path.join(args.output, f"{image_id}_trace.png")
            fig = draw_trace(
                image,
                inst,
                metadata,
                inst.trace_boxes,  # in the frame of pred_boxes: the original image
                inst.trace_proposals,
                max_instances=args.max_instances,
                mask_threshold=cfg.MODEL.R2IOS.MASK_THRESHOLD,
                gate=cfg.MODEL.R2IOS.TEST_GATE,
            )
            save_figure_atomic(fig, trace)
            written += [result, trace]
            bar.update(1)
            if bar.n >= todo:
                break
    print(f"wrote {len(written)} pictures to {args.output}")
    return written


if __name__ == "__main__":
    main()
