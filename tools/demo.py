#!/usr/bin/env python
"""Run R2-IOS on your own images: one picture per image, optionally COCO-style JSON results.

    python tools/demo.py --config-file configs/synthetic/r2ios_tiny_stage1.yaml \\
        --input photo.jpg more_photos/ "shots/*.png" --output demo_output/mine --json --trace \\
        --confidence-threshold 0.5 --opts MODEL.WEIGHTS demo_output/stage2/model_final.pth

Config overrides come after ``--opts`` as in detectron2's ``demo/demo.py`` (or, equally, as
trailing ``KEY VALUE`` pairs without it).

Proposals: selective search on the fly (as ``tools/selective_search.py``), or your own from
``--proposals-dir DIR`` (``DIR/<file stem>.npz``, the format of ``tools/selective_search.py``),
or the model's RPN if the config has one. Writes ``<stem>.png`` (detections, detectron2's
Visualizer), with ``--trace`` ``<stem>_trace.png`` (the T iterations of the top detections)
and with ``--json`` ``results.json`` (COCO results: ``image_id``, ``file_name``,
``category_id``, ``bbox`` XYWH, ``score``, ``segmentation`` RLE).

Class names and category ids, the first found of: ``--class-names``; the first
``--register-coco NAME JSON IMAGE_ROOT`` dataset; ``dataset_metadata.json`` beside
``MODEL.WEIGHTS`` (the trainers write it into their output folder); the registered
``DATASETS.TEST[0]``; else ``class_0 .. class_{K-1}``. In ``results.json``, ``category_id`` is
the dataset's own id (e.g. a COCO json's) where the metadata maps it, and ``image_id`` is the
image's id in a ``--register-coco`` dataset when the image is one of its files, else the file
stem (an int when it is all digits, as COCO's ``000000000139.jpg``).

Unreadable images are reported and skipped; the exit status is 0 if at least one image
succeeded, 1 if all failed, 2 if no image matched ``--input`` or for a usage error (a
misspelt config key, one line on stderr).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_options import add_register_coco_argument  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

logger = logging.getLogger("r2ios_d2.demo")


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files, folders (their images, not recursive) and glob patterns -> sorted unique paths.

    A named file is kept whatever its extension (so that an unreadable one is reported, not
    silently dropped); folders and globs contribute files with an image extension only.
    """
    found: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            candidates = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
        elif os.path.isfile(pattern):
            found.append(pattern)
            continue
        else:
            candidates = sorted(glob.glob(os.path.expanduser(pattern)))
            if not candidates:
                logger.warning("--input %s matches nothing", pattern)
        found.extend(
            c for c in candidates if os.path.isfile(c) and c.lower().endswith(IMAGE_EXTENSIONS)
        )
    seen, unique = set(), []
    for path in found:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _generic_metadata(num_classes: int) -> Any:
    from detectron2.data.catalog import Metadata

    return Metadata(name="r2ios_demo", thing_classes=[f"class_{i}" for i in range(num_classes)])


def _metadata_candidates(
    cfg: Any, class_names: Optional[Sequence[str]], registered: Sequence[str]
) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(source, metadata dict) of every place class names may come from, in priority order."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from r2ios_d2.engine.run_metadata import METADATA_FILE, load_dataset_metadata

    if class_names:
        yield "--class-names", {"thing_classes": list(class_names)}
    for name in registered:
        yield name, MetadataCatalog.get(name).as_dict()
    saved = os.path.join(os.path.dirname(cfg.MODEL.WEIGHTS), METADATA_FILE)
    if cfg.MODEL.WEIGHTS and os.path.isfile(saved):
        yield saved, load_dataset_metadata(saved)
    test = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
    if test in DatasetCatalog.list():
        yield test, MetadataCatalog.get(test).as_dict()


