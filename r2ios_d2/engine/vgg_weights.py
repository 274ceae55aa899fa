"""Convert an ImageNet VGG-16 (torchvision layout) into an R2-IOS initialisation checkpoint.

torchvision's ``vgg16`` state dict names its 13 convs ``features.{0,2,5,...,28}`` and its fc
layers ``classifier.{0,3,6}``. R2-IOS initialises from it:

* the shared trunk conv1_1 ... conv3_3 and **both** branches' conv4_* / conv5_* (``det_*`` and
  ``seg_*``) from the same ImageNet convs;
* fc6 / fc7 -> the Fast R-CNN box head ``roi_heads.box_head.fc1`` / ``fc2`` (fc6 reads the 7x7
  RoI-pooled ``det`` features in the same C x H x W order as VGG's flattened pool5);
* fc6 / fc7 -> the seg branch's ``seg_fc6`` (3x3 dilated conv) / ``seg_fc7`` (1x1 conv),
  subsampled as DeepLab-LargeFOV does: every 4th output unit (4096 -> 1024), fc6's 7x7 kernel
  taken at rows/columns 0, 3, 6 (-> 3x3), and fc7's inputs every 4th as well;
* ``classifier.6`` (the 1000-way ImageNet classifier) is dropped.

The new layers (mask scoring conv, autoencoder, class and box predictors) are not in the
checkpoint and are initialised as the paper says when the model is built.
"""

from __future__ import annotations

from typing import Dict

import torch

# torchvision features.<index> -> VGG layer name.
TORCHVISION_CONVS = {
    0: "conv1_1",
    2: "conv1_2",
    5: "conv2_1",
    7: "conv2_2",
    10: "conv3_1",
    12: "conv3_2",
    14: "conv3_3",
    17: "conv4_1",
    19: "conv4_2",
    21: "conv4_3",
    24: "conv5_1",
    26: "conv5_2",
    28: "conv5_3",
}
SHARED_TRUNK = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")


def convert_torchvision_vgg16(
    state_dict: Dict[str, torch.Tensor], seg_fc_dim: int = 1024
) -> Dict[str, torch.Tensor]:
    """Map a torchvision VGG-16 state dict onto r2ios_d2's parameter names.

    Args:
        state_dict: ``torchvision.models.vgg16().state_dict()`` (features.*, classifier.*).
        seg_fc_dim: output channels of the seg branch's fc6/fc7 convs (DeepLab-LargeFOV: 1024);
            must divide 4096.

    Returns:
        dict of parameter name -> tensor, names as in an R2-IOS ``GeneralizedRCNN``.
    """
    expected = {f"features.{i}.{p}" for i in TORCHVISION_CONVS for p in ("weight", "bias")}
    expected |= {f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    missing = sorted(expected - set(state_dict))
    if missing:
        raise KeyError(f"not a torchvision VGG-16 state dict: missing {missing[:4]} ...")
    if 4096 % seg_fc_dim:
        raise ValueError(f"seg_fc_dim {seg_fc_dim} must divide 4096")
    out: Dict[str, torch.Tensor] = {}
    for idx, name in TORCHVISION_CONVS.items():
        w = state_dict[f"features.{idx}.weight"]
        b = state_dict[f"features.{idx}.bias"]
        targets = [name] if name in SHARED_TRUNK else [f"det_{name}", f"seg_{name}"]
        for t in targets:
            out[f"backbone.{t}.weight"] = w.clone()
            out[f"backbone.{t}.bias"] = b.clone()

    fc6_w, fc6_b = state_dict["classifier.0.weight"], state_dict["classifier.0.bias"]
    fc7_w, fc7_b = state_dict["classifier.3.weight"], state_dict["classifier.3.bias"]
    if tuple(fc6_w.shape) != (4096, 512 * 7 * 7) or tuple(fc7_w.shape) != (4096, 4096):
        raise ValueError(f"unexpected fc6/fc7 shapes {tuple(fc6_w.shape)}, {tuple(fc7_w.shape)}")
    out["roi_heads.box_head.fc1.weight"] = fc6_w.clone()
    out["roi_heads.box_head.fc1.bias"] = fc6_b.clone()
    out["roi_heads.box_head.fc2.weight"] = fc7_w.clone()
    out["roi_heads.box_head.fc2.bias"] = fc7_b.clone()

    step = 4096 // seg_fc_dim
    taps = torch.tensor([0, 3, 6])
    fc6_conv = fc6_w.reshape(4096, 512, 7, 7)[::step][:, :, taps][:, :, :, taps]
    out["backbone.seg_fc6.weight"] = fc6_conv.contiguous()
    out["backbone.seg_fc6.bias"] = fc6_b[::step].clone()
    out["backbone.seg_fc7.weight"] = fc7_w[::step, ::step].reshape(seg_fc_dim, seg_fc_dim, 1, 1)
    out["backbone.seg_fc7.bias"] = fc7_b[::step].clone()
    return out
