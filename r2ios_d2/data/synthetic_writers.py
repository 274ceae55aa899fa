"""Writers of the synthetic dataset in the real SBD (``.mat``) and VOC2012 (palette PNG) formats.

Layout under the output folder (see :mod:`r2ios_d2.data.synthetic`)::

    SBD/img/<id>.jpg  inst/<id>.mat  cls/<id>.mat  <split>.txt
    VOC2012/JPEGImages/<id>.jpg  SegmentationObject/<id>.png  SegmentationClass/<id>.png
    VOC2012/ImageSets/Segmentation/<split>.txt

The VOC PNGs have 2-pixel void (255) bands on every instance boundary, as VOC has. Every file
is a deterministic function of its input: the ``.mat`` header holds a fixed text instead of
the creation time.
"""

from __future__ import annotations

import io
import os
import shutil
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from .synthetic_render import SYNTHETIC_CLASSES
from .voc_sbd import voc_palette

__all__ = ["make_layout", "write_image", "write_split_files"]

_SUBDIRS = (
    "SBD/img",
    "SBD/inst",
    "SBD/cls",
    "VOC2012/JPEGImages",
    "VOC2012/SegmentationObject",
    "VOC2012/SegmentationClass",
    "VOC2012/ImageSets/Segmentation",
)


def make_layout(out: str) -> None:
    """Create the SBD and VOC2012 folders under ``out`` (which must exist)."""
    for sub in _SUBDIRS:
        os.makedirs(os.path.join(out, sub))


def _void_band(inst_map: np.ndarray) -> np.ndarray:
    """Pixels next to a label change (8-neighbourhood): VOC's void band, 2 px wide."""
    m = inst_map.astype(np.int16)
    pad = np.pad(m, 1, mode="edge")
    h, w = m.shape
    band = np.zeros_like(m, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            band |= pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != m
    # Never void an instance completely.
    for k in np.unique(m):
        if k and not (m == k)[~band].any():
            band[m == k] = False
    return band


def _boundaries(masks: List[np.ndarray]) -> np.ndarray:
    cells = np.empty((len(masks), 1), dtype=object)
    kernel = np.ones((3, 3), np.uint8)
    for k, m in enumerate(masks):
        inner = cv2.erode(m.astype(np.uint8), kernel, borderValue=0).astype(bool)
        cells[k, 0] = scipy.sparse.csc_matrix(m & ~inner)
    return cells


def _savemat(path: str, content: Dict[str, Any]) -> None:
    """``scipy.io.savemat`` (MATLAB 5 format, compressed) with a fixed header text.

    The 116-byte descriptive header normally holds the creation time, which would make two
    runs with the same seed write different bytes.
    """
    buf = io.BytesIO()
    scipy.io.savemat(buf, content, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by r2ios_d2.data.synthetic".ljust(116)
    with open(path, "wb") as f:
        f.write(bytes(data))


def write_image(
    out: str,
    image_id: str,
    image: np.ndarray,
    inst_map: np.ndarray,
    classes: List[int],
    num_classes: int = len(SYNTHETIC_CLASSES),
) -> None:
    """Write one rendered image in both formats under ``out`` (made by :func:`make_layout`).

    Args:
        out: the dataset folder.
        image_id: file stem of every file of the image.
        image: uint8 (H, W, 3) RGB image.
        inst_map: uint8 (H, W) instance map; 0 background, k = instance k (1-based).
        classes: class id (0-based) of each instance.
        num_classes: number of classes of the dataset (``GTcls`` has a boundary per class).
    """
    sbd, voc = os.path.join(out, "SBD"), os.path.join(out, "VOC2012")
    jpg = os.path.join(sbd, "img", f"{image_id}.jpg")
    Image.fromarray(image).save(jpg, quality=90)
    shutil.copyfile(jpg, os.path.join(voc, "JPEGImages", f"{image_id}.jpg"))
    cls_map = np.zeros_like(inst_map)
    for k, c in enumerate(classes):
        cls_map[inst_map == k + 1] = c + 1
    _write_sbd_mats(sbd, image_id, inst_map, cls_map, classes, num_classes)
    _write_voc_pngs(voc, image_id, inst_map, cls_map)


def _write_sbd_mats(
    sbd: str,
    image_id: str,
    inst_map: np.ndarray,
    cls_map: np.ndarray,
    classes: List[int],
    num_classes: int,
) -> None:
    """SBD's ``inst/<id>.mat`` (GTinst) and ``cls/<id>.mat`` (GTcls)."""
    inst_masks = [inst_map == k + 1 for k in range(len(classes))]
    present = sorted({c + 1 for c in classes})
    _savemat(
        os.path.join(sbd, "inst", f"{image_id}.mat"),
        {
            "GTinst": {
                "Segmentation": inst_map,
                "Boundaries": _boundaries(inst_masks),
                "Categories": np.asarray([c + 1 for c in classes], np.uint8).reshape(-1, 1),
            }
        },
    )
    _savemat(
        os.path.join(sbd, "cls", f"{image_id}.mat"),
        {
            "GTcls": {
                "Segmentation": cls_map,
                "Boundaries": _boundaries([cls_map == c + 1 for c in range(num_classes)]),
                "CategoriesPresent": np.asarray(present, np.uint8).reshape(-1, 1),
            }
        },
    )


def _write_voc_pngs(voc: str, image_id: str, inst_map: np.ndarray, cls_map: np.ndarray) -> None:
    """VOC's ``SegmentationObject`` / ``SegmentationClass`` palette PNGs, with void bands."""
    palette = voc_palette(256).reshape(-1).tolist()
    void = _void_band(inst_map)
    for sub, arr in (("SegmentationObject", inst_map), ("SegmentationClass", cls_map)):
        png = Image.fromarray(np.where(void, 255, arr).astype(np.uint8), mode="P")
        png.putpalette(palette)
        png.save(os.path.join(voc, sub, f"{image_id}.png"))


def write_split_files(out: str, split: str, image_ids: Sequence[str]) -> None:
    """The split's id list, ``SBD/<split>.txt`` and ``VOC2012/ImageSets/Segmentation/<split>.txt``.

    Args:
        out: the dataset folder.
        split: ``"train"`` or ``"val"``.
        image_ids: the split's image ids, in order.
    """
    text = "".join(f"{i}\n" for i in image_ids)
    for path in (
        os.path.join(out, "SBD", f"{split}.txt"),
        os.path.join(out, "VOC2012", "ImageSets", "Segmentation", f"{split}.txt"),
    ):
        with open(path, "w") as f:
            f.write(text)
