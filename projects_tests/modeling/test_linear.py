"""MODEL.R2IOS.CPU_LINEAR: fully connected layers through oneDNN on CPU equal torch's F.linear
(values and every gradient, up to float rounding), keep nn.Linear's parameters, and are what
the heads, the trainer and the configs build."""

import gc
import weakref

import pytest
import torch
from conftest import tiny_r2ios_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn import functional as F

from r2ios_d2.config_checks import validate_r2ios_config
from r2ios_d2.engine.trainer import R2IOSTrainer
from r2ios_d2.modeling import linear as linear_mod
from r2ios_d2.modeling.linear import (
    OneDNNLinear,
    derived_weights,
    linear,
    onednn_available,
    set_cpu_linear,
)

needs_onednn = pytest.mark.skipif(
    not onednn_available(), reason="this torch has no oneDNN linear op on this CPU"
)


def _leaves(seed, m=37, k=50, n=23, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).requires_grad_()
    w = torch.randn(n, k, generator=g).requires_grad_()
    b = torch.randn(n, generator=g).requires_grad_() if bias else None
    return x, w, b


def _run(fn, x, w, b, g):
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    y = fn(x, w, b)
    y.backward(g)
    return y.detach(), [None if t is None else t.grad.clone() for t in (x, w, b)]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "transposed views"])
def test_onednn_linear_equals_f_linear_values_and_gradients(bias, layout):
    x, w, b = _leaves(0, bias=bias)
    if layout == "transposed views":  # e.g. derived weights, sliced features
        x = x.detach().t().contiguous().t().requires_grad_()
        w = w.detach().t().contiguous().t().requires_grad_()
        assert not x.is_contiguous() and not w.is_contiguous()
    g = torch.randn(x.shape[0], w.shape[0], generator=torch.Generator().manual_seed(1))
    y, grads = _run(linear, x, w, b, g)
    y_ref, grads_ref = _run(F.linear, x, w, b, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # without autograd: the op itself, same values
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), y_ref, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_linear_passes_gradcheck_where_it_applies_and_only_there():
    x, w, b = _leaves(2, m=6, k=5, n=4)
    # float64: F.linear itself (the oneDNN path is float32 only), checked against finite
    # differences; float32: the oneDNN path's analytic gradients against float64 F.linear's.
    assert torch.autograd.gradcheck(linear, (x.double(), w.double(), b.double()))
    g = torch.randn(6, 4, dtype=torch.float64)
    _, grads32 = _run(linear, x, w, b, g.float())
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    _, grads64 = _run(F.linear, xd, wd, bd, g)
    for got, want in zip(grads32, grads64):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_only_the_needed_gradients_are_computed():
    x, w, b = _leaves(3)
    w.requires_grad_(False)
    b.requires_grad_(False)
    y = linear(x, w, b)
    assert y.grad_fn is not None
    y.sum().backward()
    assert x.grad is not None and w.grad is None and b.grad is None
    x2, w2, _ = _leaves(4, bias=False)
    x2.requires_grad_(False)
    linear(x2, w2).sum().backward()
    torch.testing.assert_close(w2.grad, x2.sum(0).expand_as(w2), rtol=1e-5, atol=1e-5)


def test_other_dtypes_autocast_and_an_unavailable_op_run_f_linear_exactly(monkeypatch):
    x, w, b = (t.detach().double() for t in _leaves(5))
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    xf, wf, bf = (t.detach() for t in _leaves(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own lower precision
        got = linear(xf, wf, bf)
        assert got.dtype == torch.bfloat16 and torch.equal(got, F.linear(xf, wf, bf))
    monkeypatch.setattr(linear_mod, "onednn_available", lambda: False)
    assert torch.equal(linear(xf, wf, bf), F.linear(xf, wf, bf))
    layer = OneDNNLinear(50, 23)
    assert torch.equal(layer(xf), F.linear(xf, layer.weight, layer.bias))


def test_a_failing_or_wrong_op_is_detected_once_and_falls_back(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no primitive")

    def wrong(x, w, b, *rest):
        return F.linear(x, w, b) + 1.0

    for op, message in ((broken, "unavailable"), (wrong, "disagrees")):
        monkeypatch.setattr(linear_mod, "_onednn_op", lambda op=op: op)
        linear_mod.onednn_available.cache_clear()
        try:
            with caplog.at_level("WARNING", logger=linear_mod.__name__):
                assert linear_mod.onednn_available() is False
            assert message in caplog.text
        finally:
            linear_mod.onednn_available.cache_clear()
        caplog.clear()


def test_set_cpu_linear_keeps_parameters_and_state_dict_and_converts_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 3)))
    net.add_module("conv", nn.Conv2d(1, 1, 1))

    class OwnLinear(nn.Linear):  # a subclass with its own forward is not touched
        def forward(self, x):
            return super().forward(x) * 2

    net.add_module("own", OwnLinear(3, 3))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    params = [id(p) for p in net.parameters()]
    x = torch.randn(4, 6)
    before = net[2](net[1](net[0](x)))
    assert set_cpu_linear(net, "onednn") == 2
    assert type(net[0]) is OneDNNLinear and type(net[2][0]) is OneDNNLinear
    assert type(net.own) is OwnLinear
    assert [id(p) for p in net.parameters()] == params
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(net[2](net[1](net[0](x))), before, rtol=1e-5, atol=1e-6)
    assert set_cpu_linear(net, "torch") == 2
    assert type(net[0]) is nn.Linear and type(net[2][0]) is nn.Linear
    with pytest.raises(ValueError, match="onednn"):
        set_cpu_linear(net, "mkl")


