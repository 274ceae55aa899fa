"""The speed benchmark on the demo (``tools/benchmark_speed.py``, ``"demo"`` part of its result).

* **Inference with trained weights**: the demo's configs (``configs/synthetic/
  r2ios_tiny_stage{1,2}.yaml``, the package defaults) and their checkpoints on val images of
  the demo's dataset, R2-IOS at T = 1 and T = 4 against detectron2's ``StandardROIHeads`` +
  ``MaskRCNNConvUpsampleHead`` (``mask_rcnn_heads_tiny.yaml``) on the same backbone
  features, with the images' selective-search proposals and with ``n`` random ones. Trained
  weights matter: how many proposals iterations 2..T run on is what the model predicts.
* **A per-stage profile** (:class:`~.speed_profile.StageProfile`) of every case: backbone,
  box pooling / head / predictor and mask head per iteration, NMS, mask pasting.
* **Training**: seconds per step of R2-IOS (stage-1 and stage-2 configs, T = 4) and of the
  stock heads on the demo's training batches, same run, each with the demo's optimizer.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.utils.events import EventStorage
from tqdm import tqdm

from ..config import add_r2ios_config
from ..modeling import postprocessing as r2ios_postprocessing
from ..modeling.linear import set_cpu_linear
from ..modeling.roi_align import pool_boxes
from .records import sync
from .speed_profile import StageProfile, r2ios_stages, stock_stages
from .speed_setup import (
    active_per_iteration,
    first_iteration_logits,
    random_proposals,
    shift_background_bias,
)

__all__ = [
    "DEMO_CONFIGS",
    "DemoInputs",
    "bench_demo_inference",
    "bench_demo_train",
    "demo_cfg",
    "load_demo_inputs",
    "load_demo_train_batches",
]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# The demo case of T = 4 without the recipe's TEST_REFINE_NMS (every moving proposal refined).
REFINE_ALL_CASE = "R2-IOS T=4, all refined"
# The demo's configs: R2-IOS stages 1 and 2 and the stock Mask R-CNN heads.
DEMO_CONFIGS = {
    "stage1": "configs/synthetic/r2ios_tiny_stage1.yaml",
    "stage2": "configs/synthetic/r2ios_tiny_stage2.yaml",
    "stock": "configs/synthetic/mask_rcnn_heads_tiny.yaml",
}
# Where tools/run_demo.py leaves the demo's checkpoints (the default weights).
DEMO_WEIGHTS = {
    "stage1": "demo_output/stage1/model_final.pth",
    "stage2": "demo_output/stage2/model_final.pth",
    "stock": "demo_output/mask_rcnn_heads/model_final.pth",
}


def demo_cfg(name: str, device: str, opts: Sequence[str] = ()) -> CfgNode:
    """The demo's config ``name`` (a key of :data:`DEMO_CONFIGS`) on ``device``, without
    weights (the benchmark loads them) and without data-loader workers."""
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(str(REPO / DEMO_CONFIGS[name]))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def build_demo_model(cfg: CfgNode, cpu_linear: Optional[str] = None) -> torch.nn.Module:
    """``build_model(cfg)`` with every ``nn.Linear`` on ``cpu_linear`` (default: the config's
    ``MODEL.R2IOS.CPU_LINEAR``), the stock heads' too, as the trainer builds them."""
    model = build_model(cfg)
    set_cpu_linear(
        model, cpu_linear or cfg.MODEL.R2IOS.CPU_LINEAR, cfg.MODEL.R2IOS.CPU_LINEAR_PACK_MB
    )
    return model


def default_weights(name: str) -> Optional[str]:
    """The demo's checkpoint of ``name`` if ``tools/run_demo.py`` has written it, else None."""
    path = REPO / DEMO_WEIGHTS[name]
    return str(path) if path.is_file() else None


def _load(model: torch.nn.Module, cfg: CfgNode, weights: str) -> None:
    from ..engine.checkpoint import R2IOSCheckpointer

    R2IOSCheckpointer.for_config(model, cfg).load(weights)


@dataclass
class DemoInputs:
    """Mapped val images (``image``, ``height``, ``width``, ``proposals``) of the demo."""

    inputs: List[dict]
    dataset: str


def load_demo_inputs(cfg: CfgNode, num_images: int) -> DemoInputs:
    """The first ``num_images`` images of ``cfg.DATASETS.TEST[0]`` as the test loader maps
    them (network-input size, selective-search proposals)."""
    from ..data import build_r2ios_test_loader

    name = cfg.DATASETS.TEST[0]
    loader = build_r2ios_test_loader(cfg, name)
    return DemoInputs([b[0] for b in itertools.islice(loader, num_images)], name)