def demo_metadata(
    cfg: Any, class_names: Optional[Sequence[str]] = None, registered: Sequence[str] = ()
) -> Any:
    """Class names (and the dataset's category ids, where known) of the model's outputs.

    The first of: ``class_names``; the datasets ``registered`` (loaded: COCO-format datasets
    get their classes when read); ``dataset_metadata.json`` beside ``MODEL.WEIGHTS``;
    ``DATASETS.TEST[0]`` if registered; whose number of classes is
    ``MODEL.ROI_HEADS.NUM_CLASSES`` (others are skipped with a warning). Else generic names
    ``class_0 .. class_{K-1}``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.catalog import Metadata

    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for source, meta in _metadata_candidates(cfg, class_names, registered):
        classes = list(meta.get("thing_classes") or [])
        if not classes:
            continue
        if len(classes) != num_classes:
            logger.warning(
                "%s has %d classes but MODEL.ROI_HEADS.NUM_CLASSES is %d: not used",
                source,
                len(classes),
                num_classes,
            )
            continue
        logger.info("Class names from %s", source)
        if source in DatasetCatalog.list():  # a dataset's own (with its colours, if any)
            return MetadataCatalog.get(source)
        out = Metadata(name="r2ios_demo", thing_classes=classes)
        id_map = meta.get("thing_dataset_id_to_contiguous_id")
        if id_map:
            out.thing_dataset_id_to_contiguous_id = {int(k): int(v) for k, v in id_map.items()}
        return out
    return _generic_metadata(num_classes)


def registered_image_ids(names: Sequence[str]) -> Dict[str, Any]:
    """``{absolute image path: image_id}`` of the images of the datasets ``names``."""
    from detectron2.data import DatasetCatalog

    ids: Dict[str, Any] = {}
    for name in names:
        for d in DatasetCatalog.get(name):
            ids.setdefault(os.path.abspath(d["file_name"]), d["image_id"])
    return ids


def json_image_id(path: str, name: str, known: Dict[str, Any]) -> Any:
    """The ``image_id`` of ``path`` in ``results.json``: its id in a registered dataset, else
    ``name`` (the file stem, made unique), as an int when it is all digits."""
    image_id = known.get(os.path.abspath(path))
    if image_id is not None:
        return image_id
    return int(name) if name.isdigit() else name


def _output_names(paths: Sequence[str]) -> List[str]:
    """File stems, made unique (``a``, ``a_1``, ...) when two inputs share one."""
    used: Dict[str, int] = {}
    names = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        n = used.get(stem, 0)
        used[stem] = n + 1
        names.append(stem if n == 0 else f"{stem}_{n}")
    return names


def _to_coco(instances: Any, image_id: Any, file_name: str, metadata: Any) -> List[Dict[str, Any]]:
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    results = instances_to_coco_json(instances, image_id)
    to_dataset_id = {v: k for k, v in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
    for r in results:
        r["category_id"] = to_dataset_id.get(r["category_id"], r["category_id"])
        r["file_name"] = file_name
    return results


def _process(
    predictor: Any,
    path: str,
    name: str,
    args: argparse.Namespace,
    metadata: Any,
) -> Tuple[List[str], Any, Tuple[int, int]]:
    """Predict and draw one image; returns (written files, instances, (H, W))."""
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.logger import log_first_n

    from r2ios_d2.data.proposals import load_proposal_file
    from r2ios_d2.visualization import draw_detections, draw_trace, save_figure_atomic

    image = read_image(path, format="BGR")  # applies EXIF orientation, like detectron2's demo
    h, w = image.shape[:2]
    proposals = scores = None
    if args.proposals_dir:
        stem = os.path.splitext(os.path.basename(path))[0]
        proposals, scores = load_proposal_file(
            os.path.join(args.proposals_dir, f"{stem}.npz"), stem, h, w
        )
    out = predictor(image, proposals, proposal_scores=scores, return_trace=args.trace)
    inst = out["instances"]
    rgb = image[:, :, ::-1]
    written = [os.path.join(args.output, f"{name}.png")]
    save_figure_atomic(draw_detections(rgb, inst, metadata, args.confidence_threshold), written[0])
    if args.trace:
        trace = out["trace"]
        init = trace["proposals"]
        if init is None:
            # ROI heads without trace_proposals: l_1 stands in for l_0 in the first column.
            log_first_n(
                logging.WARNING,
                "The ROI heads record no trace_proposals: l_1 is drawn as l_0",
                name=logger.name,
            )
            init = trace["boxes"][:, 0]
        traced = inst[:]  # a shallow copy carrying the trace fields draw_trace reads
        traced.trace_scores = trace["scores"]
        traced.trace_classes = trace["classes"]
        traced.trace_masks = trace["masks"]
        traced.gate_iteration = trace["gate_iteration"]
        fig = draw_trace(
            rgb,
            traced,
            metadata,
            trace["boxes"],
            init,
            max_instances=args.max_instances,
            mask_threshold=predictor.cfg.MODEL.R2IOS.MASK_THRESHOLD,
            gate=predictor.cfg.MODEL.R2IOS.TEST_GATE,
        )
        written.append(os.path.join(args.output, f"{name}_trace.png"))
        save_figure_atomic(fig, written[-1])
    return written, inst, (h, w)


def build_parser() -> argparse.ArgumentParser:
    """The command line (standard library only: parsed before torch is imported)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, folders or glob patterns"
    )
    parser.add_argument("--output", required=True, help="folder for the pictures and JSON")
    parser.add_argument(
        "--proposals-dir", help="use DIR/<image stem>.npz as proposals instead of selective search"
    )
    parser.add_argument("--json", action="store_true", help="write <output>/results.json")
    parser.add_argument("--trace", action="store_true", help="write <stem>_trace.png too")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the detections drawn and saved (ROI_HEADS.SCORE_THRESH_TEST)",
    )
    parser.add_argument("--max-instances", type=int, default=4, help="rows of the trace picture")
    parser.add_argument(
        "--class-names",
        type=lambda text: [n.strip() for n in text.split(",")],
        metavar="NAME,NAME,...",
        help="the names of the model's classes 0..K-1, comma-separated (default: see the top "
        "of this file)",
    )
    add_register_coco_argument(parser)  # class names, category ids and image ids from it
    parser.add_argument(
        "--ss-mode", choices=["fast", "quality"], default="fast", help="selective search mode"
    )
    parser.add_argument(
        "--opts",
        dest="flag_opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides KEY VALUE ... (as detectron2's demo/demo.py; must come last)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... (same as --opts)"
    )
    return parser


