"""Rendering of the synthetic instance segmentation images (see :mod:`r2ios_d2.data.synthetic`).

:func:`render_image` draws one image from a random generator (a deterministic function of its
state): a cluttered background, groups of overlapping same-class objects and single objects of
the five :data:`SYNTHETIC_CLASSES` in a random depth order, each with its class's shape and
texture, and thin foreground occluders; why each of these is there is explained in
:mod:`r2ios_d2.data.synthetic`. An object less than 30 % (or 40 pixels) visible is not drawn.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_COLORS", "render_image"]

SYNTHETIC_CLASSES: Tuple[str, ...] = ("disc", "tile", "leaf", "star", "ring")
SYNTHETIC_COLORS: List[Tuple[int, int, int]] = [
    (230, 80, 40),
    (40, 90, 220),
    (40, 170, 60),
    (240, 210, 30),
    (160, 60, 200),
]
# An instance must keep this much of itself visible, else it is not drawn.
_MIN_VISIBLE_FRAC = 0.3
_MIN_VISIBLE_PIXELS = 40


def _jitter_color(rng: np.random.Generator, base: Sequence[int], amount: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, amount, 3), 0, 255)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered background (float32 HxWx3 RGB): gradient, blotches, noise, distractors."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    angle = rng.uniform(0, np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / (h + w)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    # Low-frequency blotches.
    small = rng.normal(0, 25, (max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
    img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, (h, w, 3))
    canvas = np.ascontiguousarray(img.astype(np.float32))
    # Distractors: not objects. Greyish blobs, lines and textured polygons.
    for _ in range(int(rng.integers(2, 7))):
        kind = rng.integers(0, 3)
        grey = rng.uniform(50, 210)
        color = tuple(float(v) for v in np.clip(grey + rng.normal(0, 20, 3), 0, 255))
        if kind == 0:  # blob
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(3, 12)), int(rng.integers(3, 12)))
            cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        elif kind == 1:  # line
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(canvas, p0, p1, color, int(rng.integers(1, 3)))
        else:  # textured irregular patch
            pts = _random_polygon(rng, w, h, radius=rng.uniform(8, 22), n=int(rng.integers(5, 9)))
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [pts], 1)
            noise = rng.normal(0, 30, (h, w, 1)).astype(np.float32)
            tex = np.asarray(color, np.float32)[None, None] + noise
            canvas[mask.astype(bool)] = tex[mask.astype(bool)]
    return canvas


def _random_polygon(rng: np.random.Generator, w: int, h: int, radius: float, n: int) -> np.ndarray:
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.0, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def _shape_mask(
    cls: int, h: int, w: int, cx: float, cy: float, size: float, angle: float, aspect: float
) -> np.ndarray:
    """Full (amodal) boolean mask of one object of class ``cls``."""
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    center = (int(round(cx)), int(round(cy)))
    deg = float(np.degrees(angle))
    if cls == 0:  # disc: ellipse
        cv2.ellipse(mask, center, (max(2, int(r)), max(2, int(r * aspect))), deg, 0, 360, 1, -1)
    elif cls == 1:  # tile: rotated rectangle
        box = cv2.boxPoints(((cx, cy), (size, size * aspect), deg))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif cls == 2:  # leaf: kite
        a = np.array([0, np.pi / 2, np.pi, 3 * np.pi / 2]) + angle
        rr = np.array([r, r * 0.45 * aspect, r * 0.8, r * 0.45 * aspect])
        pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif cls == 3:  # star: five points
        a = angle + np.arange(10) * np.pi / 5
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:  # ring: annulus
        outer = (max(3, int(r)), max(3, int(r * aspect)))
        inner = (max(1, int(outer[0] * 0.5)), max(1, int(outer[1] * 0.5)))
        cv2.ellipse(mask, center, outer, deg, 0, 360, 1, -1)
        cv2.ellipse(mask, center, inner, deg, 0, 360, 0, -1)
    return mask.astype(bool)


def _texture(
    rng: np.random.Generator, cls: int, h: int, w: int, cx: float, cy: float, size: float
) -> np.ndarray:
    """Appearance of one object of class ``cls`` over the whole image (float32 HxWx3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = _jitter_color(rng, SYNTHETIC_COLORS[cls], 18)
    if cls == 0:  # radial shading
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(size / 2, 1)
        tex = base[None, None] * (1.05 - 0.45 * np.clip(d, 0, 1))[..., None]
    elif cls == 1:  # stripes of two colours
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(3, 7)
        s = ((xx * np.cos(theta) + yy * np.sin(theta)) / period) % 2 < 1
        other = _jitter_color(rng, (225, 225, 235), 15)
        tex = np.where(s[..., None], base[None, None], other[None, None])
    elif cls == 2:  # checker of the colour and a darker shade
        p = int(rng.integers(3, 6))
        s = ((xx // p + yy // p) % 2).astype(bool)
        tex = np.where(s[..., None], base[None, None], 0.55 * base[None, None])
    else:  # star, ring: flat
        tex = np.broadcast_to(base[None, None], (h, w, 3))
    tex = tex + rng.normal(0, 8, (h, w, 1))
    return tex.astype(np.float32)


def _visible(masks: List[np.ndarray], h: int, w: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    label = np.zeros((h, w), np.int32)
    for k, m in enumerate(masks):
        label[m] = k + 1
    return label, [label == k + 1 for k in range(len(masks))]


def _place_objects(rng: np.random.Generator, h: int, w: int) -> List[Dict[str, Any]]:
    """Object parameters in painting (depth) order: groups of same-class objects + singles."""
    objs = []
    side = min(h, w)
    num_groups = int(rng.integers(1, 4))
    for _ in range(num_groups):
        cls = int(rng.integers(0, len(SYNTHETIC_CLASSES)))
        n = int(rng.choice([1, 2, 2, 3, 3, 4]))
        size = float(np.exp(rng.uniform(np.log(0.12 * side), np.log(0.5 * side))))
        cx, cy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
        for _ in range(n):
            s = size * rng.uniform(0.8, 1.2)
            objs.append(dict(cls=cls, cx=cx, cy=cy, size=s))
            step = s * rng.uniform(0.3, 0.7)
            a = rng.uniform(0, 2 * np.pi)
            cx = float(np.clip(cx + step * np.cos(a), 0, w - 1))
            cy = float(np.clip(cy + step * np.sin(a), 0, h - 1))
    for _ in range(int(rng.integers(0, 3))):
        size = float(np.exp(rng.uniform(np.log(0.12 * side), np.log(0.5 * side))))
        objs.append(
            dict(
                cls=int(rng.integers(0, len(SYNTHETIC_CLASSES))),
                cx=rng.uniform(0, w),
                cy=rng.uniform(0, h),
                size=size,
            )
        )
    order = rng.permutation(len(objs))
    objs = [objs[i] for i in order]
    for o in objs:
        o["angle"] = float(rng.uniform(0, 2 * np.pi))
        o["aspect"] = float(rng.uniform(0.6, 1.0))
    return objs


def render_image(
    rng: np.random.Generator, h: int, w: int
) -> Tuple[np.ndarray, np.ndarray, List[int], List[int]]:
    """Render one synthetic image.

    Args:
        rng: random generator (the image is a deterministic function of its state).
        h, w: image size.

    Returns:
        image: uint8 (h, w, 3) RGB.
        inst_map: uint8 (h, w); 0 background, k = instance k (1-based, depth order).
        classes: class id (0-based) of each instance.
        amodal_areas: pixel count of each instance's full shape (before occlusion).
    """
    canvas = _background(rng, h, w)
    objs = _place_objects(rng, h, w)
    masks = [
        _shape_mask(o["cls"], h, w, o["cx"], o["cy"], o["size"], o["angle"], o["aspect"])
        for o in objs
    ]
    keep = [i for i, m in enumerate(masks) if m.sum() >= _MIN_VISIBLE_PIXELS]
    # Drop the most occluded object until every drawn one is visible enough.
    while keep:
        _, vis = _visible([masks[i] for i in keep], h, w)
        fracs = [v.sum() / max(masks[i].sum(), 1) for v, i in zip(vis, keep)]
        ok = [f >= _MIN_VISIBLE_FRAC and v.sum() >= _MIN_VISIBLE_PIXELS for f, v in zip(fracs, vis)]
        if all(ok):
            break
        keep.pop(int(np.argmin(fracs)))
    label, vis = _visible([masks[i] for i in keep], h, w)
    for k, i in enumerate(keep):
        o = objs[i]
        tex = _texture(rng, o["cls"], h, w, o["cx"], o["cy"], o["size"])
        canvas[vis[k]] = tex[vis[k]]
    # Foreground occluders that cut objects into pieces.
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
        pole = np.zeros((h, w), np.uint8)
        p0 = (int(rng.integers(0, w)), 0)
        p1 = (int(rng.integers(0, w)), h - 1)
        if rng.random() < 0.5:
            p0, p1 = (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h)))
        cv2.line(pole, p0, p1, 1, int(rng.integers(3, 7)))
        pole = pole.astype(bool)
        after = [v & ~pole for v in vis]
        if all(
            a.sum() >= _MIN_VISIBLE_PIXELS and a.sum() >= _MIN_VISIBLE_FRAC * masks[i].sum()
            for a, i in zip(after, keep)
        ):
            color = _jitter_color(rng, (110, 90, 70), 25)
            canvas[pole] = color + rng.normal(0, 6, (int(pole.sum()), 3))
            label[pole] = 0
            vis = after
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    classes = [objs[i]["cls"] for i in keep]
    amodal = [int(masks[i].sum()) for i in keep]
    return image, label.astype(np.uint8), classes, amodal