def load_demo_train_batches(cfg: CfgNode, num_batches: int) -> List[List[dict]]:
    """The first ``num_batches`` training batches of ``cfg`` (the demo's train loader)."""
    from ..data import build_r2ios_train_loader

    return list(itertools.islice(iter(build_r2ios_train_loader(cfg)), num_batches))


# ------------------------------------------------------------------------------ inference
def _profile_stages(heads, stock: bool, device: str) -> StageProfile:
    profile = StageProfile(device, stock_stages(heads) if stock else r2ios_stages(heads))
    if stock:
        import detectron2.modeling.roi_heads.fast_rcnn as fast_rcnn

        profile.wrap(fast_rcnn, "batched_nms", "nms")
    else:
        profile.wrap(r2ios_postprocessing, "batched_nms", "nms")
        profile.wrap(r2ios_postprocessing, "_mask_nms", "nms")
        # TEST_MASK_FROM_OUTPUT_BOX: the mask head once more, on the outputs (not t = T + 1)
        profile.wrap(heads, "_masks_in_boxes", "output_box_masks", True)
    return profile


def _stage_table(stages: Dict[str, float], backbone_ms: float) -> Dict[str, float]:
    """Per-image stage milliseconds with ``backbone`` first and ``heads_other`` = what the
    heads spent outside the timed stages (gate, box refinement, candidates, bookkeeping)."""
    inside = sum(v for k, v in stages.items() if k not in ("heads", "paste"))
    out = {"backbone": backbone_ms}
    out.update({k: v for k, v in stages.items() if k not in ("heads",)})
    out["heads_other"] = stages.get("heads", 0.0) - inside
    return out


def _r2ios_case(model, T: int, refine_nms: Optional[float] = None) -> Callable:
    """R2-IOS at T test iterations, with the config's ``TEST_REFINE_NMS`` or ``refine_nms``."""
    heads = model.roi_heads
    configured = heads.refine_nms

    def run(images, feats, props):
        heads.test_num_iterations = T
        heads.refine_nms = configured if refine_nms is None else refine_nms
        return heads(images, feats, props)[0]

    return run