def test_heads_trainer_and_config_choose_the_backend():
    def linears(model):
        return {type(m) for m in model.modules() if isinstance(m, nn.Linear)}

    cfg = tiny_r2ios_cfg()
    assert cfg.MODEL.R2IOS.CPU_LINEAR == "onednn"
    model = build_model(cfg)
    assert linears(model) == {OneDNNLinear} and model.roi_heads.cpu_linear == "onednn"
    names = {n for n, m in model.named_modules() if isinstance(m, OneDNNLinear)}
    assert {"roi_heads.mask_head.ae_fc1", "roi_heads.box_predictor.cls_score"} <= names
    cfg.MODEL.R2IOS.CPU_LINEAR = "torch"
    assert linears(build_model(cfg)) == {nn.Linear}
    # the trainer puts stock heads on the config's backend too
    stock = tiny_r2ios_cfg()
    stock.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    stock.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    assert linears(build_model(stock)) == {nn.Linear}
    assert linears(R2IOSTrainer.build_model(stock)) == {OneDNNLinear}
    # a misspelt value names the key and the choices
    cfg.MODEL.R2IOS.CPU_LINEAR = "oneDNN"
    with pytest.raises(ValueError, match=r"MODEL\.R2IOS\.CPU_LINEAR.*'onednn'"):
        validate_r2ios_config(cfg)
    with pytest.raises(ValueError, match=r"MODEL\.R2IOS\.CPU_LINEAR"):
        build_model(cfg)


@needs_onednn
def test_training_losses_and_gradients_match_the_torch_backend(synthetic_inputs):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.1
    results = []
    for backend in ("onednn", "torch"):
        cfg.MODEL.R2IOS.CPU_LINEAR = backend
        torch.manual_seed(0)
        model = build_model(cfg).train()
        torch.manual_seed(5)  # the same RoI sampling
        with EventStorage():
            losses = model(synthetic_inputs)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (l_a, g_a), (l_b, g_b) = results
    assert sorted(l_a) == sorted(l_b) and l_a["loss_mask"] > 0
    for k in l_b:
        torch.testing.assert_close(l_a[k], l_b[k], rtol=1e-4, atol=1e-6, msg=k)
    assert sorted(g_a) == sorted(g_b) and "roi_heads.mask_head.ae_fc1.weight" in g_a
    for name in g_b:
        scale = g_b[name].abs().max().item()
        torch.testing.assert_close(g_a[name], g_b[name], rtol=1e-3, atol=1e-4 * scale, msg=name)


def _count_reorders(monkeypatch):
    assert linear_mod._packing_available()  # its one-time check done before counting
    calls = []
    reorder = linear_mod._reorder

    def counted(w):
        calls.append(tuple(w.shape))
        return reorder(w)

    monkeypatch.setattr(linear_mod, "_reorder", counted)
    return calls


@needs_onednn
def test_inference_packs_each_weight_once_and_repacks_when_it_changes(monkeypatch):
    calls = _count_reorders(monkeypatch)
    torch.manual_seed(0)
    layer = OneDNNLinear(300, 40).eval()
    x = torch.randn(9, 300)
    with torch.no_grad():
        want = F.linear(x, layer.weight, layer.bias)
        for _ in range(3):  # packed once, then reused
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        assert calls == [(40, 300)]
        with torch.inference_mode():  # the same copy inside inference mode
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        assert len(calls) == 1
        # an in-place change (optimizer step, load_state_dict) makes a new copy
        layer.load_state_dict({"weight": layer.weight * 2, "bias": layer.bias})
        torch.testing.assert_close(
            layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5
        )
        assert len(calls) == 2
    # with autograd recording the weight: never packed (it changes at every step)
    y = layer(x)
    assert y.grad_fn is not None and len(calls) == 2
    y.sum().backward()
    assert layer.weight.grad is not None
    # in training mode, products without autograd keep the plain layout (the same rounding
    # as the products with autograd of the same step)
    layer.train()
    with torch.no_grad():
        layer.weight.mul_(0.5)
        assert torch.equal(layer(x), linear(x, layer.weight, layer.bias))
    assert len(calls) == 2


