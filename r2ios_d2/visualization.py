"""Pictures of R2-IOS outputs: final detections, and the T iterations of each proposal.

Shared by ``tools/visualize.py`` and ``tools/demo.py``. Final results are drawn with
detectron2's `Visualizer`; the per-iteration trace is a matplotlib grid (rows = detections,
columns = iterations), which shows for iteration t the box it started from (l_{t-1}, dashed),
the mask v_t predicted inside that box, the refined box l_t (solid) and the class score, with
the reversible gate's choice t' framed in red. A model tested without the gate
(``MODEL.R2IOS.TEST_GATE: False``, the stage-1 configs) outputs its last iteration: that panel
is labelled "(last, no gate)" and not framed.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.layers.mask_ops import paste_masks_in_image  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

from .atomic import atomic_open  # noqa: E402

__all__ = [
    "draw_detections",
    "draw_trace",
    "draw_training_curves",
    "read_metrics",
    "save_figure_atomic",
]


def draw_detections(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata,
    score_thresh: float = 0.5,
    min_side: int = 600,
) -> np.ndarray:
    """Final detections over the image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB image, the size of ``instances.image_size``.
        instances: postprocessed predictions (``pred_masks`` (N, H, W) at image size).
        metadata: the dataset's metadata (``thing_classes``, ``thing_colors``).
        score_thresh: detections below this score are not drawn.
        min_side: small images are drawn enlarged so that the longer side has at least this
            many pixels (labels stay readable).

    Returns:
        (H', W', 3) uint8 RGB picture, (H, W) scaled by max(1, min_side / max(H, W)).
    """
    inst = instances.to("cpu")
    inst = inst[inst.scores >= score_thresh]
    scale = max(1.0, min_side / max(image_rgb.shape[:2]))
    vis = Visualizer(image_rgb, metadata=metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    return vis.draw_instance_predictions(inst).get_image()


def _crop_window(boxes: np.ndarray, h: int, w: int, margin: float = 0.25) -> tuple:
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    mx, my = (x1 - x0) * margin + 4, (y1 - y0) * margin + 4
    return (
        int(max(0, np.floor(x0 - mx))),
        int(max(0, np.floor(y0 - my))),
        int(min(w, np.ceil(x1 + mx))),
        int(min(h, np.ceil(y1 + my))),
    )


def _masked_crop(
    image_rgb: np.ndarray,
    mask_probs: torch.Tensor,
    box: torch.Tensor,
    window: tuple,
    mask_threshold: float,
) -> np.ndarray:
    """The ``window`` (x0, y0, x1, y1) of the image, with the (M, M) mask ``mask_probs``
    pasted into ``box`` (1, 4), binarised at ``mask_threshold``, tinted green."""
    h, w = image_rgb.shape[:2]
    x0, y0, x1, y1 = window
    mask = paste_masks_in_image(
        mask_probs[None].float(),
        Boxes(box),
        (h, w),
        threshold=mask_threshold,
    )[0].numpy()
    crop = image_rgb[y0:y1, x0:x1].astype(np.float32)
    m = mask[y0:y1, x0:x1]
    crop[m] = 0.5 * crop[m] + 0.5 * np.array([40, 200, 80], np.float32)
    return crop.astype(np.uint8)


def _draw_box_pair(ax, input_box: torch.Tensor, refined_box: torch.Tensor) -> None:
    """The input box l_{t-1} dashed and the refined box l_t solid, both yellow."""
    for box, style in ((input_box, "--"), (refined_box, "-")):
        bx0, by0, bx1, by1 = box.tolist()
        ax.add_patch(
            plt.Rectangle(
                (bx0, by0), bx1 - bx0, by1 - by0, fill=False, ls=style, lw=1.5, ec="yellow"
            )
        )


def _frame_in_red(ax) -> None:
    """A thick red frame (no ticks) around the panel of the gate's chosen iteration."""
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("red")
        spine.set_linewidth(3)


