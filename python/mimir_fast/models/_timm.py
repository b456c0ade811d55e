"""A timm ``VisionTransformer``'s weights carried over into a MaskedViT.

Kept apart from the model, as timm keeps its checkpoint conversions apart from its models:
:meth:`MaskedViT.from_timm <mimir_fast.models.MaskedViT.from_timm>` calls :func:`from_timm`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from torch import nn

from ._io import load_weights
from .config import MaskedViTConfig

if TYPE_CHECKING:
    from .masked_vit import MaskedViT

__all__ = ["config_from_timm", "from_timm"]


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"from_timm: {what} is not supported")


def _check_supported(vit: nn.Module) -> None:
    """Raise ValueError for a timm ViT feature that MaskedViT does not have."""
    _need(
        hasattr(vit, "patch_embed") and hasattr(vit, "blocks"),
        "a model that is not a timm VisionTransformer",
    )
    _need(getattr(vit, "cls_token", None) is not None, "a ViT without a class token")
    _need(getattr(vit, "reg_token", None) is None, "register tokens")
    _need(not getattr(vit, "no_embed_class", False), "no_embed_class=True")
    _need(getattr(vit, "pos_embed", None) is not None, "a ViT without position embedding")
    _need(getattr(vit, "attn_pool", None) is None, "attention pooling")
    _need(vit.global_pool in ("avg", "token"), f"global_pool={vit.global_pool!r}")
    for name in ("norm_pre", "patch_drop"):
        _need(isinstance(getattr(vit, name, nn.Identity()), nn.Identity), name)
    _need(
        isinstance(getattr(vit.patch_embed, "norm", nn.Identity()), nn.Identity),
        "a patch-embed norm",
    )
    block0 = vit.blocks[0]
    for name in ("ls1", "ls2"):
        _need(isinstance(getattr(block0, name, nn.Identity()), nn.Identity), "layer scale")
    for name in ("q_norm", "k_norm", "norm"):
        _need(
            isinstance(getattr(block0.attn, name, nn.Identity()), nn.Identity),
            f"attention {name}",
        )
    act = getattr(block0.mlp, "act", None)
    _need(
        isinstance(act, nn.GELU) and act.approximate == "none",
        "an MLP activation other than exact GELU",
    )
    _need(isinstance(getattr(block0.mlp, "norm", nn.Identity()), nn.Identity), "an MLP norm")
    proj = vit.patch_embed.proj
    img = vit.patch_embed.img_size
    _need(
        img[0] == img[1] and proj.kernel_size[0] == proj.kernel_size[1] == proj.stride[0],
        "non-square images or overlapping patches",
    )


def config_from_timm(vit: nn.Module) -> MaskedViTConfig:
    """The MaskedViT architecture of a timm ViT (learnable position embedding, MIMIR's decoder)."""
    _check_supported(vit)
    block0 = vit.blocks[0]
    proj = vit.patch_embed.proj
    embed_dim = proj.out_channels
    use_fc_norm = isinstance(vit.fc_norm, nn.LayerNorm)
    norm_layer = vit.fc_norm if use_fc_norm else vit.norm
    return MaskedViTConfig(
        img_size=vit.patch_embed.img_size[0],
        patch_size=proj.kernel_size[0],
        in_chans=proj.in_channels,
        embed_dim=embed_dim,
        depth=len(vit.blocks),
        num_heads=block0.attn.num_heads,
        mlp_ratio=block0.mlp.fc1.out_features / embed_dim,
        qkv_bias=block0.attn.qkv.bias is not None,
        norm_eps=norm_layer.eps if isinstance(norm_layer, nn.LayerNorm) else 1e-6,
        num_classes=vit.num_classes,
        global_pool=vit.global_pool,
        fc_norm=use_fc_norm,
        learnable_pos_embed=True,
    )


def from_timm(
    cls: type[MaskedViT], vit: nn.Module, kernels: str = "auto", **overrides: Any
) -> MaskedViT:
    """A ``cls`` carrying the weights of ``vit``; the decoder is freshly initialised.

    Args:
        cls: the model class. vit: a timm ``VisionTransformer``. kernels: the fast-path switch.
        overrides: config fields to replace (e.g. the decoder's size).
    """
    config = dataclasses.replace(config_from_timm(vit), **overrides)
    model = cls(config, kernels=kernels)
    theirs = vit.state_dict()
    state = model.state_dict()
    for name in state:
        if name in theirs and not name.startswith(("decoder", "mask_token")):
            state[name] = theirs[name]
    load_weights(model, state, source="timm model")
    return model