@needs_onednn
def test_packing_respects_the_size_limit_and_frees_its_copies(monkeypatch):
    calls = _count_reorders(monkeypatch)
    net = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 512)).eval()
    assert set_cpu_linear(net, "onednn", pack_mb=32 * 64 * 4 / 2**20) == 2  # the first only
    x = torch.randn(5, 64)
    with torch.no_grad():
        net(x)
        assert calls == [(32, 64)]
        set_cpu_linear(net, "onednn", pack_mb=0)  # never
        net(x)
        assert len(calls) == 1
        set_cpu_linear(net, "onednn")  # the default limit: the second too, the first kept
        net(x)
    assert calls == [(32, 64), (512, 32)]
    ids = {id(layer.weight) for layer in net}
    keys = [k for k in linear_mod._CACHE._entries if k[1] in ids]
    assert len(keys) == 2
    copies = [weakref.ref(linear_mod._CACHE._entries[k][2]) for k in keys]
    del net
    gc.collect()
    assert all(ref() is None for ref in copies)  # the packed copies went with the layers
    assert not any(k in linear_mod._CACHE._entries for k in keys)
    with pytest.raises(ValueError, match="pack_mb"):
        set_cpu_linear(nn.Linear(2, 2), "onednn", pack_mb=-1)


@needs_onednn
def test_a_failing_or_wrong_packing_is_detected_once_and_left_out(monkeypatch, caplog):
    def broken(w):
        raise RuntimeError("no reorder")

    def wrong(w):
        return linear_mod.torch.ops.mkldnn._reorder_linear_weight((w * 2).contiguous(), None)

    layer = OneDNNLinear(33, 5).eval()
    x = torch.randn(4, 33)
    for reorder, message in ((broken, "unavailable"), (wrong, "disagree")):
        monkeypatch.setattr(linear_mod, "_reorder", reorder)
        linear_mod._packing_available.cache_clear()
        try:
            with caplog.at_level("WARNING", logger=linear_mod.__name__), torch.no_grad():
                got = layer(x)  # plain layout: still right
            assert message in caplog.text
            torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias))
        finally:
            linear_mod._packing_available.cache_clear()
        caplog.clear()


def test_derived_weights_are_made_once_without_autograd_and_each_call_with_it():
    layer = nn.Linear(6, 4).eval()
    made = []

    def derive():
        made.append(1)
        return layer.weight * 3, layer.bias

    with torch.no_grad():
        w1, _ = derived_weights(layer, "triple", derive)
        w2, _ = derived_weights(layer, "triple", derive)
        assert w1 is w2 and len(made) == 1 and not w1.is_inference()
        derived_weights(layer, "other", derive)  # another derivation of the same layer
        assert len(made) == 2
        layer.weight.add_(1.0)  # changed in place: derived again
        w3, _ = derived_weights(layer, "triple", derive)
        torch.testing.assert_close(w3, layer.weight * 3)
        assert len(made) == 3
    with torch.inference_mode():  # made as an ordinary tensor, usable outside too
        w4, _ = derived_weights(layer, "triple", derive)
    assert w4 is w3 and not w4.is_inference()
    w5, _ = derived_weights(layer, "triple", derive)  # autograd: every call, with a graph
    w6, _ = derived_weights(layer, "triple", derive)
    assert w5.grad_fn is not None and w5 is not w6 and len(made) == 5
    layer.train()
    with torch.no_grad():  # training mode: every call too (the parameters change each step)
        derived_weights(layer, "triple", derive)
        derived_weights(layer, "triple", derive)
    assert len(made) == 7


@needs_onednn
def test_inference_with_packed_weights_equals_the_plain_layout(synthetic_inputs):
    cfg = tiny_r2ios_cfg()
    cfg.MODEL.R2IOS.MASK_INIT_STD = 0.1
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    outputs = []
    for pack_mb in (0.0, 32.0):
        set_cpu_linear(model, "onednn", pack_mb)
        with torch.no_grad():
            outputs.append([o["instances"] for o in model(synthetic_inputs)])
    assert sum(len(i) for i in outputs[0]) > 0
    for a, b in zip(*outputs):
        assert len(a) == len(b)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        assert (a.pred_masks != b.pred_masks).float().mean() < 1e-3
    cfg.MODEL.R2IOS.CPU_LINEAR_PACK_MB = -1.0
    with pytest.raises(ValueError, match=r"MODEL\.R2IOS\.CPU_LINEAR_PACK_MB"):
        validate_r2ios_config(cfg)
