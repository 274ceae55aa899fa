"""Training infrastructure: checkpoints, per-layer lr, the VGG-16 converter."""

import os
import pickle

import pytest
import torch
from torch import nn

from r2ios_d2.engine import CheckpointError, R2IOSCheckpointer, atomic_torch_save
from r2ios_d2.engine.optimizer import split_pretrained_groups
from r2ios_d2.engine.vgg_weights import convert_torchvision_vgg16


class _Net(nn.Module):
    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, out)


def test_checkpoint_save_is_atomic_and_tagged(tmp_path):
    net = _Net()
    ckpt = R2IOSCheckpointer(net, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    loaded = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert loaded["iteration"] == 9
    torch.testing.assert_close(loaded["model"]["head.weight"], net.head.weight)


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    atomic_torch_save({"a": torch.ones(1)}, str(tmp_path / "m.pth"))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed during write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_torch_save({"a": Boom()}, str(tmp_path / "m.pth"))
    assert torch.load(tmp_path / "m.pth", weights_only=True)["a"].item() == 1.0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_pickle_weights_need_opt_in(tmp_path):
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"head.weight": torch.zeros(3, 4).numpy()}, "__author__": "t"}, f)
    with pytest.raises(CheckpointError, match="ALLOW_PICKLE_WEIGHTS"):
        R2IOSCheckpointer(_Net()).load(str(path))
    net = _Net()
    R2IOSCheckpointer(net, allow_pickle=True).load(str(path))
    assert float(net.head.weight.abs().sum()) == 0.0


def test_checkpoint_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "obj": _Net()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        R2IOSCheckpointer(_Net()).load(str(path))


def test_shape_mismatch_is_an_error_unless_allowed(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"model": _Net(out=5).state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"head.weight: checkpoint \(5, 4\) vs model \(3, 4\)"
    ):
        R2IOSCheckpointer(_Net(out=3)).load(str(path))
    net = _Net(out=3)
    R2IOSCheckpointer(net, allow_shape_mismatch=True).load(str(path))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        R2IOSCheckpointer(_Net()).load(str(tmp_path / "nope.pth"))


def test_pretrained_lr_factor_splits_groups():
    net = _Net()
    groups = [{"params": list(net.parameters()), "lr": 0.01, "weight_decay": 1e-4}]
    out = split_pretrained_groups(groups, net, ("backbone.",), 0.1, 0.01)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in out}
    pre = {id(p) for p in net.backbone.parameters()}
    new = {id(p) for p in net.head.parameters()}
    assert any(abs(lr - 0.001) < 1e-12 and ids == pre for lr, ids in by_lr.items())
    assert any(abs(lr - 0.01) < 1e-12 and ids == new for lr, ids in by_lr.items())
    assert all(g["weight_decay"] == 1e-4 for g in out)


def test_adamw_is_fused_where_torch_supports_it_with_the_same_update():
    from conftest import tiny_r2ios_cfg
    from detectron2.modeling import build_model

    from r2ios_d2.engine import build_r2ios_optimizer
    from r2ios_d2.engine.optimizer import _fused_adamw_supported

    cfg = tiny_r2ios_cfg()
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    models, opts = [], []
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_model(cfg)
        opt = build_r2ios_optimizer(cfg, model)
        if not fused:  # the same groups, torch's per-tensor loop
            groups = [{**g, "fused": None, "foreach": False} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR)
            assert not any(g["fused"] for g in opt.param_groups)
        models.append(model)
        opts.append(opt)
    supported = _fused_adamw_supported(models[0])
    assert all(g.get("fused") == (supported or None) for g in opts[0].param_groups)
    for model, opt in zip(models, opts):
        for step in range(2):
            g = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_convert_vgg16_mapping():
    torchvision = pytest.importorskip("torchvision")
    sd = torchvision.models.vgg16(weights=None).state_dict()
    out = convert_torchvision_vgg16(sd)
    torch.testing.assert_close(out["backbone.conv1_1.weight"], sd["features.0.weight"])
    torch.testing.assert_close(out["backbone.det_conv5_3.weight"], sd["features.28.weight"])
    torch.testing.assert_close(out["backbone.seg_conv4_1.bias"], sd["features.17.bias"])
    assert out["backbone.seg_fc6.weight"].shape == (1024, 512, 3, 3)
    fc6 = sd["classifier.0.weight"].reshape(4096, 512, 7, 7)
    torch.testing.assert_close(out["backbone.seg_fc6.weight"][5, 7, 1, 2], fc6[20, 7, 3, 6])
    assert out["backbone.seg_fc7.weight"].shape == (1024, 1024, 1, 1)
    torch.testing.assert_close(
        out["backbone.seg_fc7.weight"][3, 2, 0, 0], sd["classifier.3.weight"][12, 8]
    )
    torch.testing.assert_close(out["roi_heads.box_head.fc2.weight"], sd["classifier.3.weight"])
    assert not any(k.startswith("classifier") for k in out)


def test_convert_rejects_other_state_dicts():
    with pytest.raises(KeyError, match="not a torchvision VGG-16"):
        convert_torchvision_vgg16({"features.0.weight": torch.zeros(1)})


def test_checkpointer_for_config_takes_the_opt_ins_from_the_config():
    from detectron2.config import get_cfg

    from r2ios_d2 import add_r2ios_config

    cfg = get_cfg()
    add_r2ios_config(cfg)
    ckpt = R2IOSCheckpointer.for_config(_Net(), cfg)
    assert (ckpt.allow_pickle, ckpt.allow_shape_mismatch) == (False, False)
    cfg.MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS = True
    cfg.MODEL.R2IOS.ALLOW_SHAPE_MISMATCH = True
    ckpt = R2IOSCheckpointer.for_config(_Net(), cfg, "out_dir")
    assert (ckpt.allow_pickle, ckpt.allow_shape_mismatch, ckpt.save_dir) == (True, True, "out_dir")