def layers_alone_ms(
    heads, feats: Dict[str, torch.Tensor], boxes: torch.Tensor, rows: int, device: str, repeats: int
) -> float:
    """Milliseconds of one R2-IOS iteration's layers alone at ``rows`` proposals: the box head
    (fc6 / fc7), the mask head's layers (the autoencoder) and the seg-aware predictor, as
    :meth:`R2IOSROIHeads._predict` calls them, on inputs pooled beforehand from the first
    ``rows`` of ``boxes`` (repeated if fewer), run back to back (median over ``repeats``): no
    pooling, gate, box refinement or bookkeeping. A lower bound on what an iteration 2..T
    costs with that many active proposals.

    Args:
        heads: an ``R2IOSROIHeads`` in eval mode.
        feats: one image's backbone outputs, each (1, C, H_l, W_l).
        boxes: (B, 4) boxes in that image (B >= 1).
    """
    pick = torch.arange(max(rows, 1), device=boxes.device) % len(boxes)
    rois = torch.cat([boxes.new_zeros(len(pick), 1), boxes[pick]], dim=1)
    mask_head, predictor = heads.mask_head, heads.box_predictor
    box_in = pool_boxes(heads.box_pooler, [feats[f] for f in heads.box_in_features], rois)
    c = pool_boxes(mask_head.pooler, mask_head.score_maps(feats), rois)

    def once() -> None:
        x = heads.box_head(box_in)
        if predictor.needs_mask_channels:
            predictor(x, mask_head.layers(c))
        else:
            d = mask_head.layers_foreground(c)
            predictor(x, d, mask_probs=mask_head.foreground_probs(d))

    times = []
    with torch.no_grad(), mask_head.reusing_derived_weights():
        once()
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            once()
            sync(device)
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def bench_demo_inference(
    stage: str,
    weights: str,
    inputs: DemoInputs,
    *,
    device: str,
    repeats: int,
    random_props: int,
    stock_weights: Optional[str] = None,
    cpu_linear: Optional[str] = None,
) -> Tuple[List[dict], dict]:
    """R2-IOS (``stage``'s config and ``weights``) at T = 1 and 4 and the stock heads on the
    demo images: rows per proposal source (``"selective_search"``, ``"random_<n>"``) and
    case, each with ms per image (backbone + heads + pasting, median over ``repeats``
    round-robin repeats), ratios, active proposals per iteration, detections and a
    per-stage profile; and facts (images, weights, the stock heads' background fraction)."""
    cfg = demo_cfg(stage, device)
    model = build_demo_model(cfg, cpu_linear).eval()
    _load(model, cfg, weights)
    stock_cfg = demo_cfg("stock", device)
    torch.manual_seed(0)
    stock = build_demo_model(stock_cfg, cpu_linear).eval()
    if stock_weights:
        _load(stock, stock_cfg, stock_weights)
    stock_heads = stock.roi_heads  # runs on R2-IOS's backbone features ("det")
    facts: dict = {"stage": stage, "weights": weights, "stock_weights": stock_weights}

    with torch.no_grad():
        prepared = []
        for x in inputs.inputs:
            images = model.preprocess_image([x])
            feats = model.backbone(images.tensor)
            h, w = images.image_sizes[0]
            rand = random_proposals(random_props, h, w, device, seed=len(prepared) + 1)
            prepared.append((x, images, feats, {"selective_search": x["proposals"].to(device)}))
            prepared[-1][3][f"random_{random_props}"] = rand
        if not stock_weights:  # random stock heads: as much background as trained R2-IOS
            logits = [
                first_iteration_logits(model.roi_heads, f, ps["selective_search"].proposal_boxes)
                for _, _, f, ps in prepared
            ]
            k = model.roi_heads.num_classes
            bg = torch.cat([lg.argmax(1) == k for lg in logits]).float().mean().item()
            x0, _, f0, ps0 = prepared[0]
            boxes = ps0["selective_search"].proposal_boxes
            facts["stock_bg_fraction_t1"] = shift_background_bias(stock_heads, f0, boxes, bg)
            facts["r2ios_bg_fraction_t1"] = bg

    cases: Dict[str, Callable] = {
        "R2-IOS T=1": _r2ios_case(model, 1),
        "R2-IOS T=4": _r2ios_case(model, 4),
        "stock heads": lambda images, feats, props: stock_heads(images, feats, props)[0],
    }
    if model.roi_heads.refine_nms > 0:  # the recipe's budget against refining every proposal
        cases[REFINE_ALL_CASE] = _r2ios_case(model, 4, refine_nms=0.0)
    sources = list(prepared[0][3])

    def backbone_pass() -> float:
        total = 0.0
        for _, images, _, _ in prepared:
            sync(device)
            t0 = time.perf_counter()
            model.backbone(images.tensor)
            sync(device)
            total += time.perf_counter() - t0
        return 1000 * total / len(prepared)

    def heads_pass(case: str, source: str, storage_counts: Optional[list] = None) -> tuple:
        """ms per image and detections; per image, the active proposals per iteration are
        appended to ``storage_counts``."""
        total, dets = 0.0, 0
        for x, images, feats, props in prepared:
            with EventStorage() as storage:
                sync(device)
                t0 = time.perf_counter()
                out = cases[case](images, feats, [props[source]])
                detector_postprocess(out[0], x["height"], x["width"])
                sync(device)
                total += time.perf_counter() - t0
            dets += len(out[0])
            if storage_counts is not None:
                storage_counts.append(active_per_iteration(storage))
        return 1000 * total / len(prepared), dets

    # The least iterations 2..T could cost: their layers alone at the number of proposals
    # each runs on in each image (one image's features and proposals as inputs; none where
    # an image's iteration ran on none), timed in the same round-robin.
    _, _, feats0, props0 = prepared[0]
    boxes0 = props0["selective_search"].proposal_boxes.tensor

    with torch.no_grad():
        times: Dict[Tuple[str, str], list] = {(c, s): [] for c in cases for s in sources}
        active: Dict[Tuple[str, str], list] = {key: [] for key in times}
        # Warm-up, and how many proposals each iteration runs on and the detections.
        dets = {key: heads_pass(*key, active[key])[1] for key in times}
        layer_times: Dict[int, list] = {
            n: [] for per_image in active.values() for c in per_image for n in c[1:] if n > 0
        }
        backbone_times = []
        for _ in tqdm(range(repeats), desc=f"demo inference {stage}", leave=False):
            backbone_times.append(backbone_pass())
            for key in times:
                times[key].append(heads_pass(*key)[0])
            for n, ts in layer_times.items():
                ts.append(layers_alone_ms(model.roi_heads, feats0, boxes0, n, device, 1))
        backbone_ms = statistics.median(backbone_times)
        layer_ms = {n: statistics.median(ts) for n, ts in layer_times.items()}
        rows = []
        for (case, source), ts in times.items():
            per_image = active[case, source]
            counts = [sum(c) for c in itertools.zip_longest(*per_image, fillvalue=0)]
            profile = _profile_stages(
                stock_heads if case == "stock heads" else model.roi_heads,
                case == "stock heads",
                device,
            )
            with profile:
                for x, images, feats, props in prepared:
                    profile.new_pass()
                    with profile.time("heads"):
                        out = cases[case](images, feats, [props[source]])
                    with profile.time("paste"):
                        detector_postprocess(out[0], x["height"], x["width"])
            heads_ms = statistics.median(ts)
            stages = _stage_table(profile.per_pass(), backbone_ms)
            rows.append(
                {
                    "stage": stage,
                    "case": case,
                    "proposals": source,
                    "ms_per_image": backbone_ms + heads_ms,
                    "heads_ms": heads_ms,
                    "heads_ms_all": ts,
                    "active_per_iteration": counts or None,
                    "detections": dets[case, source],
                    "profile_ms": stages,
                    # what iterations 2..T cost (profile) and on which share of the proposals
                    "iterations_after_first_ms": sum(
                        v for k, v in stages.items() if k.endswith(("t2", "t3", "t4", "t5"))
                    ),
                    "active_fraction_after_first": (
                        statistics.mean(counts[1:]) / counts[0] if len(counts) > 1 else None
                    ),
                    "layers_alone_after_first_ms": (
                        sum(layer_ms[n] for c in per_image for n in c[1:] if n > 0) / len(prepared)
                        if len(counts) > 1
                        else None
                    ),
                }
            )
    for row in rows:
        ref = {r["case"]: r["ms_per_image"] for r in rows if r["proposals"] == row["proposals"]}
        row["ratio_to_T1"] = row["ms_per_image"] / ref["R2-IOS T=1"]
        row["ratio_to_stock"] = row["ms_per_image"] / ref["stock heads"]
        floor = row["layers_alone_after_first_ms"]
        least = None if floor is None else ref["R2-IOS T=1"] + floor
        row["least_ratio_to_T1"] = None if least is None else least / ref["R2-IOS T=1"]
        row["least_ratio_to_stock"] = None if least is None else least / ref["stock heads"]
    facts.update(
        images=len(prepared),
        dataset=inputs.dataset,
        backbone_ms=backbone_ms,
        repeats=repeats,
        proposals_per_image=sum(len(p[3]["selective_search"]) for p in prepared) / len(prepared),
    )
    return rows, facts


