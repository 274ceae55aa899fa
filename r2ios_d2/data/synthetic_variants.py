"""Held-out variants of the synthetic dataset: other distributions than the demo's.

The demo's recipe (``configs/synthetic``) was tuned on the val split of the default synthetic
dataset. Each variant here is a different :class:`~r2ios_d2.data.synthetic_render.SyntheticSpec`
with its own seed (never one the demo or the ablation uses: they use 0, 1, 2), so a recipe can
be checked on data it was not tuned on (``python tools/benchmark.py --heldout``).

* ``texture4`` (seed 101): 4 classes told apart by texture only (stripes, checker, dots,
  mottling); every instance draws its shape (disc, tile, hexagon, triangle) and every group
  its colour from one shared set, whatever the class; clusters of 2-3 heavily overlapping
  same-class instances (step 0.1-0.35 of a size), up to 2 occluders; images 176-208 x 240-272
  px.
* ``dense`` (seed 202): 6 classes, four of them new shape families (triangle, cross,
  crescent, hexagon) with new textures (dots, mottling, gradient), colours in two similar
  pairs; more and smaller objects (2-4 groups of 2-5, 1-3 singles, sizes 8-30 % of the image
  side) and up to 3 occluders per image; images 160-208 x 176-224 px.
* ``large_sparse`` (seed 303): 4 classes of new shape families only (triangle, cross,
  crescent, hexagon) with other textures (gradient, dots, mottling, stripes); fewer, larger
  objects (1-2 groups of 2-3 members that overlap more than the demo's, 0-1 singles, sizes
  25-65 % of the side, many cut by the image border), 1-3 occluders; landscape images
  208-240 x 288-336 px.
* ``mixed8`` (seed 404, defined after the demo recipe's test settings were chosen): 8
  classes over all nine shape families (``spot``: disc or hexagon; ``wedge``: triangle or
  crescent, against ``moon``: crescent only), textures from all seven, colours in near
  pairs (star / moon, spot / wedge); medium density (1-3 groups of 2-4, 1-3 singles, sizes
  12-45 %), up to 2 occluders; portrait images 240-288 x 176-208 px.

Difficulty statistics (:func:`r2ios_d2.data.synthetic.difficulty_statistics`, train / val),
next to the demo's dataset:

============================= ============= ============= ============= ============= =============
train / val                   demo (seed 0) texture4      dense         large_sparse  mixed8
============================= ============= ============= ============= ============= =============
classes                       5             4             6             4             8
images                        160 / 60      300 / 100     300 / 100     300 / 100     300 / 100
instances per image           5.49 / 5.70   4.41 / 4.19   9.76 / 9.55   3.69 / 3.86   6.82 / 6.40
same-class box overlap        0.745 / 0.772 0.685 / 0.702 0.799 / 0.778 0.865 / 0.858 0.712 / 0.677
mean max same-class box IoU   0.199 / 0.180 0.297 / 0.295 0.208 / 0.193 0.347 / 0.360 0.279 / 0.279
same-class box IoU > 0.3      0.207 / 0.146 0.422 / 0.415 0.210 / 0.172 0.521 / 0.541 0.367 / 0.334
occluded-pixel fraction       0.216 / 0.187 0.242 / 0.232 0.246 / 0.230 0.270 / 0.251 0.219 / 0.202
box side, px: median (max)    33 (112)      44 (120)      24 (82)       71 (171)      36 (107)
selective search, val: recall 0.76 / 0.48   0.88 / 0.61   0.67 / 0.36   0.91 / 0.58   0.83 / 0.55
@0.5 / @0.7 (boxes per image) (223)         (263)         (253)         (394)         (269)
============================= ============= ============= ============= ============= =============

Each is harder than the demo's data in its own way: texture4's classes differ by texture alone
and twice as many of its instances overlap a same-class box by IoU > 0.3; dense has 1.7x the
instances, smaller ones and the weakest proposals of all; large_sparse has the most overlap
and occlusion and non-convex shapes (cross, crescent) whose boxes hold much background. Only
in one respect are two of them easier: selective search does better on texture4's and
large_sparse's larger objects than on the demo's (recall 0.88-0.91 against 0.76 at IoU 0.5).
mixed8 has the most classes, with look-alike pairs (a crescent is a ``wedge`` or a ``moon``
by texture and colour only) and 1.2x the demo's instances per image, with better proposals
(0.83 recall at IoU 0.5).

(regenerate the statistics with ``python -m r2ios_d2.data.synthetic --variant NAME --stats``,
the recall with :func:`r2ios_d2.data.selective_search.proposal_recall`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from .synthetic_render import ClassSpec, SyntheticSpec

__all__ = ["HeldoutVariant", "HELDOUT_VARIANTS"]


@dataclass(frozen=True)
class HeldoutVariant:
    """A held-out synthetic dataset: its spec, seed and split sizes.

    Attributes:
        description: one line on how it differs from the demo's dataset.
        spec: what its images look like.
        seed: its random seed (not 0, 1 or 2: the demo's and the ablation's).
        num_train, num_val: images of each split.
    """

    description: str
    spec: SyntheticSpec
    seed: int
    num_train: int = 300
    num_val: int = 100


# One palette for every class of texture4: colour says nothing about the class.
_SHARED_PALETTE = (
    (200, 70, 50),
    (60, 100, 200),
    (60, 160, 80),
    (220, 190, 50),
    (150, 70, 180),
    (70, 170, 170),
)
_TEXTURE4_SHAPES = ("disc", "tile", "hexagon", "triangle")

HELDOUT_VARIANTS: Dict[str, HeldoutVariant] = {
    "texture4": HeldoutVariant(
        "4 classes told apart by texture only (shared shapes and colours), clusters of 2-3 "
        "heavily overlapping same-class instances, ~192x256 images",
        SyntheticSpec(
            classes=(
                ClassSpec("striped", _TEXTURE4_SHAPES, "stripes", _SHARED_PALETTE[0]),
                ClassSpec("checkered", _TEXTURE4_SHAPES, "checker", _SHARED_PALETTE[1]),
                ClassSpec("dotted", _TEXTURE4_SHAPES, "dots", _SHARED_PALETTE[2]),
                ClassSpec("mottled", _TEXTURE4_SHAPES, "noise", _SHARED_PALETTE[3]),
            ),
            palette=_SHARED_PALETTE,
            groups=(1, 3),
            group_sizes=(2, 3, 3),
            group_step=(0.1, 0.35),
            singles=(0, 2),
            object_size=(0.15, 0.45),
            occluders=(0, 1, 1, 2, 2),
            distractors=(3, 8),
            min_size=(176, 240),
            max_size=(208, 272),
        ),
        seed=101,
    ),
    "dense": HeldoutVariant(
        "6 classes with new shapes and textures, more and smaller objects, more occluders",
        SyntheticSpec(
            classes=(
                ClassSpec("disc", ("disc",), "radial", (220, 90, 50)),
                ClassSpec("tile", ("tile",), "stripes", (50, 90, 210)),
                ClassSpec("triangle", ("triangle",), "checker", (200, 110, 60)),
                ClassSpec("cross", ("cross",), "flat", (60, 120, 200)),
                ClassSpec("hexagon", ("hexagon",), "dots", (60, 170, 70)),
                ClassSpec("crescent", ("crescent",), "gradient", (230, 200, 40)),
            ),
            groups=(2, 4),
            group_sizes=(2, 2, 3, 3, 4, 5),
            group_step=(0.3, 0.6),
            singles=(1, 3),
            object_size=(0.08, 0.3),
            occluders=(0, 1, 1, 2, 2, 3),
            distractors=(4, 9),
            min_size=(160, 176),
            max_size=(208, 224),
        ),
        seed=202,
    ),
    "large_sparse": HeldoutVariant(
        "4 classes of new shape families with other textures, fewer and larger objects in "
        "overlapping clusters, more occluders, landscape images",
        SyntheticSpec(
            classes=(
                ClassSpec("triangle", ("triangle",), "gradient", (210, 80, 60)),
                ClassSpec("cross", ("cross",), "dots", (60, 80, 200)),
                ClassSpec("crescent", ("crescent",), "noise", (70, 170, 80)),
                ClassSpec("hexagon", ("hexagon",), "stripes", (180, 80, 190)),
            ),
            groups=(1, 2),
            group_sizes=(2, 2, 3, 3),
            group_step=(0.15, 0.4),
            singles=(0, 1),
            object_size=(0.25, 0.65),
            occluders=(1, 1, 2, 2, 3),
            distractors=(4, 9),
            min_size=(208, 288),
            max_size=(240, 336),
        ),
        seed=303,
    ),
    # Defined after the demo recipe's test settings were chosen, as one more check on data
    # that no choice had seen.
    "mixed8": HeldoutVariant(
        "8 classes over all nine shape families (two classes with two shapes each), colours "
        "in near pairs, medium density, portrait images",
        SyntheticSpec(
            classes=(
                ClassSpec("leaf", ("leaf",), "stripes", (90, 160, 60)),
                ClassSpec("star", ("star",), "flat", (230, 180, 40)),
                ClassSpec("ring", ("ring",), "radial", (70, 110, 210)),
                ClassSpec("spot", ("disc", "hexagon"), "dots", (200, 80, 70)),
                ClassSpec("slab", ("tile",), "noise", (120, 90, 180)),
                ClassSpec("plus", ("cross",), "checker", (60, 150, 170)),
                ClassSpec("wedge", ("triangle", "crescent"), "gradient", (210, 90, 60)),
                ClassSpec("moon", ("crescent",), "flat", (220, 170, 60)),
            ),
            groups=(1, 3),
            group_sizes=(2, 2, 3, 4),
            group_step=(0.2, 0.5),
            singles=(1, 3),
            object_size=(0.12, 0.45),
            occluders=(0, 1, 1, 2),
            distractors=(3, 8),
            min_size=(240, 176),
            max_size=(288, 208),
        ),
        seed=404,
    ),
}
