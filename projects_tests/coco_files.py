"""A small COCO-format dataset as a newcomer's own would be: category ids 3, 7, 11, 15 (not
1..K), polygons, RLE and a crowd region, images in a folder."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util

CATEGORY_IDS = (3, 7, 11, 15)
CATEGORY_NAMES = ("cat", "dog", "cow", "owl")
H, W = 64, 80


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def write_coco4(folder: str, image_ids: Sequence[int], name: str = "train.json") -> str:
    """``<folder>/<name>`` and ``<folder>/images/<id>.png``: per image one polygon instance,
    one RLE instance and one crowd region, cycling through the four categories.

    Returns:
        the json's path.
    """
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for n, image_id in enumerate(image_ids):
        file_name = f"{image_id:06d}.png"
        image = rng.integers(0, 80, (H, W, 3), dtype=np.uint8)
        image[8:40, 6:38] = (40, 40, 220)
        image[30:60, 44:76] = (40, 200, 40)
        cv2.imwrite(os.path.join(folder, "images", file_name), image)
        images.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
        polygon = [6.0, 8.0, 38.0, 8.0, 38.0, 40.0, 6.0, 40.0]
        rle = mask_util.encode(np.asfortranarray(_box_mask(44, 30, 76, 60)))
        rle["counts"] = rle["counts"].decode()
        crowd = mask_util.encode(np.asfortranarray(_box_mask(0, 56, 20, 64)))
        crowd["counts"] = crowd["counts"].decode()
        for k, (segm, bbox, iscrowd) in enumerate(
            (
                ([polygon], [6.0, 8.0, 32.0, 32.0], 0),
                (rle, [44.0, 30.0, 32.0, 30.0], 0),
                (crowd, [0.0, 56.0, 20.0, 8.0], 1),
            )
        ):
            annotations.append(
                {
                    "id": 100 * image_id + k,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[(n + k) % len(CATEGORY_IDS)],
                    "segmentation": segm,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": iscrowd,
                }
            )
    categories = [{"id": i, "name": c} for i, c in zip(CATEGORY_IDS, CATEGORY_NAMES)]
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path
