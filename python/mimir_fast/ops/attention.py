"""Plain-PyTorch reference of the fused attention kernel (:mod:`mimir_fast.kernels.attention`)."""

import torch


def attention(qkv: torch.Tensor) -> torch.Tensor:
    """Softmax attention on the fused QKV layout, computed in fp32.

    Args:
        qkv: (N, T, 3, H, Dh), the ``qkv`` linear's output reshaped.

    Returns:
        (N, T, H * Dh) in qkv's dtype: ``softmax(q k^T / sqrt(Dh)) v`` per head, heads concatenated.
    """
    n, t, _, h, dh = qkv.shape
    q, k, v = qkv.float().permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, Dh)
    weights = torch.softmax(q @ k.transpose(-2, -1) * dh**-0.5, dim=-1)  # (N, H, T, T)
    return (weights @ v).transpose(1, 2).reshape(n, t, h * dh).to(qkv.dtype)
