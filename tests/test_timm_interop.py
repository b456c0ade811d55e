"""MaskedViT.from_timm: a timm VisionTransformer's weights carried over must give timm's outputs."""

from __future__ import annotations

import pytest
import torch
from mimir_fast import MaskedViT
from timm.models.vision_transformer import VisionTransformer
from torch import nn


@pytest.fixture(autouse=True)
def _no_kernel_env(monkeypatch):
    monkeypatch.delenv("MIMIR_FAST_KERNELS", raising=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL_DECODER = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def randomize(vit: nn.Module, seed: int) -> None:
    """timm initialises biases to 0, norms to 1/0 and some tokens tiny: fill everything with
    fresh random values so that a dropped or misplaced tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name in ("cls_token", "pos_embed"):
                p.copy_(0.5 * noise + 0.05)
            elif p.ndim == 1:
                p.copy_(0.1 * noise + 0.02)
            else:  # matrices: ~unit-variance outputs for these widths
                fan_in = p[0].numel()
                p.copy_(noise / fan_in**0.5 + 0.01)


TIMM_CASES = [
    pytest.param(
        dict(
            img_size=32,
            patch_size=8,
            in_chans=3,
            embed_dim=48,
            depth=2,
            num_heads=3,
            num_classes=10,
            global_pool="token",
            qkv_bias=True,
        ),
        id="32px-p8-C3-d48-token",
    ),
    pytest.param(
        dict(
            img_size=32,
            patch_size=4,
            in_chans=1,
            embed_dim=32,
            depth=1,
            num_heads=2,
            num_classes=7,
            global_pool="avg",
            qkv_bias=True,
        ),
        id="32px-p4-C1-d32-avg",
    ),
    pytest.param(
        dict(
            img_size=48,
            patch_size=16,
            in_chans=5,
            embed_dim=64,
            depth=3,
            num_heads=4,
            num_classes=7,
            global_pool="avg",
            qkv_bias=False,
        ),
        id="48px-p16-C5-d64-avg-noqkvbias",
    ),
    pytest.param(
        dict(
            img_size=48,
            patch_size=8,
            in_chans=3,
            embed_dim=96,
            depth=2,
            num_heads=4,
            num_classes=10,
            global_pool="token",
            qkv_bias=False,
            mlp_ratio=2.0,
        ),
        id="48px-p8-C3-d96-token-noqkvbias-mlp2",
    ),
    pytest.param(
        dict(
            img_size=32,
            patch_size=8,
            in_chans=3,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=7,
            global_pool="token",
            fc_norm=True,
        ),
        id="token-with-fc_norm",
    ),
    pytest.param(
        dict(
            img_size=32,
            patch_size=8,
            in_chans=3,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=7,
            global_pool="avg",
            fc_norm=False,
        ),
        id="avg-without-fc_norm",
    ),
    pytest.param(
        dict(
            img_size=32,
            patch_size=8,
            in_chans=3,
            embed_dim=32,
            depth=1,
            num_heads=2,
            num_classes=0,
            global_pool="avg",
        ),
        id="no-head",
    ),
]


def build(kwargs, seed):
    torch.manual_seed(seed)
    vit = VisionTransformer(**kwargs)
    randomize(vit, seed)
    return vit.eval()


@pytest.mark.parametrize("kwargs", TIMM_CASES)
def test_from_timm_matches_timm(kwargs):
    vit = build(kwargs, seed=len(str(kwargs)))
    model = MaskedViT.from_timm(vit, kernels="torch", **SMALL_DECODER).eval()
    c = model.config
    assert (c.img_size, c.patch_size, c.in_chans) == (
        kwargs["img_size"],
        kwargs["patch_size"],
        kwargs["in_chans"],
    )
    assert (c.embed_dim, c.depth, c.num_heads) == (
        kwargs["embed_dim"],
        kwargs["depth"],
        kwargs["num_heads"],
    )
    assert c.num_classes == kwargs["num_classes"] and c.global_pool == kwargs["global_pool"]
    assert c.qkv_bias == kwargs.get("qkv_bias", True)
    assert c.learnable_pos_embed and isinstance(model.pos_embed, nn.Parameter)
    x = torch.randn(
        3,
        kwargs["in_chans"],
        kwargs["img_size"],
        kwargs["img_size"],
        generator=torch.Generator().manual_seed(1),
    )
    with torch.no_grad():
        feats_timm = vit.forward_features(x)
        feats = model.forward_features(x)
        assert feats.shape == feats_timm.shape
        torch.testing.assert_close(feats, feats_timm, rtol=1e-4, atol=1e-5)
        pre_timm = vit.forward_head(feats_timm, pre_logits=True)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, pre_timm, rtol=1e-4, atol=1e-5)
        logits_timm = vit(x)
        logits = model(x)
        expected_width = kwargs["num_classes"] or kwargs["embed_dim"]
        assert logits.shape == (3, expected_width)
        torch.testing.assert_close(logits, logits_timm, rtol=1e-4, atol=1e-5)
        # the comparison is not trivial: outputs vary across samples and are not tiny
        assert logits.std(0).mean() > 1e-2
        assert logits.abs().max() > 1e-1


@pytest.mark.parametrize("kwargs", [TIMM_CASES[0], TIMM_CASES[2]])
def test_mae_path_on_converted_model(kwargs):
    vit = build(kwargs, seed=3)
    model = MaskedViT.from_timm(vit, kernels="torch", **SMALL_DECODER).train()
    x = torch.randn(
        3,
        kwargs["in_chans"],
        kwargs["img_size"],
        kwargs["img_size"],
        generator=torch.Generator().manual_seed(2),
    )
    torch.manual_seed(0)
    loss, pred, mask = model(x, mask_ratio=0.75)
    length = (kwargs["img_size"] // kwargs["patch_size"]) ** 2
    assert torch.isfinite(loss)
    assert pred.shape == (3, length, kwargs["patch_size"] ** 2 * kwargs["in_chans"])
    assert mask.sum().item() == 3 * (length - int(length * 0.25))
    loss.backward()
    for name in (
        "patch_embed.proj.weight",
        "pos_embed",
        "cls_token",
        "blocks.0.attn.qkv.weight",
        f"blocks.{kwargs['depth'] - 1}.mlp.fc2.weight",
        "decoder_pred.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_from_timm_copies_weights_not_aliases():
    vit = build(TIMM_CASES[1].values[0], seed=4)
    model = MaskedViT.from_timm(vit, kernels="torch", **SMALL_DECODER)
    theirs = vit.state_dict()
    for name, t in model.state_dict().items():
        if name in theirs:
            assert torch.equal(t, theirs[name]), name
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_from_timm_overrides_and_save_load(tmp_path):
    vit = build(TIMM_CASES[0].values[0], seed=5)
    model = MaskedViT.from_timm(vit, kernels="torch", norm_pix_loss=False, **SMALL_DECODER).eval()
    assert model.config.decoder_embed_dim == 32 and not model.config.norm_pix_loss
    path = tmp_path / "from_timm.safetensors"
    model.save(path)
    loaded = MaskedViT.load(path).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), vit(x), rtol=1e-4, atol=1e-5)


def test_from_timm_non_integer_mlp_ratio():
    # timm sizes the MLP as int(embed_dim * mlp_ratio) = int(76 * 3.3) = 250. from_timm stores
    # mlp_ratio = 250 / 76 and Block rebuilds int(76 * (250 / 76)), which is 249 in floating
    # point, so the weights no longer fit.
    kwargs = dict(
        img_size=32,
        patch_size=8,
        in_chans=3,
        embed_dim=76,
        depth=1,
        num_heads=2,
        num_classes=7,
        mlp_ratio=3.3,
    )
    vit = build(kwargs, seed=7)
    assert vit.blocks[0].mlp.fc1.out_features == 250
    model = MaskedViT.from_timm(vit, kernels="torch", **SMALL_DECODER).eval()
    assert model.blocks[0].mlp.fc1.out_features == 250
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), rtol=1e-4, atol=1e-5)


UNSUPPORTED = [
    pytest.param(dict(init_values=1e-5), "layer scale", id="layer-scale"),
    pytest.param(dict(reg_tokens=4), "register tokens", id="register-tokens"),
    pytest.param(dict(class_token=False, global_pool="avg"), "class token", id="no-class-token"),
    pytest.param(dict(qk_norm=True), "q_norm", id="qk-norm"),
    pytest.param(dict(no_embed_class=True), "no_embed_class", id="no-embed-class"),
    pytest.param(dict(pre_norm=True), "norm_pre", id="pre-norm"),
    pytest.param(dict(global_pool="map"), "attention pooling", id="map-pool"),
]


@pytest.mark.parametrize("extra,feature", UNSUPPORTED)
def test_from_timm_rejects_unsupported_features(extra, feature):
    kwargs = dict(
        img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=1, num_heads=2, num_classes=7
    )
    kwargs.update(extra)
    vit = VisionTransformer(**kwargs)
    with pytest.raises(ValueError, match=feature):
        MaskedViT.from_timm(vit, **SMALL_DECODER)


def test_from_timm_rejects_non_vit():
    with pytest.raises(ValueError, match="not a timm VisionTransformer"):
        MaskedViT.from_timm(nn.Linear(3, 3))
