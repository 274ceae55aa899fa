"""Rendering of the synthetic instance segmentation images (see :mod:`r2ios_d2.data.synthetic`).

:func:`render_image` draws one image from a random generator (a deterministic function of its
state) and a :class:`SyntheticSpec`: a cluttered background, groups of overlapping same-class
objects and single objects in a random depth order, each with its class's shape and texture,
and thin foreground occluders; why each of these is there is explained in
:mod:`r2ios_d2.data.synthetic`. An object less than 30 % (or 40 pixels) visible is not drawn.

The spec's knobs: the classes (name, shape families, texture, colour), one shared colour
palette instead of per-class colours, the object density (groups per image, instances per
group, single objects), how far apart the members of a group are, the object and image size
ranges, and the number of occluders and background distractors. ``SyntheticSpec()`` (the
default) is the demo's dataset: the five :data:`SYNTHETIC_CLASSES` with their
:data:`SYNTHETIC_COLORS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "SHAPES",
    "TEXTURES",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COLORS",
    "ClassSpec",
    "SyntheticSpec",
    "DEFAULT_SPEC",
    "render_image",
]

RGB = Tuple[int, int, int]

# Shape families and textures a class can have; the first five / four are the demo's.
SHAPES: Tuple[str, ...] = (
    "disc",  # ellipse
    "tile",  # rotated rectangle
    "leaf",  # kite
    "star",  # five points
    "ring",  # annulus
    "triangle",
    "cross",  # plus sign: two crossed bars, mostly background inside its box
    "crescent",  # a disc with an offset disc cut out: non-convex
    "hexagon",
)
TEXTURES: Tuple[str, ...] = (
    "radial",  # shading from a bright centre
    "stripes",  # the colour and a light one, random angle and period
    "checker",  # the colour and a darker shade
    "flat",
    "dots",  # light dots on the colour
    "noise",  # coarse mottling
    "gradient",  # linear ramp across the object, random direction
)

SYNTHETIC_CLASSES: Tuple[str, ...] = ("disc", "tile", "leaf", "star", "ring")
SYNTHETIC_COLORS: List[RGB] = [
    (230, 80, 40),
    (40, 90, 220),
    (40, 170, 60),
    (240, 210, 30),
    (160, 60, 200),
]
# An instance must keep this much of itself visible, else it is not drawn.
_MIN_VISIBLE_FRAC = 0.3
_MIN_VISIBLE_PIXELS = 40


@dataclass(frozen=True)
class ClassSpec:
    """One object class of the synthetic data.

    Attributes:
        name: the class name (``thing_classes``).
        shapes: shape families (of :data:`SHAPES`); each instance draws one at random.
        texture: one of :data:`TEXTURES`.
        color: RGB base colour (jittered per instance); unused with a shared palette, except
            as the class's ``thing_colors`` entry.
    """

    name: str
    shapes: Tuple[str, ...]
    texture: str
    color: RGB


_DEFAULT_TEXTURES = ("radial", "stripes", "checker", "flat", "flat")
DEFAULT_CLASSES: Tuple[ClassSpec, ...] = tuple(
    ClassSpec(name, (name,), texture, color)
    for name, texture, color in zip(SYNTHETIC_CLASSES, _DEFAULT_TEXTURES, SYNTHETIC_COLORS)
)


@dataclass(frozen=True)
class SyntheticSpec:
    """What the synthetic images look like; the default is the demo's dataset.

    Ranges ``(lo, hi)`` of integers are inclusive; a tuple of choices is drawn from uniformly
    (repeat a value to weight it).

    Attributes:
        classes: the object classes, in class-id order.
        palette: RGB colours every group (and single object) draws its base colour from,
            whatever its class (classes then differ only by shape and texture); None: each
            class its own colour.
        groups: range of the number of same-class groups per image.
        group_sizes: choices of the number of instances of a group.
        group_step: range of the distance from one group member to the next, as a fraction of
            the member's size (small = heavily overlapping clusters).
        singles: range of the number of single objects per image.
        object_size: range (log-uniform) of an object's size as a fraction of the image's
            shorter side.
        occluders: choices of the number of thin foreground occluders per image.
        distractors: range of the number of background distractors (not objects) per image.
        min_size, max_size: (height, width) range of the images.
    """

    classes: Tuple[ClassSpec, ...] = DEFAULT_CLASSES
    palette: Optional[Tuple[RGB, ...]] = None
    groups: Tuple[int, int] = (1, 3)
    group_sizes: Tuple[int, ...] = (1, 2, 2, 3, 3, 4)
    group_step: Tuple[float, float] = (0.3, 0.7)
    singles: Tuple[int, int] = (0, 2)
    object_size: Tuple[float, float] = (0.12, 0.5)
    occluders: Tuple[int, ...] = (0, 0, 1, 1, 2)
    distractors: Tuple[int, int] = (2, 6)
    min_size: Tuple[int, int] = (144, 160)
    max_size: Tuple[int, int] = (192, 208)

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"class names must be unique and at least one: {names}")
        for c in self.classes:
            unknown = set(c.shapes) - set(SHAPES)
            if not c.shapes or unknown:
                raise ValueError(f"class {c.name!r}: shapes {c.shapes} (known: {SHAPES})")
            if c.texture not in TEXTURES:
                raise ValueError(f"class {c.name!r}: texture {c.texture!r} (known: {TEXTURES})")
        if self.palette is not None and not self.palette:
            raise ValueError("palette: give at least one colour, or None")
        for key in ("groups", "group_step", "singles", "object_size", "distractors"):
            lo, hi = getattr(self, key)
            if not 0 <= lo <= hi:
                raise ValueError(f"{key} must be a range 0 <= lo <= hi, got {(lo, hi)}")
        if not self.group_sizes or min(self.group_sizes) < 1 or not self.occluders:
            raise ValueError("group_sizes (>= 1) and occluders need at least one choice")
        if not all(0 < a <= b for a, b in zip(self.min_size, self.max_size)):
            raise ValueError(f"image sizes: need 0 < min_size <= max_size, got "
                             f"{self.min_size}, {self.max_size}")  # fmt: skip

    @property
    def class_names(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def class_colors(self) -> List[RGB]:
        return [tuple(c.color) for c in self.classes]

    def to_dict(self) -> Dict[str, Any]:
        """The spec as JSON-ready lists and dicts (what the dataset's marker records)."""
        return _lists(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> SyntheticSpec:
        """The inverse of :meth:`to_dict`."""
        d = dict(d)
        d["classes"] = tuple(
            ClassSpec(c["name"], tuple(c["shapes"]), c["texture"], tuple(c["color"]))
            for c in d["classes"]
        )
        if d.get("palette") is not None:
            d["palette"] = tuple(tuple(c) for c in d["palette"])
        for key in ("groups", "group_sizes", "group_step", "singles", "object_size",
                    "occluders", "distractors", "min_size", "max_size"):  # fmt: skip
            d[key] = tuple(d[key])
        return cls(**d)


def _lists(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


DEFAULT_SPEC = SyntheticSpec()


def _jitter_color(rng: np.random.Generator, base: Sequence[int], amount: float) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, amount, 3), 0, 255)


def _background(
    rng: np.random.Generator, h: int, w: int, distractors: Tuple[int, int]
) -> np.ndarray:
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
    for _ in range(int(rng.integers(distractors[0], distractors[1] + 1))):
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


def _fill_local_polygon(
    mask: np.ndarray, cx: float, cy: float, angle: float, u: np.ndarray, v: np.ndarray
) -> None:
    """Fill the polygon with vertices (u, v) in the object's frame, rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    pts = np.stack([cx + u * c - v * s, cy + u * s + v * c], 1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)


def _shape_mask(
    shape: str, h: int, w: int, cx: float, cy: float, size: float, angle: float, aspect: float
) -> np.ndarray:
    """Full (amodal) boolean mask of one object of the family ``shape`` (of :data:`SHAPES`)."""
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    center = (int(round(cx)), int(round(cy)))
    deg = float(np.degrees(angle))
    if shape == "disc":  # ellipse
        cv2.ellipse(mask, center, (max(2, int(r)), max(2, int(r * aspect))), deg, 0, 360, 1, -1)
    elif shape == "tile":  # rotated rectangle
        box = cv2.boxPoints(((cx, cy), (size, size * aspect), deg))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif shape == "leaf":  # kite
        a = np.array([0, np.pi / 2, np.pi, 3 * np.pi / 2]) + angle
        rr = np.array([r, r * 0.45 * aspect, r * 0.8, r * 0.45 * aspect])
        pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif shape == "star":  # five points
        a = angle + np.arange(10) * np.pi / 5
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif shape == "ring":  # annulus
        outer = (max(3, int(r)), max(3, int(r * aspect)))
        inner = (max(1, int(outer[0] * 0.5)), max(1, int(outer[1] * 0.5)))
        cv2.ellipse(mask, center, outer, deg, 0, 360, 1, -1)
        cv2.ellipse(mask, center, inner, deg, 0, 360, 0, -1)
    elif shape in ("triangle", "hexagon"):
        t = np.arange(3 if shape == "triangle" else 6) * (
            2 * np.pi / (3 if shape == "triangle" else 6)
        )
        _fill_local_polygon(mask, cx, cy, angle, r * np.cos(t), r * aspect * np.sin(t))
    elif shape == "cross":  # two bars of width 0.34 x size
        bar = 0.34 * size
        for d in (deg, deg + 90):
            box = cv2.boxPoints(((cx, cy), (size, bar * (aspect if d == deg else 1.0)), d))
            cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif shape == "crescent":  # a disc minus the same disc shifted by 0.5 r
        axes = (max(3, int(r)), max(3, int(r * aspect)))
        cut = (int(round(cx + 0.5 * r * np.cos(angle))), int(round(cy + 0.5 * r * np.sin(angle))))
        cv2.ellipse(mask, center, axes, deg, 0, 360, 1, -1)
        cv2.ellipse(mask, cut, axes, deg, 0, 360, 0, -1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask.astype(bool)


def _texture(
    rng: np.random.Generator,
    texture: str,
    color: Sequence[int],
    h: int,
    w: int,
    cx: float,
    cy: float,
    size: float,
) -> np.ndarray:
    """Appearance of one object with ``texture`` and base ``color`` over the whole image
    (float32 HxWx3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = _jitter_color(rng, color, 18)
    if texture == "radial":  # radial shading
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(size / 2, 1)
        tex = base[None, None] * (1.05 - 0.45 * np.clip(d, 0, 1))[..., None]
    elif texture == "stripes":  # stripes of two colours
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(3, 7)
        s = ((xx * np.cos(theta) + yy * np.sin(theta)) / period) % 2 < 1
        other = _jitter_color(rng, (225, 225, 235), 15)
        tex = np.where(s[..., None], base[None, None], other[None, None])
    elif texture == "checker":  # checker of the colour and a darker shade
        p = int(rng.integers(3, 6))
        s = ((xx // p + yy // p) % 2).astype(bool)
        tex = np.where(s[..., None], base[None, None], 0.55 * base[None, None])
    elif texture == "flat":
        tex = np.broadcast_to(base[None, None], (h, w, 3))
    elif texture == "dots":  # light dots on a grid of random period and offset
        p = rng.uniform(5, 8)
        ox, oy = rng.uniform(0, p, 2)
        dx, dy = (xx + ox) % p - p / 2, (yy + oy) % p - p / 2
        s = dx**2 + dy**2 < (0.3 * p) ** 2
        other = _jitter_color(rng, (235, 235, 225), 15)
        tex = np.where(s[..., None], other[None, None], base[None, None])
    elif texture == "noise":  # coarse mottling: low-frequency noise of +-40 % brightness
        cell = rng.uniform(3, 6)
        small = rng.normal(0, 1, (max(2, int(h / cell)), max(2, int(w / cell)))).astype(np.float32)
        field = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        tex = base[None, None] * np.clip(1 + 0.4 * field, 0.3, 1.6)[..., None]
    elif texture == "gradient":  # dark to bright across the object
        theta = rng.uniform(0, 2 * np.pi)
        t = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / max(size, 1) + 0.5
        tex = base[None, None] * (0.35 + 0.75 * np.clip(t, 0, 1))[..., None]
    else:
        raise ValueError(f"unknown texture {texture!r}")
    tex = tex + rng.normal(0, 8, (h, w, 1))
    return tex.astype(np.float32)


def _visible(masks: List[np.ndarray], h: int, w: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    label = np.zeros((h, w), np.int32)
    for k, m in enumerate(masks):
        label[m] = k + 1
    return label, [label == k + 1 for k in range(len(masks))]


def _log_uniform_size(rng: np.random.Generator, side: int, spec: SyntheticSpec) -> float:
    lo, hi = spec.object_size
    return float(np.exp(rng.uniform(np.log(lo * side), np.log(hi * side))))


def _palette_color(rng: np.random.Generator, spec: SyntheticSpec) -> Optional[RGB]:
    """A colour of the shared palette; None (and nothing drawn) without one."""
    if spec.palette is None:
        return None
    return spec.palette[int(rng.integers(len(spec.palette)))]


def _place_objects(
    rng: np.random.Generator, h: int, w: int, spec: SyntheticSpec
) -> List[Dict[str, Any]]:
    """Object parameters in painting (depth) order: groups of same-class objects + singles."""
    objs = []
    side = min(h, w)
    num_classes = len(spec.classes)
    num_groups = int(rng.integers(spec.groups[0], spec.groups[1] + 1))
    for _ in range(num_groups):
        cls = int(rng.integers(0, num_classes))
        color = _palette_color(rng, spec)  # a group shares it, as it shares its class
        n = int(rng.choice(list(spec.group_sizes)))
        size = _log_uniform_size(rng, side, spec)
        cx, cy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
        for _ in range(n):
            s = size * rng.uniform(0.8, 1.2)
            objs.append(dict(cls=cls, cx=cx, cy=cy, size=s, color=color))
            step = s * rng.uniform(*spec.group_step)
            a = rng.uniform(0, 2 * np.pi)
            cx = float(np.clip(cx + step * np.cos(a), 0, w - 1))
            cy = float(np.clip(cy + step * np.sin(a), 0, h - 1))
    for _ in range(int(rng.integers(spec.singles[0], spec.singles[1] + 1))):
        size = _log_uniform_size(rng, side, spec)
        objs.append(
            dict(
                cls=int(rng.integers(0, num_classes)),
                cx=rng.uniform(0, w),
                cy=rng.uniform(0, h),
                size=size,
            )
        )
        objs[-1]["color"] = _palette_color(rng, spec)
    order = rng.permutation(len(objs))
    objs = [objs[i] for i in order]
    for o in objs:
        o["angle"] = float(rng.uniform(0, 2 * np.pi))
        o["aspect"] = float(rng.uniform(0.6, 1.0))
        shapes = spec.classes[o["cls"]].shapes
        # A class of one shape family draws nothing (the default data stay as they were).
        o["shape"] = shapes[int(rng.integers(len(shapes)))] if len(shapes) > 1 else shapes[0]
    return objs


def _occlude(
    rng: np.random.Generator,
    canvas: np.ndarray,
    label: np.ndarray,
    vis: List[np.ndarray],
    amodal: List[int],
    count: int,
) -> List[np.ndarray]:
    """Paint up to ``count`` thin poles over the objects (in place); one that would leave an
    object too little visible is not painted. Returns the visible masks after them."""
    h, w = label.shape
    for _ in range(count):
        pole = np.zeros((h, w), np.uint8)
        p0 = (int(rng.integers(0, w)), 0)
        p1 = (int(rng.integers(0, w)), h - 1)
        if rng.random() < 0.5:
            p0, p1 = (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h)))
        cv2.line(pole, p0, p1, 1, int(rng.integers(3, 7)))
        pole = pole.astype(bool)
        after = [v & ~pole for v in vis]
        if all(
            a.sum() >= _MIN_VISIBLE_PIXELS and a.sum() >= _MIN_VISIBLE_FRAC * full
            for a, full in zip(after, amodal)
        ):
            color = _jitter_color(rng, (110, 90, 70), 25)
            canvas[pole] = color + rng.normal(0, 6, (int(pole.sum()), 3))
            label[pole] = 0
            vis = after
    return vis


def render_image(
    rng: np.random.Generator, h: int, w: int, spec: SyntheticSpec = DEFAULT_SPEC
) -> Tuple[np.ndarray, np.ndarray, List[int], List[int]]:
    """Render one synthetic image.

    Args:
        rng: random generator (the image is a deterministic function of its state).
        h, w: image size.
        spec: what the image holds (default: the demo's dataset).

    Returns:
        image: uint8 (h, w, 3) RGB.
        inst_map: uint8 (h, w); 0 background, k = instance k (1-based, depth order).
        classes: class id (0-based, into ``spec.classes``) of each instance.
        amodal_areas: pixel count of each instance's full shape (before occlusion).
    """
    canvas = _background(rng, h, w, spec.distractors)
    objs = _place_objects(rng, h, w, spec)
    masks = [
        _shape_mask(o["shape"], h, w, o["cx"], o["cy"], o["size"], o["angle"], o["aspect"])
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
        cls = spec.classes[o["cls"]]
        color = cls.color if o["color"] is None else o["color"]
        tex = _texture(rng, cls.texture, color, h, w, o["cx"], o["cy"], o["size"])
        canvas[vis[k]] = tex[vis[k]]
    amodal = [int(masks[i].sum()) for i in keep]
    # Foreground occluders that cut objects into pieces.
    _occlude(rng, canvas, label, vis, amodal, int(rng.choice(list(spec.occluders))))
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    classes = [objs[i]["cls"] for i in keep]
    return image, label.astype(np.uint8), classes, amodal