def _draw_trace_cell(
    ax,
    image_rgb: np.ndarray,
    inst: Instances,
    i: int,
    t: int,
    frames: torch.Tensor,
    window: tuple,
    classes: list,
    mask_threshold: float,
    gate: bool = True,
) -> None:
    """Panel (detection ``i``, iteration ``t``): mask v_t over the crop ``window``, boxes
    ``frames[t]`` -> ``frames[t + 1]``, class and score as title; the output iteration is
    labelled, and framed in red if the gate chose it (``gate``)."""
    x0, y0, x1, y1 = window
    crop = _masked_crop(
        image_rgb, inst.trace_masks[i, t], frames[t : t + 1], window, mask_threshold
    )
    ax.imshow(crop, extent=(x0, x1, y1, y0))
    _draw_box_pair(ax, frames[t], frames[t + 1])
    c = int(inst.trace_classes[i, t])
    name = classes[c] if c < len(classes) else "bg"
    output = int(inst.gate_iteration[i]) == t
    chosen = output and gate
    label = (" (gate)" if gate else " (last, no gate)") if output else ""
    score = float(inst.trace_scores[i, t])
    ax.set_title(
        f"t={t + 1}{label}\n{name} {score:.2f}", fontsize=8, color="red" if chosen else "black"
    )
    if chosen:
        _frame_in_red(ax)


def draw_trace(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata,
    trace_boxes: torch.Tensor,
    init_boxes: torch.Tensor,
    max_instances: int = 4,
    mask_threshold: float = 0.5,
    gate: bool = True,
):
    """A grid of the T iterations of the top-scoring detections.

    Args:
        image_rgb: (H, W, 3) uint8 RGB image.
        instances: predictions with ``scores``, ``trace_scores`` (N, T), ``trace_classes``
            (N, T), ``trace_masks`` (N, T, M, M) and ``gate_iteration`` (N,).
        metadata: the dataset's metadata (``thing_classes``).
        trace_boxes: (N, T, 4) boxes l_1..l_T in the frame of ``image_rgb``.
        init_boxes: (N, 4) the proposals l_0 in the frame of ``image_rgb``.
        max_instances: rows to draw (highest scores first).
        mask_threshold: probability at which masks are binarised.
        gate: whether the model chose each output's iteration with the reversible gate
            (``MODEL.R2IOS.TEST_GATE``): then it is labelled "(gate)" and framed in red; else
            it is the last iteration, labelled "(last, no gate)", not framed.

    Returns:
        a matplotlib Figure (save it with :func:`save_figure_atomic`).
    """
    inst = instances.to("cpu")
    order = torch.argsort(inst.scores, descending=True)[:max_instances]
    h, w = image_rgb.shape[:2]
    classes = list(metadata.get("thing_classes", []))
    num = max(1, len(order))
    T = trace_boxes.shape[1] if len(order) else 1
    fig, axes = plt.subplots(num, T, figsize=(2.4 * T, 2.4 * num), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, i in enumerate(order.tolist()):
        frames = torch.cat([init_boxes[i : i + 1], trace_boxes[i]], dim=0)  # l_0 .. l_T
        window = _crop_window(frames.numpy(), h, w)
        for t in range(T):
            _draw_trace_cell(
                axes[row, t], image_rgb, inst, i, t, frames, window, classes, mask_threshold, gate
            )
    fig.suptitle(
        "R2-IOS iterations: dashed = input box l(t-1), solid = refined box l(t)", fontsize=9
    )
    fig.tight_layout()
    return fig


def save_figure_atomic(fig, path: str, dpi: int = 110) -> None:
    """Save a matplotlib figure (or an RGB array) as PNG via a temporary file + rename."""
    with atomic_open(path, "wb", suffix=".png") as f:
        if isinstance(fig, np.ndarray):
            plt.imsave(f, fig, format="png")
        else:
            fig.savefig(f, dpi=dpi, format="png")
            plt.close(fig)


def read_metrics(path: str, key: str) -> tuple:
    """One scalar's logged values from a detectron2 ``metrics.json``.

    Args:
        path: the ``metrics.json`` of a training run (one JSON object per line).
        key: scalar name, e.g. ``"loss_mask"`` or ``"r2ios/loss_mask_t4"``.

    Returns:
        (iterations, values): two lists of the rows where ``key`` was logged.
    """
    import json

    its, values = [], []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if key in row and "iteration" in row:
                its.append(int(row["iteration"]))
                values.append(float(row[key]))
    return its, values


def draw_training_curves(curves: list, title: str = "", ylabel: str = "loss"):
    """A figure of training scalars over iterations.

    Args:
        curves: ``(label, metrics_json_path, key)`` triples, one line each.
        title, ylabel: figure title and y-axis label.

    Returns:
        the matplotlib figure (save it with :func:`save_figure_atomic`).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, path, key in curves:
        its, values = read_metrics(path, key)
        if its:
            ax.plot(its, values, label=label)
    ax.set_xlabel("training iteration")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
