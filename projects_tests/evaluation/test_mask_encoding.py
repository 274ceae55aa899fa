"""Dense masks -> RLE near their boxes: the same ``counts`` as pycocotools' encoding of the
full-image masks, whatever the masks, boxes and memory layout."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.layers.mask_ops import paste_masks_in_image

from r2ios_d2.evaluation import encode_masks_in_boxes, mask_encoding
from r2ios_d2.evaluation.mask_encoding import box_windows


@pytest.fixture
def windows_only(monkeypatch):
    """Fail if a mask is encoded whole: every mask must be read within its box's window."""

    def whole(masks):
        raise AssertionError(f"{len(masks)} mask(s) with foreground outside the box window")

    monkeypatch.setattr(mask_encoding, "encode_masks", whole)


def reference(masks: np.ndarray) -> list:
    """pycocotools' encoding of (N, H, W) masks, with ``str`` counts."""
    f = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode()}
        for r in mask_util.encode(f)
    ]


def assert_encodes_like_pycocotools(masks: np.ndarray, boxes) -> None:
    expected = reference(masks)
    assert encode_masks_in_boxes(masks, boxes) == expected
    # Any memory layout: column-major per mask, as pycocotools.mask.decode returns them.
    f = np.asfortranarray(masks.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert encode_masks_in_boxes(f, boxes) == expected


def blob(h: int, w: int, box, rng: np.random.RandomState, holes: bool = False) -> np.ndarray:
    """A random ellipse-ish mask inside the pixels whose centres lie in ``box`` (XYXY)."""
    yy, xx = np.mgrid[:h, :w] + 0.5
    x0, y0, x1, y1 = box
    inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    m = inside & (d <= rng.uniform(0.5, 1.5))
    if holes:
        m &= ~(d < 0.15) & (rng.rand(h, w) > 0.2)
    return m


def random_boxes(rng: np.random.RandomState, n: int, h: int, w: int) -> np.ndarray:
    """Fractional boxes, some reaching past the image border."""
    x0 = rng.uniform(-5, w, n)
    y0 = rng.uniform(-5, h, n)
    return np.stack(
        [x0, y0, x0 + rng.uniform(0.3, w / 2, n), y0 + rng.uniform(0.3, h / 2, n)], axis=1
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_in_their_boxes(seed, windows_only):
    rng = np.random.RandomState(seed)
    h, w = rng.randint(5, 40), rng.randint(5, 40)
    boxes = random_boxes(rng, 30, h, w)
    masks = np.stack([blob(h, w, b, rng, holes=i % 3 == 0) for i, b in enumerate(boxes)])
    assert_encodes_like_pycocotools(masks, boxes)


def test_edge_cases(windows_only):
    h, w = 12, 9
    cases = []  # (mask, box)
    m = np.zeros((h, w), bool)
    cases.append((m, [2.0, 2.0, 5.0, 5.0]))  # empty
    cases.append((~m, [0.0, 0.0, w, h]))  # full image: the last run ends the image
    m = np.zeros((h, w), bool)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True  # touches every border, a hole inside
    cases.append((m, [0.0, 0.0, w, h]))
    m = np.zeros((h, w), bool)
    m[:, 3:6] = True  # full columns: its runs join across columns
    cases.append((m, [2.6, -4.0, 6.2, h + 3.0]))  # box clipped at the border
    m = np.zeros((h, w), bool)
    m[h - 1, w - 1] = True  # only the last pixel
    cases.append((m, [w - 1.0, h - 1.0, w + 0.0, h + 0.0]))  # 1-pixel box
    m = np.zeros((h, w), bool)
    m[0, 0] = True
    cases.append((m, [0.0, 0.0, 1.0, 1.0]))
    m = np.zeros((h, w), bool)
    m[4, 5] = True
    cases.append((m, [5.2, 4.1, 5.7, 4.9]))  # fractional box inside one pixel
    m = np.zeros((h, w), bool)
    m[h - 3 :, 2:4] = True  # reaches the bottom: the window's extra row is above it
    cases.append((m, [2.0, h - 3.0, 4.0, h + 0.0]))
    m = np.zeros((h, w), bool)
    m[2:5, 2:5] = True
    m[3, 3] = False  # a hole
    cases.append((m, [1.5, 1.5, 5.5, 5.5]))
    masks = np.stack([c[0] for c in cases])
    boxes = np.array([c[1] for c in cases])
    assert_encodes_like_pycocotools(masks, boxes)
    for k in range(len(cases)):  # alone, too
        assert_encodes_like_pycocotools(masks[k : k + 1], boxes[k : k + 1])


def test_foreground_outside_the_box_is_still_encoded():
    rng = np.random.RandomState(0)
    h, w = 20, 16
    boxes = random_boxes(rng, 12, h, w)
    masks = np.stack([blob(h, w, b, rng) for b in boxes])
    masks[1, 0, 0] = True  # far from its box
    masks[4] = rng.rand(h, w) > 0.5  # noise everywhere
    masks[7, :, :] = False
    masks[7, h - 1, w - 1] = True  # only outside
    # Just below the window (its extra stored row), next to foreground at the top of the next
    # column: read as one run, these would join.
    masks[8] = False
    boxes[8] = [2.0, 2.0, 5.0, 5.0]  # window: rows 1..5, columns 1..5
    masks[8, 6, 3] = masks[8, 1, 4] = masks[8, 3, 3] = True
    masks[9] = False
    boxes[9] = [2.0, h - 4.0, 5.0, h + 0.0]  # at the bottom: the extra row is above
    masks[9, h - 6, 4] = masks[9, h - 1, 3] = True
    assert_encodes_like_pycocotools(masks, boxes)
    assert_encodes_like_pycocotools(masks, np.zeros_like(boxes))  # empty windows
    assert_encodes_like_pycocotools(masks, None)  # no boxes: the whole image
    bad = boxes.copy()
    bad[2] = [np.nan, 0.0, np.inf, 3.0]  # non-finite: the whole image
    bad[3] = [10.0, 10.0, 2.0, 2.0]  # inverted
    assert_encodes_like_pycocotools(masks, bad)


def test_image_of_one_row_or_one_column():
    rng = np.random.RandomState(1)
    for h, w in ((1, 17), (17, 1), (1, 1)):
        masks = rng.rand(6, h, w) > 0.5
        boxes = np.tile([0.0, 0.0, w, h], (6, 1))
        assert_encodes_like_pycocotools(masks, boxes)


def test_non_bool_masks_are_foreground_where_nonzero():
    rng = np.random.RandomState(2)
    masks = rng.rand(4, 10, 11) > 0.6
    boxes = np.tile([0.0, 0.0, 11.0, 10.0], (4, 1))
    expected = reference(masks)
    assert encode_masks_in_boxes(masks.astype(np.uint8) * 3, boxes) == expected
    assert encode_masks_in_boxes(masks.astype(np.float32), boxes) == expected
    assert encode_masks_in_boxes(np.zeros((0, 10, 11), bool), np.zeros((0, 4))) == []
    with pytest.raises(ValueError):
        encode_masks_in_boxes(masks, boxes[:3])


def test_pasted_masks_lie_within_their_box_windows(windows_only):
    # The evaluator's input: M x M probabilities pasted into the image at fractional boxes
    # (detector_postprocess). The fast path covers them: no foreground outside the windows.
    torch.manual_seed(0)
    rng = np.random.RandomState(3)
    h, w = 37, 53
    boxes = random_boxes(rng, 64, h, w)
    boxes[:8, 2:] = boxes[:8, :2] + rng.uniform(0.05, 1.0, (8, 2))  # tiny boxes
    probs = torch.rand(64, 14, 14)
    probs[::3] = 1.0  # full boxes: every pixel whose centre is inside
    masks = paste_masks_in_image(probs, torch.from_numpy(boxes).float(), (h, w), threshold=0.5)
    masks = masks.numpy()
    win = box_windows(boxes, h, w)
    for m, (x0, y0, x1, y1) in zip(masks, win):
        assert m.sum() == m[y0:y1, x0:x1].sum()
    assert_encodes_like_pycocotools(masks, boxes)


def test_box_windows_cover_the_box_and_clip():
    win = box_windows(np.array([[2.5, 3.2, 7.0, 9.9], [-3.0, -1.0, 100.0, 4.0]]), 20, 30)
    np.testing.assert_array_equal(win, [[1, 2, 8, 11], [0, 0, 30, 5]])
