"""The inference recursion's tensor steps: the refined box taken from every class's decoded
boxes equals :func:`refine_boxes` (predicted class, clipping, the collapse rule, background and
class-agnostic regression), and :meth:`BestIteration.update` writes the improved rows alike
whether every active row improved or some."""

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform

from r2ios_d2.modeling.recursion import (
    MIN_BOX_SIDE,
    BestIteration,
    class_boxes,
    refine_boxes,
    refined_from_class_boxes,
)

TRANSFORM = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))


def _rows(n: int, k: int, per_class: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 2 + torch.rand(n, 2, generator=g) * 60], dim=1)
    deltas = torch.randn(n, 4 * k if per_class else 4, generator=g) * 3
    classes = torch.randint(0, k + 1, (n,), generator=g)  # k = background
    hw = torch.tensor([[100, 120]]).repeat(n, 1)
    return boxes, deltas, classes, hw


@pytest.mark.parametrize("class_specific", [True, False])
def test_refined_box_from_every_class_equals_refine_boxes(class_specific):
    k, n = 5, 300
    boxes, deltas, classes, hw = _rows(n, k, class_specific)
    # Some deltas collapse their box (width and height -> 0): those rows keep l_{t-1}.
    collapse = torch.arange(n) % 7 == 0
    deltas.view(n, -1, 4)[collapse, :, 2:] = -40.0
    moving = classes < k
    per_class = class_boxes(TRANSFORM, deltas, boxes, hw, k)
    got = refined_from_class_boxes(per_class, boxes, classes, moving)

    want = boxes.clone()
    want[moving] = refine_boxes(
        TRANSFORM, deltas[moving], boxes[moving], classes[moving], hw[moving]
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # Rows that stay: background, or a refinement that would collapse (forced here, or a
    # box moved off the image by the random deltas).
    assert torch.equal(got[~moving | collapse], boxes[~moving | collapse])
    moved = (got != boxes).any(dim=1)
    assert int(moved.sum()) > n // 2 and not bool((moved & (~moving | collapse)).any())
    # A moved row's l_t is exactly its class's entry of the per-class boxes, of both sides
    # at least MIN_BOX_SIDE.
    rows = torch.nonzero(moved).squeeze(1)
    assert torch.equal(got[rows], per_class[rows, classes[rows]])
    assert bool((got[rows, 2:] - got[rows, :2] >= MIN_BOX_SIDE).all())
    inside = (got[rows, 2] <= 120) & (got[rows, 3] <= 100) & (got[rows] >= 0).all(dim=1)
    assert bool(inside.all())  # clipped to the image (H, W) = (100, 120)


def test_refined_box_of_no_rows():
    per_class = torch.zeros(0, 3, 4)
    empty = torch.zeros(0, 4)
    got = refined_from_class_boxes(
        per_class, empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool)
    )
    assert got.shape == (0, 4)


@pytest.mark.parametrize("improved", ["all", "some", "none"])
def test_best_iteration_update_writes_the_improved_rows(improved):
    k, m, r = 3, 4, 9
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(r, 4, generator=g)
    best = BestIteration(boxes, k, m, per_class=True)
    before = {n: getattr(best, n).clone() for n in ("gate", "t", "cls", "box", "mask", "probs")}
    active = torch.tensor([1, 2, 4, 7, 8])
    better = {
        "all": torch.ones(5, dtype=torch.bool),
        "some": torch.tensor([True, False, True, False, True]),
        "none": torch.zeros(5, dtype=torch.bool),
    }[improved]
    values = dict(
        gate=torch.rand(5, generator=g),
        cls=torch.randint(0, k, (5,), generator=g),
        box=torch.rand(5, 4, generator=g),
        mask=torch.rand(5, m, m, generator=g),
        probs=torch.rand(5, k + 1, generator=g),
        class_boxes=torch.rand(5, k, 4, generator=g),
    )
    best.update(active, better, 2, **values)
    rows = active[better]
    untouched = torch.ones(r, dtype=torch.bool)
    untouched[rows] = False
    assert bool((best.t[rows] == 2).all())
    for name, value in values.items():
        field = getattr(best, name)
        assert torch.equal(field[rows], value[better]), name
        if name in before:
            assert torch.equal(field[untouched], before[name][untouched]), name
