"""Plain-PyTorch references of the fused token-assembly kernels around the encoder and decoder.

- :func:`masked_patch_embed`: the encoder's input tokens for the kept patches
  (:mod:`mimir_fast.kernels.masked_patch_embed`).
- :func:`decoder_scatter`: the decoder's input tokens (:mod:`mimir_fast.kernels.decoder_scatter`).

Both compute in fp32 and return the dtype the model's unfused code would give.
"""

import torch
import torch.nn.functional as F


def masked_patch_embed(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: "torch.Tensor | None",
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
    return tokens.to(dtype)


def decoder_scatter(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """MAE's decoder input: unshuffle ``[kept tokens, mask tokens]`` with ``ids_restore``, add position.

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
    )
    patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # (N, L, D)
    out = torch.cat([xf[:, :1, :], patches], dim=1) + pos.float().reshape(1, -1, d)
    return out.to(dtype)