# ------------------------------------------------------------------------------- training
def _per_batch_median_mean(times: List[float], num_batches: int) -> float:
    """Mean over the batches of each batch's median time, from round-robin ``times``
    (repeat-major: ``times[r * num_batches + b]``): the batches differ in cost (instances,
    sizes), so a median over all of them mixed would depend on which batch lands in the
    middle; this is a step's time on these batches, robust to outliers per batch."""
    per_batch = [statistics.median(times[b::num_batches]) for b in range(num_batches)]
    return statistics.mean(per_batch)


def bench_demo_train(
    batches: List[List[dict]], *, device: str, repeats: int, cpu_linear: Optional[str] = None
) -> List[dict]:
    """Seconds per training step (forward + backward + optimizer step) of R2-IOS (stage-1
    and stage-2 configs) and of the stock heads on the same ``batches``, round-robin over
    ``repeats`` x batches; one row per model with ``step_ms`` (the mean over the batches of
    each batch's median), ``ratio_to_stock``
    (to the stock heads on the same ``cpu_linear`` backend, with detectron2's RoIAlign),
    ``ratio_to_stock_same_roi_grad`` (to the stock heads with the same RoIAlign backward too,
    where measured) and ``profile_ms`` (ms per step:
    backbone and roi_heads forward, backward, optimizer step). On CPU with the configs'
    ``CPU_LINEAR`` "onednn" (or ``cpu_linear``, which overrides it), the stock heads and
    stage 2 also run with "torch" (F.linear): the same step with torch's own BLAS, in the
    same round-robin. ``cpu_roi_align_grad``: the input gradient of the RoIAlign poolers;
    R2-IOS uses the configs' ``CPU_ROI_ALIGN_GRAD`` ("matmul": matrix products) and the stock
    heads detectron2's RoIAlign (torchvision's backward); on CPU, stage 2 also runs with
    torchvision's and the stock heads with the matrix products (the rows named "(...
    RoIAlign grad)"), so that ``ratio_to_stock_same_roi_grad`` compares the two heads on the
    same backward too."""
    from ..engine.optimizer import build_r2ios_optimizer
    from ..modeling.roi_align import set_cpu_roi_align_grad

    configured = demo_cfg("stage1", device).MODEL.R2IOS
    backend, roi_grad = cpu_linear or configured.CPU_LINEAR, configured.CPU_ROI_ALIGN_GRAD
    own_grad = {"stock": "torchvision", "stage1": roi_grad, "stage2": roi_grad}
    models = [(name, backend, own_grad[name]) for name in ("stock", "stage1", "stage2")]
    on_cpu = device.startswith("cpu")
    if on_cpu and backend != "torch":
        models += [("stock", "torch", "torchvision"), ("stage2", "torch", roi_grad)]
    if on_cpu and roi_grad != "torchvision":
        models += [("stage2", backend, "torchvision"), ("stock", backend, roi_grad)]
    nets, optims, keys = {}, {}, {}
    for name, linear, grad in models:
        key = name if linear == backend else f"{name} ({linear})"
        key = key if grad == own_grad[name] else f"{key} ({grad} RoIAlign grad)"
        cfg = demo_cfg(name, device, ["MODEL.R2IOS.CPU_ROI_ALIGN_GRAD", grad])
        torch.manual_seed(0)
        nets[key] = build_demo_model(cfg, linear).train()
        if name == "stock" and grad != "torchvision":  # its poolers are detectron2's
            for pooler in (nets[key].roi_heads.box_pooler, nets[key].roi_heads.mask_pooler):
                set_cpu_roi_align_grad(pooler, grad)
        optims[key] = build_r2ios_optimizer(cfg, nets[key])
        keys[key] = (name, linear, grad)

    def step(name: str, batch: List[dict], profile: Optional[StageProfile] = None) -> float:
        net, opt = nets[name], optims[name]
        torch.manual_seed(0)  # the same RoI sampling every time
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with EventStorage():
            total = sum(net(batch).values())
        if profile is None:
            total.backward()
            opt.step()
        else:
            with profile.time("backward"):
                total.backward()
            with profile.time("optimizer_step"):
                opt.step()
        sync(device)
        return time.perf_counter() - t0

    for name in nets:  # warm-up
        step(name, batches[0])
    times: Dict[str, List[float]] = {n: [] for n in nets}
    for _ in tqdm(range(repeats), desc="demo train", leave=False):
        for batch in batches:
            for name in nets:
                times[name].append(step(name, batch))
    profiles = {}
    for name, net in nets.items():
        profile = StageProfile(device, {"backbone": net.backbone, "roi_heads": net.roi_heads})
        with profile:
            for batch in batches:
                profile.new_pass()
                step(name, batch, profile)
        profiles[name] = {k.replace(" t1", ""): v for k, v in profile.per_pass().items()}
    rows = []
    for key, (name, linear, grad) in keys.items():
        cfg = demo_cfg(name, device)
        rows.append(
            {
                "model": key,
                "cpu_linear": linear,
                "cpu_roi_align_grad": grad,
                "config": DEMO_CONFIGS[name],
                "T": cfg.MODEL.R2IOS.NUM_ITERATIONS if name != "stock" else None,
                "gate": cfg.MODEL.R2IOS.GATE if name != "stock" else None,
                "images_per_step": sum(len(b) for b in batches) / len(batches),
                "step_ms": 1000 * _per_batch_median_mean(times[key], len(batches)),
                "step_ms_all": [1000 * t for t in times[key]],
                "profile_ms": profiles[key],
            }
        )
    stock = {
        (r["cpu_linear"], r["cpu_roi_align_grad"]): r["step_ms"]
        for r in rows
        if r["config"] == DEMO_CONFIGS["stock"]
    }
    for row in rows:
        row["ratio_to_stock"] = row["step_ms"] / stock[row["cpu_linear"], "torchvision"]
        same = stock.get((row["cpu_linear"], row["cpu_roi_align_grad"]))
        row["ratio_to_stock_same_roi_grad"] = row["step_ms"] / same if same else None
    return rows
