"""MAE's decoder input (unshuffle, mask tokens, position): the reference, and the choice of path.

- :func:`decoder_scatter_reference`: concatenate the kept tokens with mask tokens, gather them
  back into patch order, add the position embedding; in fp32.
- :func:`decoder_scatter`: what the model calls. The fused Triton kernel
  (:mod:`mimir_fast.kernels.decoder_scatter`) writes each output token once.
"""

from __future__ import annotations

import torch

from ..kernels.dispatch import use_triton

__all__ = ["decoder_scatter", "decoder_scatter_reference"]


def decoder_scatter_reference(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """Unshuffle ``[kept tokens, mask tokens]`` with ``ids_restore``, then add the position.

    Args:
        x: (N, 1 + K, D) decoder-embedded latent, class token first. ids_restore: (N, L) int64.
        mask_token: D values. pos: (1 + L, D) or (1, 1 + L, D).

    Returns:
        (N, 1 + L, D) in the promoted dtype of the inputs.
    """
    n, t, d = x.shape
    dtype = torch.promote_types(torch.promote_types(x.dtype, mask_token.dtype), pos.dtype)
    xf = x.float()
    num_masked = ids_restore.shape[1] + 1 - t
    patches = torch.cat(
        [xf[:, 1:, :], mask_token.float().reshape(1, 1, d).expand(n, num_masked, d)], dim=1
    )  # (N, L, D)
    patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # unshuffle
    out = torch.cat([xf[:, :1, :], patches], dim=1) + pos.float().reshape(1, -1, d)
    return out.to(dtype)  # (N, 1 + L, D)


def decoder_scatter(
    x: torch.Tensor,
    ids_restore: torch.Tensor,
    mask_token: torch.Tensor,
    pos: torch.Tensor,
    kernels: str = "auto",
) -> torch.Tensor:
    """The decoder's input: ``cat([x[:, :1], unshuffle(cat([x[:, 1:], mask tokens]))]) + pos``.

    Args:
        x: (N, 1 + K, D) decoder-embedded latent (class token first). ids_restore: (N, L) int64.
        mask_token: D values (e.g. the (1, 1, D) parameter). pos: (1 + L, D) or (1, 1 + L, D).
        kernels: "auto", "torch" or "triton" (see :func:`mimir_fast.kernels.resolve_kernels`).

    Returns:
        (N, 1 + L, D) in the promoted dtype of the inputs.
    """
    if use_triton(kernels, "decoder_scatter", x):
        from ..kernels.decoder_scatter import decoder_scatter_triton

        return decoder_scatter_triton(x, ids_restore, mask_token, pos)
    return decoder_scatter_reference(x, ids_restore, mask_token, pos)
