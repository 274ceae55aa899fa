"""R2IOSPredictor (selective search / caller proposals / RPN, trace) and tools/demo.py."""

import importlib.util
import json
import os
import shlex

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from readme_utils import readme_commands

from r2ios_d2 import R2IOSPredictor, add_r2ios_config
from r2ios_d2.data.proposals import filter_proposals, save_proposal_file
from r2ios_d2.data.selective_search import selective_search
from r2ios_d2.data.synthetic import SYNTHETIC_CLASSES, render_image
from r2ios_d2.engine import atomic_torch_save

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, W = 96, 120  # original image; MIN_SIZE_TEST 64 resizes it to 64 x 80
T = 4


def _tiny_cfg(weights: str = ""):
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/synthetic/r2ios_tiny_stage1.yaml"))
    cfg.MODEL.VGG.WIDTH = 0.0625
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.R2IOS.AE_HIDDEN_DIM = 32
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 100
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # a random model still outputs something
    cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 40
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.MODEL.R2IOS.TEST_GATE = True  # the gate's reversal, as the stage-2 config
    cfg.MODEL.WEIGHTS = weights
    return cfg


def _rpn(cfg):
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    cfg.MODEL.LOAD_PROPOSALS = False
    cfg.MODEL.RPN.IN_FEATURES = ["det"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    return cfg


def _write_weights(cfg, path: str) -> str:
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # a random model: no proposal predicted background, so tests see output
        model.roi_heads.box_predictor.cls_score.bias[-1] = -10.0
    atomic_torch_save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _write_weights(_tiny_cfg(), str(tmp_path_factory.mktemp("w") / "tiny.pth"))


@pytest.fixture(scope="module")
def predictor(weights):
    return R2IOSPredictor(_tiny_cfg(weights))


@pytest.fixture(scope="module")
def image():
    rgb, *_ = render_image(np.random.default_rng(3), H, W)
    return np.ascontiguousarray(rgb[:, :, ::-1])  # BGR, as cv2.imread gives


def _check_instances(inst, n_max=None):
    assert inst.image_size == (H, W)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    n = len(inst)
    assert n > 0 and (n_max is None or n <= n_max)
    boxes = inst.pred_boxes.tensor
    assert boxes.shape == (n, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert inst.pred_masks.shape == (n, H, W) and inst.pred_masks.dtype == torch.bool
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < 5)).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()


def test_selective_search_proposals_match_the_tool_and_give_original_frame_outputs(
    predictor, image
):
    out = predictor(image)
    _check_instances(out["instances"])
    # OpenCV ranks selective search boxes with a random factor: the set of boxes is
    # deterministic, their order (hence which 40 are the top 40) is not.
    every, _ = filter_proposals(*selective_search(image, "fast", 2000), H, W, 2.0, None)
    assert len(every) > 40
    assert out["proposals"].shape == (40, 4)
    assert set(map(tuple, out["proposals"].tolist())) <= set(map(tuple, every.tolist()))


def test_caller_proposal_is_honoured_in_original_coordinates(predictor, image):
    # The box deltas start at std 0.001, so a random model barely moves its proposal: the
    # output box must be that proposal in original pixels (not in the 64 x 80 input frame).
    # The demo recipe reads out per class: one detection per class of that one proposal.
    box = np.array([[62.0, 40.0, 113.0, 90.0]], np.float32)
    out = predictor(image, proposals=box)
    inst = out["instances"]
    _check_instances(inst, n_max=5)
    assert len(set(inst.pred_classes.tolist())) == len(inst)
    got = inst.pred_boxes.tensor.numpy()
    np.testing.assert_allclose(got, np.broadcast_to(box, got.shape), atol=3.0)
    np.testing.assert_array_equal(out["proposals"], box)
    # Integer pixel boxes and torch tensors are accepted too.
    out_int = predictor(image, proposals=torch.tensor([[62, 40, 113, 90]]))
    np.testing.assert_allclose(
        out_int["instances"].pred_boxes.tensor.numpy(), inst.pred_boxes.tensor.numpy(), atol=1e-4
    )


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([[np.nan, 0.0, 10.0, 10.0]], "NaN"),
        ([[30.0, 0.0, 10.0, 10.0]], "inverted"),
        ([1.0, 2.0, 3.0], "shape"),
        ([[0.0, 0.0, 10.0 * W, 10.0]], "far outside"),
    ],
)
def test_bad_caller_proposals_raise_clear_errors(predictor, image, boxes, message):
    with pytest.raises(ValueError, match=message):
        predictor(image, proposals=np.asarray(boxes, np.float32))


