"""MaskedViT files: save, load, and the checks that a file's tensors fit the model.

Functions of the model class rather than methods, so the model's module keeps to the network;
:class:`~mimir_fast.models.MaskedViT` exposes them as ``save``, ``load`` and ``load_weights``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from .._io import atomic_save_tensors, load_tensors
from .config import MaskedViTConfig

if TYPE_CHECKING:
    from .masked_vit import MaskedViT

__all__ = ["FILE_FORMAT", "check_layout", "load_model", "load_weights", "save_model"]

FILE_FORMAT = "mimir_fast.MaskedViT/1"


def save_model(model: MaskedViT, path: str | os.PathLike) -> None:
    """Write weights and config to one safetensors file (atomically; no pickle)."""
    atomic_save_tensors(
        model.state_dict(),
        path,
        metadata={"format": FILE_FORMAT, "config": model.config.to_dict()},
    )


def load_model(
    cls: type[MaskedViT],
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    kernels: str = "auto",
) -> MaskedViT:
    """Build a ``cls`` from a file written by :func:`save_model` (or a training checkpoint).

    Args:
        cls: the model class. path: the safetensors file. map_location: device of the weights.
        kernels: the built model's fast-path switch.
    """
    tensors, meta = load_tensors(path, map_location)
    if "config" not in meta:
        raise ValueError(f"{path} holds no MaskedViT config; was it written by MaskedViT.save?")
    try:
        config = MaskedViTConfig.from_dict(meta["config"])
    except ValueError as e:
        raise ValueError(f"{path} holds an invalid MaskedViT config: {e}") from None
    prefix = "model." if any(k.startswith("model.") for k in tensors) else ""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    check_layout(config, state, str(path))  # before allocating a model of the file's size
    model = cls(config, kernels=kernels)
    load_weights(model, state, source=str(path))
    return model.to(map_location)


def check_layout(config: MaskedViTConfig, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError when ``state`` cannot be the weights of a model built from ``config``.

    Compares the block counts and the tensors that fix every width, before the model is built:
    a file whose config was altered cannot make the loader build a model far larger than
    the file (:func:`load_weights` then checks every tensor).
    """
    for name, depth in (("blocks", config.depth), ("decoder_blocks", config.decoder_depth)):
        found = {k.split(".")[1] for k in state if k.startswith(name + ".")}
        if len(found) != depth:
            raise ValueError(
                f"{source} does not match its config: it holds {len(found)} {name} but the "
                f"config says {depth}"
            )
    c = config
    p, d, dd = c.patch_size, c.embed_dim, c.decoder_embed_dim
    tokens = 1 + (c.img_size // p) ** 2
    expected = {
        "patch_embed.proj.weight": (d, c.in_chans, p, p),
        "pos_embed": (1, tokens, d),
        "decoder_pos_embed": (1, tokens, dd),
        "decoder_pred.weight": (p * p * c.in_chans, dd),
    }
    if c.num_classes > 0:
        expected["head.weight"] = (c.num_classes, d)
    if c.depth:
        expected["blocks.0.mlp.fc1.weight"] = (round(d * c.mlp_ratio), d)
    if c.decoder_depth:
        expected["decoder_blocks.0.mlp.fc1.weight"] = (round(dd * c.mlp_ratio), dd)
    problems = [
        f"{k}: file {tuple(state[k].shape) if k in state else 'none'} vs config {shape}"
        for k, shape in expected.items()
        if k not in state or tuple(state[k].shape) != shape
    ]
    if problems:
        raise ValueError(f"{source} does not match its config: " + "; ".join(problems))


def load_weights(
    model: MaskedViT,
    state: dict[str, torch.Tensor],
    source: str = "state dict",
    strict: bool = True,
) -> None:
    """``load_state_dict`` with errors that say which tensors are missing or mis-shaped."""
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and missing:
        problems.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if strict and unexpected:
        problems.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:8]))
    if problems:
        raise ValueError(f"{source} does not match this MaskedViT: " + " | ".join(problems))
    model.load_state_dict(state, strict=strict)
