#!/usr/bin/env python
"""Selective search proposals for a registered dataset or a folder of images.

One ``<out>/<image_id>.npz`` per image (boxes XYXY float32 in original pixels, rank-based
scores, image_id/height/width); resumable; parallel. Examples::

    python tools/selective_search.py --dataset r2ios_synthetic_train --workers 2
    python tools/selective_search.py --images datasets/VOC2012/JPEGImages --out ss/ --mode quality
    python tools/selective_search.py --dataset voc_2012_seg_val --export-pickle ss_val.pkl
    python tools/selective_search.py --register-coco my_train my_coco/train.json my_coco/images \
        --dataset my_train

Without ``--out``, a dataset's proposals go to its metadata's ``proposal_dir`` (where the
loaders look for them by default); for a dataset registered with ``--register-coco NAME JSON
IMAGE_ROOT`` that is ``<folder of JSON>/proposals/NAME/``.

SIGTERM, SIGINT or SIGUSR1 stop it cleanly: one line, exit status 75, the images done so far
kept (the same command continues). A full disk is one line naming the file and the free space,
exit status 1.
"""

import argparse
import glob
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_options import add_register_coco_argument  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def _dataset_items(name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise SystemExit(
            f"Dataset {name!r} is not registered; for your own COCO-format data add "
            f"--register-coco {name} JSON IMAGE_ROOT."
        )
    dicts = DatasetCatalog.get(name)
    items = [(str(d["image_id"]), d["file_name"], d["height"], d["width"]) for d in dicts]
    return items, dicts, MetadataCatalog.get(name).get("proposal_dir", None)


def _folder_items(folder):
    files = sorted(
        f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise SystemExit(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    items = []
    for f in files:
        with Image.open(f) as im:
            w, h = im.size
        items.append((os.path.splitext(os.path.basename(f))[0], f, h, w))
    return items


def build_parser() -> argparse.ArgumentParser:
    """The command line: a dataset or a folder, output, mode, limits, exports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered dataset name")
    src.add_argument("--images", help="folder of images (image_id = file stem)")
    parser.add_argument("--out", help="output folder (default: the dataset's proposal_dir)")
    parser.add_argument("--mode", choices=["fast", "quality"], default="fast")
    parser.add_argument("--max-boxes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--overwrite", action="store_true", help="recompute existing files")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images")
    parser.add_argument("--export-pickle", metavar="FILE", help="also write a detectron2 pickle")
    parser.add_argument("--recall", action="store_true", help="report recall against the GT")
    add_register_coco_argument(parser)
    return parser


def _select_items(args: argparse.Namespace) -> tuple:
    """(items, dataset dicts or None, output folder) of ``--dataset`` or ``--images``, cut
    to ``--limit``; items are (image_id, file_name, height, width)."""
    dicts = None
    if args.dataset:
        items, dicts, default_out = _dataset_items(args.dataset)
        out = args.out or default_out
        if out is None:
            raise SystemExit(f"{args.dataset} has no proposal_dir in its metadata: give --out")
    else:
        if not args.out:
            raise SystemExit("--images needs --out")
        items, out = _folder_items(args.images), args.out
    if args.limit:
        items = items[: args.limit]
        dicts = dicts[: args.limit] if dicts is not None else None
    return items, dicts, out


def _export_pickle(path: str, items: list, out: str) -> None:
    """Gather the ``<out>/<image_id>.npz`` files of ``items`` into one detectron2 pickle."""
    from r2ios_d2.data.proposals import load_proposal_file, write_proposal_pickle

    ids, boxes, scores = [], [], []
    for image_id, _, h, w in items:
        b, s = load_proposal_file(os.path.join(out, f"{image_id}.npz"), image_id, h, w)
        ids.append(image_id)
        boxes.append(b)
        scores.append(s)
    write_proposal_pickle(path, ids, boxes, scores)
    print(f"wrote {path} ({len(ids)} images, {sum(map(len, boxes))} boxes)")


def _compute(items: list, out: str, args: argparse.Namespace) -> dict:
    """compute_proposals, stopped cleanly by a stop signal (exit status 75) or a full disk
    (exit status 1), with one line each."""
    from r2ios_d2.atomic import DiskFullError
    from r2ios_d2.data.selective_search import compute_proposals
    from r2ios_d2.preemption import EXIT_PREEMPTED, Preempted, signal_name, stop_signals

    try:
        with stop_signals():
            return compute_proposals(
                items, out, args.mode, args.max_boxes, args.workers, overwrite=args.overwrite
            )
    except Preempted as e:
        done = sum(os.path.isfile(os.path.join(out, f"{it[0]}.npz")) for it in items)
        logging.getLogger("r2ios_d2").warning(
            "Stopped by %s: %d of %d images have proposals in %s; the same command continues",
            signal_name(e.signum),
            done,
            len(items),
            out,
        )
        raise SystemExit(EXIT_PREEMPTED) from None
    except DiskFullError as e:
        raise SystemExit(f"selective_search.py: error: {e}") from None


def main(argv=None):
    """Compute (or resume) the proposals; optionally export a pickle and report recall."""
    args = build_parser().parse_args(argv)

    import r2ios_d2  # noqa: F401  (registers the datasets)
    from r2ios_d2.data.coco import register_coco_from_args
    from r2ios_d2.data.selective_search import proposal_recall

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    registered = register_coco_from_args(args)
    if registered and args.images:
        raise SystemExit("--register-coco names datasets for --dataset; --images reads a folder")
    items, dicts, out = _select_items(args)

    start = time.perf_counter()
    summary = _compute(items, out, args)
    elapsed = time.perf_counter() - start
    rate = summary["computed"] / elapsed if summary["computed"] else 0.0
    print(
        f"{summary['computed']} images computed ({rate:.2f} img/s, mean "
        f"{summary['mean_boxes']:.0f} boxes), {summary['skipped']} skipped -> {out}"
    )
    if args.export_pickle:
        _export_pickle(args.export_pickle, items, out)
    if args.recall and dicts is not None:
        stats = proposal_recall(dicts, out)
        print("recall: " + ", ".join(f"{k}={v:.3f}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