def test_no_proposals_left_gives_empty_instances(predictor, image):
    out = predictor(image, proposals=np.array([[5.0, 5.0, 6.0, 6.0]], np.float32))  # < 2 px
    inst = out["instances"]
    assert len(inst) == 0 and inst.image_size == (H, W)
    assert inst.pred_masks.shape == (0, H, W)


def test_bad_image_raises(predictor, image):
    with pytest.raises(ValueError, match="uint8"):
        predictor(image.astype(np.float32))


def test_trace_shapes_frame_and_gate(predictor, image):
    out = predictor(image, return_trace=True)
    inst, tr = out["instances"], out["trace"]
    n = len(inst)
    assert not any(k.startswith("trace_") or k == "gate_iteration" for k in inst.get_fields())
    assert tr["boxes"].shape == (n, T, 4)
    assert tr["scores"].shape == tr["classes"].shape == (n, T)
    assert tr["masks"].shape == (n, T, 40, 40)
    gate = tr["gate_iteration"]
    assert gate.shape == (n,) and ((gate >= 0) & (gate < T)).all()
    rows = torch.arange(n)
    # t' is the iteration with the best gate score; its class and box are the output's.
    torch.testing.assert_close(tr["scores"][rows, gate], tr["scores"].max(dim=1).values)
    assert torch.equal(tr["classes"][rows, gate], inst.pred_classes)
    torch.testing.assert_close(tr["boxes"][rows, gate], inst.pred_boxes.tensor, atol=0.5, rtol=0)
    if tr["proposals"] is not None:
        assert tr["proposals"].shape == (n, 4)
        assert (tr["proposals"][:, 2:] <= torch.tensor([W, H]) + 0.5).all()


def test_rpn_config_makes_its_own_proposals(tmp_path, image):
    cfg = _rpn(_tiny_cfg())
    cfg.MODEL.WEIGHTS = _write_weights(cfg, str(tmp_path / "rpn.pth"))
    predictor = R2IOSPredictor(cfg, return_trace=True)
    out = predictor(image)
    _check_instances(out["instances"])
    assert "proposals" not in out
    assert out["trace"]["boxes"].shape == (len(out["instances"]), T, 4)
    with pytest.raises(ValueError, match="PrecomputedProposals"):
        predictor(image, proposals=np.array([[0.0, 0.0, 10.0, 10.0]], np.float32))


# ----------------------------------------------------------------------------- tools/demo.py


def _demo():
    spec = importlib.util.spec_from_file_location("r2ios_demo", os.path.join(REPO, "tools/demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_args(inputs, out, weights, *extra):
    return [
        "--config-file",
        os.path.join(REPO, "configs/synthetic/r2ios_tiny_stage1.yaml"),
        "--input",
        *inputs,
        "--output",
        str(out),
        "--confidence-threshold",
        "0.0",
        *extra,
        "MODEL.WEIGHTS",
        weights,
        "MODEL.VGG.WIDTH",
        "0.0625",
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        "32",
        "MODEL.R2IOS.AE_HIDDEN_DIM",
        "32",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "100",
        "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST",
        "40",
        "TEST.DETECTIONS_PER_IMAGE",
        "3",
    ]


@pytest.fixture
def image_folder(tmp_path, image):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), image)
    cv2.imwrite(str(folder / "b.jpg"), np.ascontiguousarray(image[:80, :100]))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, not matched")
    return folder