def _demo_cfg(args: argparse.Namespace) -> Any:
    """The frozen config: ``--config-file``, the overrides (checked), ``--confidence-threshold``.

    Raises:
        ConfigError: a missing file, an unknown key or a bad value.
    """
    from r2ios_d2.config_checks import load_r2ios_config

    cfg, _ = load_r2ios_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    return cfg


def _print_summary(
    num_paths: int, written: List[str], failed: List[Tuple[str, str]], output: str
) -> int:
    """Print how many images succeeded and why the others failed; returns the exit status."""
    ok = num_paths - len(failed)
    print(f"{ok} of {num_paths} images done, {len(written)} files written to {output}")
    if failed:
        print(f"{len(failed)} failed:")
        for path, reason in failed:
            print(f"  {path}: {reason}")
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit status (0: at least one image succeeded).

    Raises:
        SystemExit: status 2 for a usage error (a misspelt config key, ``--class-names`` of
            the wrong length), with one line on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.opts = [*args.opts, *args.flag_opts]

    from tqdm import tqdm

    from r2ios_d2 import R2IOSPredictor
    from r2ios_d2.data.coco import register_coco_from_args
    from r2ios_d2.engine import atomic_write_text, exit_on_usage_error

    paths = expand_inputs(args.input)
    if not paths:
        logger.error("No images match --input %s", " ".join(args.input))
        print(f"no images match --input {' '.join(args.input)}")
        return 2

    with exit_on_usage_error(parser):
        cfg = _demo_cfg(args)
    if args.proposals_dir and cfg.MODEL.PROPOSAL_GENERATOR.NAME != "PrecomputedProposals":
        raise SystemExit("--proposals-dir needs MODEL.PROPOSAL_GENERATOR.NAME PrecomputedProposals")
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if args.class_names and len(args.class_names) != num_classes:
        parser.error(
            f"--class-names gives {len(args.class_names)} names but MODEL.ROI_HEADS.NUM_CLASSES "
            f"is {num_classes}"
        )
    registered = register_coco_from_args(args)
    known_ids = registered_image_ids(registered)  # loads them: COCO classes are set on load
    metadata = demo_metadata(cfg, args.class_names, registered)
    predictor = R2IOSPredictor(cfg, return_trace=args.trace, ss_mode=args.ss_mode)

    os.makedirs(args.output, exist_ok=True)
    written: List[str] = []
    results: List[Dict[str, Any]] = []
    images: List[Dict[str, Any]] = []
    failed: List[Tuple[str, str]] = []
    for path, name in tqdm(list(zip(paths, _output_names(paths))), desc="R2-IOS demo", unit="img"):
        image_id = json_image_id(path, name, known_ids)
        try:
            files, inst, (h, w) = _process(predictor, path, name, args, metadata)
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            logger.error("Skipping %s: %s: %s", path, type(e).__name__, e)
            failed.append((path, f"{type(e).__name__}: {e}"))
            continue
        written.extend(files)
        images.append({"id": image_id, "file_name": path, "height": h, "width": w})
        results.extend(_to_coco(inst, image_id, path, metadata))
        logger.info("%s: %d detections", path, len(inst))

    if args.json and images:
        json_path = os.path.join(args.output, "results.json")
        atomic_write_text(json.dumps(results), json_path)
        written.append(json_path)
    return _print_summary(len(paths), written, failed, args.output)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
