"""MODEL.VGG.FROZEN_FEATURE_CACHE_MB: the frozen conv blocks run once per image; what the
backbone returns is what it computes for each image alone, gradients reach only the layers that
learn, and new weights or a small budget are handled."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from r2ios_d2.config import add_r2ios_config
from r2ios_d2.modeling import VGG16TwoBranch, build_r2ios_vgg_backbone
from r2ios_d2.modeling.feature_cache import image_extent

SMALL = dict(width=0.125, seg_fc_dim=64)


def _pair(freeze_at, mb=8, shared_conv4=False):
    torch.manual_seed(0)
    kw = dict(SMALL, freeze_at=freeze_at, shared_conv4=shared_conv4)
    plain = VGG16TwoBranch(**kw)
    cached = VGG16TwoBranch(**kw, frozen_feature_cache_mb=mb)
    cached.load_state_dict(plain.state_dict())
    return plain, cached


def _batch():
    """Two zero-padded images of different sizes (64x80 and 48x96) in a 64x96 batch."""
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 3, 64, 96)
    x[0, :, :, :80] = torch.randn(3, 64, 80, generator=g)
    x[1, :, :48, :] = torch.randn(3, 48, 96, generator=g)
    return x, [(64, 80), (48, 96)]


def test_image_extent_strips_only_the_zero_padding():
    x, sizes = _batch()
    assert [image_extent(img) for img in x] == sizes
    assert image_extent(torch.zeros(3, 16, 16)) == (1, 1)


@pytest.mark.parametrize("shared_conv4", [False, True])
def test_cached_features_equal_each_image_alone_and_are_computed_once(shared_conv4):
    plain, cached = _pair(freeze_at=5, shared_conv4=shared_conv4)
    x, sizes = _batch()
    first = cached(x)
    assert (cached.feature_cache.misses, cached.feature_cache.hits) == (2, 0)
    second = cached(x.flip(0))  # same images, other order: both from the cache
    assert (cached.feature_cache.misses, cached.feature_cache.hits) == (2, 2)
    for i, (h, w) in enumerate(sizes):
        alone = plain(x[i : i + 1, :, :h, :w])
        for name, stride in (("det", 16), ("seg", 8)):
            a = alone[name][0]
            got = first[name][i, :, : a.shape[1], : a.shape[2]]
            torch.testing.assert_close(got, a, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(second[name][1 - i], first[name][i])
            assert first[name].shape[-2:] == (64 // stride, 96 // stride)


@pytest.mark.parametrize("shared_conv4", [False, True])
@pytest.mark.parametrize("freeze_at", [3, 4])
def test_cached_features_equal_the_plain_backbone_on_unpadded_images(freeze_at, shared_conv4):
    # Below conv5 the learning layers see the padding of a mixed-size batch, so the exact
    # comparison is on images that fill the batch.
    plain, cached = _pair(freeze_at=freeze_at, shared_conv4=shared_conv4)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    expected = plain(x)
    for _ in range(2):
        got = cached(x)
        for name in ("det", "seg"):
            torch.testing.assert_close(got[name], expected[name])
    assert (cached.feature_cache.misses, cached.feature_cache.hits) == (2, 2)


@pytest.mark.parametrize("shared_conv4", [False, True])
@pytest.mark.parametrize("freeze_at", [3, 4, 5])
def test_gradients_reach_only_the_layers_that_learn(freeze_at, shared_conv4):
    _, cached = _pair(freeze_at=freeze_at, shared_conv4=shared_conv4)
    x, _ = _batch()
    for _ in range(2):  # the second pass is served from the cache
        cached.zero_grad()
        out = cached(x)
        (out["det"].square().mean() + out["seg"].square().mean()).backward()
    for name, p in cached.named_parameters():
        block = int(name[name.index("conv") + 4]) if "conv" in name else 6
        if block <= freeze_at:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_new_weights_empty_the_cache():
    plain, cached = _pair(freeze_at=5)
    x, _ = _batch()
    cached(x)
    torch.manual_seed(5)
    other = VGG16TwoBranch(**SMALL, freeze_at=5)
    cached.load_state_dict(other.state_dict())
    out = cached(x)
    assert cached.feature_cache.misses == 4
    alone = other(x[:1, :, :, :80])["det"][0]
    torch.testing.assert_close(out["det"][0, :, :, :5], alone, rtol=1e-5, atol=1e-5)


def test_the_budget_evicts_the_least_recently_used_image():
    _, cached = _pair(freeze_at=5)
    x, _ = _batch()
    cached(x[:1])
    one_image = cached.feature_cache.nbytes
    cached.feature_cache.max_bytes = one_image + one_image // 2
    cached(x[1:])
    assert len(cached.feature_cache) == 1 and cached.feature_cache.nbytes <= one_image * 1.5
    cached(x[1:])
    assert cached.feature_cache.hits == 1


def test_the_cache_needs_frozen_conv_blocks():
    with pytest.raises(ValueError, match="FREEZE_AT 3, 4 or 5"):
        VGG16TwoBranch(**SMALL, freeze_at=2, frozen_feature_cache_mb=8)
    with pytest.raises(ValueError, match="FROZEN_FEATURE_CACHE_MB must be >= 0"):
        VGG16TwoBranch(**SMALL, freeze_at=5, frozen_feature_cache_mb=-1)


def test_config_key_builds_the_cache():
    cfg = get_cfg()
    add_r2ios_config(cfg)
    cfg.MODEL.VGG.WIDTH = 0.125
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB = 16
    backbone = build_r2ios_vgg_backbone(cfg, ShapeSpec(channels=3))
    assert backbone.feature_cache is not None and backbone.feature_cache.max_bytes == 16 * 2**20
    cfg.MODEL.VGG.FROZEN_FEATURE_CACHE_MB = 0
    assert build_r2ios_vgg_backbone(cfg, ShapeSpec(channels=3)).feature_cache is None


def test_features_on_disk_serve_the_next_model_with_the_same_weights(tmp_path):
    plain, first = _pair(freeze_at=5)
    first.feature_cache.folder = str(tmp_path)
    x, _ = _batch()
    reference = first(x)
    files = sorted(p.name for p in tmp_path.rglob("*.npy"))
    assert len(files) == 4 and not list(tmp_path.rglob(".tmp-*"))  # 2 images x (det, seg)

    # Another process: a model with the same frozen weights reads them instead of computing.
    second = VGG16TwoBranch(
        **SMALL, freeze_at=5, frozen_feature_cache_mb=8, frozen_feature_cache_dir=str(tmp_path)
    )
    second.load_state_dict(plain.state_dict())
    out = second(x)
    assert (second.feature_cache.misses, second.feature_cache.disk_reads) == (0, 2)
    for name in ("det", "seg"):
        torch.testing.assert_close(out[name], reference[name])

    # A damaged file is computed again (and rewritten); other weights use another folder.
    damaged = next(tmp_path.rglob("*_seg.npy"))
    damaged.write_bytes(b"not a numpy file")
    third = VGG16TwoBranch(
        **SMALL, freeze_at=5, frozen_feature_cache_mb=8, frozen_feature_cache_dir=str(tmp_path)
    )
    third.load_state_dict(plain.state_dict())
    torch.testing.assert_close(third(x)["seg"], reference["seg"])
    assert third.feature_cache.misses == 1
    torch.manual_seed(7)
    other = VGG16TwoBranch(
        **SMALL, freeze_at=5, frozen_feature_cache_mb=8, frozen_feature_cache_dir=str(tmp_path)
    )
    other(x)
    assert other.feature_cache.misses == 2
    assert len({p.parent for p in tmp_path.rglob("*.npy")}) == 2