def test_demo_skips_a_corrupt_image_and_writes_pictures_and_coco_json(
    tmp_path, image_folder, weights, capsys
):
    out = tmp_path / "out"
    rc = _demo().main(_demo_args([str(image_folder)], out, weights, "--json", "--trace"))
    assert rc == 0
    written = sorted(os.listdir(out))
    assert written == ["a.png", "a_trace.png", "b.png", "b_trace.png", "results.json"]
    # Small images are drawn enlarged to a 600-px longer side, same aspect ratio.
    assert cv2.imread(str(out / "a.png")).shape[:2] == (H * 600 // W, 600)
    summary = capsys.readouterr().out
    assert "2 of 3 images done" in summary and "broken.jpg" in summary

    results = json.loads((out / "results.json").read_text())
    sizes = {str(image_folder / "a.png"): (H, W), str(image_folder / "b.jpg"): (80, 100)}
    assert {r["file_name"] for r in results} == set(sizes)
    assert 0 < len(results) <= 6
    for r in results:
        assert isinstance(r["segmentation"]["counts"], str)
        assert mask_util.decode(r["segmentation"]).shape == sizes[r["file_name"]]
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and x + w <= sizes[r["file_name"]][1] + 1e-3
        assert 0 <= r["category_id"] < 5
    gt = COCO()
    ids = sorted({r["image_id"] for r in results})
    gt.dataset = {
        "images": [{"id": i} for i in ids],
        "annotations": [],
        "categories": [{"id": c, "name": str(c)} for c in range(5)],
    }
    gt.createIndex()
    dt = gt.loadRes(results)
    assert len(dt.getAnnIds()) == len(results)


def test_demo_uses_proposals_dir(tmp_path, image_folder, weights):
    props = tmp_path / "props"
    save_proposal_file(str(props / "a.npz"), [[62.0, 40.0, 113.0, 90.0]], None, "a", H, W)
    out = tmp_path / "out"
    rc = _demo().main(
        _demo_args(
            [str(image_folder / "a.png"), str(image_folder / "b.jpg")],
            out,
            weights,
            "--json",
            "--proposals-dir",
            str(props),
        )
    )
    assert rc == 0  # b.jpg has no proposal file: reported, skipped
    results = json.loads((out / "results.json").read_text())
    # one proposal, read out per class (the demo recipe): at most one result per class
    assert 1 <= len(results) <= 5
    assert len({r["category_id"] for r in results}) == len(results)
    for r in results:
        assert r["file_name"].endswith("a.png")
        np.testing.assert_allclose(r["bbox"], [62.0, 40.0, 51.0, 50.0], atol=3.0)
    assert sorted(os.listdir(out)) == ["a.png", "results.json"]


def test_demo_exit_status_when_nothing_succeeds(tmp_path, image_folder, weights):
    demo = _demo()
    bad = str(image_folder / "broken.jpg")
    assert demo.main(_demo_args([bad], tmp_path / "o1", weights)) == 1
    assert not os.path.exists(tmp_path / "o1" / "broken.png")
    missing = str(tmp_path / "nothing" / "*.jpg")
    assert demo.main(_demo_args([missing], tmp_path / "o2", weights)) == 2


def test_demo_class_names_from_registered_test_dataset_else_generic():
    demo = _demo()
    cfg = _tiny_cfg()  # DATASETS.TEST = ("r2ios_synthetic_val",), registered on import
    assert list(demo.demo_metadata(cfg).thing_classes) == list(SYNTHETIC_CLASSES)
    cfg.DATASETS.TEST = ("no_such_dataset_registered",)
    assert demo.demo_metadata(cfg).thing_classes == [f"class_{i}" for i in range(5)]


def test_demo_takes_opts_flag_globs_and_confidence_threshold(tmp_path, image_folder, weights):
    demo = _demo()
    args = _demo_args([str(image_folder / "*.png")], tmp_path / "out", weights, "--json")
    i = args.index("MODEL.WEIGHTS")
    flagged = [*args[:i], "--opts", *args[i:]]  # detectron2's demo/demo.py form
    assert demo.main(flagged) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "results.json"]  # glob: a.png only
    assert json.loads((tmp_path / "out" / "results.json").read_text())  # threshold 0: detections

    strict = [*flagged]
    strict[strict.index("--confidence-threshold") + 1] = "1.01"  # no score reaches it
    strict[strict.index("--output") + 1] = str(tmp_path / "strict")
    assert demo.main(strict) == 0
    assert json.loads((tmp_path / "strict" / "results.json").read_text()) == []

    with pytest.raises(SystemExit) as e:  # a usage error: one line on stderr, exit status 2
        demo.main([*flagged, "MODEL.R2IOS.NUM_ITERATONS", "2"])
    assert e.value.code == 2


def test_readme_demo_command_runs(tmp_path, image_folder, weights):
    (command,) = readme_commands("demo-example")
    argv = shlex.split(command)
    assert argv[:2] == ["python", "tools/demo.py"]
    # The README's paths, pointed at this test's files.
    paths = {
        "photo.jpg": str(image_folder / "a.png"),
        "my_photos/": str(image_folder),
        "shots/*.png": str(image_folder / "*.png"),
        "demo_output/mine": str(tmp_path / "out"),
        "demo_output/stage2/model_final.pth": weights,
    }
    assert set(paths) <= set(argv)
    argv = [paths.get(a, a) for a in argv[2:]]
    argv[argv.index("--config-file") + 1] = os.path.join(
        REPO, argv[argv.index("--config-file") + 1]
    )
    argv[argv.index("--confidence-threshold") + 1] = "0.0"  # a random model's scores are low
    tiny = _demo_args([], "", "")[_demo_args([], "", "").index("MODEL.VGG.WIDTH") :]
    assert _demo().main(argv + tiny) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png"]
