"""The encoder's input tokens for the kept patches: the reference, and the choice of path.

- :func:`masked_patch_embed_reference`: embed every patch (a strided convolution), add the
  position, keep the listed patches; in fp32.
- :func:`masked_patch_embed`: what the model calls. The fused Triton kernel
  (:mod:`mimir_fast.kernels.masked_patch_embed`) embeds only the kept patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.dispatch import use_triton

__all__ = ["masked_patch_embed", "masked_patch_embed_reference"]


def masked_patch_embed_reference(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor,
) -> torch.Tensor:
    """``(conv(x) + pos)[ids_keep]``: embed every patch, add the position, keep the listed ones.

    Args:
        x: (N, C, H, W) images. ids_keep: (N, K) int64 kept patch indices.
        weight: (D, C, p, p) convolution weight (stride p). bias: (D,) or None.
        pos: (L, D) position embedding of the patch tokens.

    Returns:
        (N, K, D) in ``promote_types(weight, pos)``.
    """
    p = weight.shape[-1]
    dtype = torch.promote_types(weight.dtype, pos.dtype)
    tokens = F.conv2d(x.float(), weight.float(), None if bias is None else bias.float(), stride=p)
    tokens = tokens.flatten(2).transpose(1, 2) + pos.float()  # (N, L, D)
    tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return tokens.to(dtype)  # (N, K, D)


def masked_patch_embed(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor,
    kernels: str = "auto",
) -> torch.Tensor:
    """Tokens of the kept patches: ``conv(x)[ids_keep] + bias + pos[ids_keep]``.

    Args:
        x: (N, C, H, W). ids_keep: (N, K) int64. weight: (D, C, p, p). bias: (D,) or None.
        pos: (L, D) position embedding of the patch tokens (no class token).
        kernels: "auto", "torch" or "triton" (see :func:`mimir_fast.kernels.resolve_kernels`).

    Returns:
        (N, K, D) in ``promote_types(weight, pos)``.
    """
    if use_triton(kernels, "masked_patch_embed", x):
        from ..kernels.masked_patch_embed import masked_patch_embed_triton

        return masked_patch_embed_triton(x, ids_keep, weight, bias, pos)
    return masked_patch_embed_reference(x, ids_keep, weight, bias, pos)
