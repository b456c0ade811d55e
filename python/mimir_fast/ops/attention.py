"""Softmax attention on the fused QKV layout: the reference, and the choice of path.

- :func:`attention_reference`: the readable definition, in fp32; the kernel's tests compare
  against it.
- :func:`attention`: what a transformer block calls. It runs the fused Triton kernel
  (:mod:`mimir_fast.kernels.attention`) where :mod:`mimir_fast.kernels.dispatch` picks Triton,
  and PyTorch's ``scaled_dot_product_attention`` (the same math, fused by PyTorch) elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.dispatch import sdpa_preferred, use_triton

__all__ = ["MIN_KERNEL_HEAD_DIM", "attention", "attention_reference"]

# Below this head dim attention runs SDPA under every kernels= choice. The kernel pads a head to
# 16 lanes for tl.dot (head dim 8, MIMIR's decoder: half the tile is padding) and then does about
# as many exponentials as multiply-adds, so it is bound by exp throughput; SDPA is expected to be
# at least as fast there. Not measured on a GPU yet: a GPU benchmark that shows the kernel ahead
# would lower this.
MIN_KERNEL_HEAD_DIM = 16


def attention_reference(qkv: torch.Tensor) -> torch.Tensor:
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


def attention(qkv: torch.Tensor, kernels: str = "auto") -> torch.Tensor:
    """Softmax attention (scale ``Dh ** -0.5``, no mask, no dropout) on the fused QKV layout.

    Args:
        qkv: (N, T, 3, H, Dh), the ``qkv`` linear's output reshaped (a view, no copy).
        kernels: "auto", "torch" or "triton" (see :func:`mimir_fast.kernels.resolve_kernels`).
            The kernel is skipped for head dims below :data:`MIN_KERNEL_HEAD_DIM` and at shapes
            where SDPA measured faster (:data:`mimir_fast.kernels.dispatch.SDPA_PREFERRED`).

    Returns:
        (N, T, H * Dh) in qkv's dtype, the input of the ``proj`` linear.
    """
    n, t, _, h, dh = qkv.shape
    if (
        use_triton(kernels, "attention", qkv)
        and dh >= MIN_KERNEL_HEAD_DIM
        and not sdpa_preferred(t, dh, qkv.device)
    ):
        from ..kernels.attention import attention_triton

        return attention_triton(qkv)  # no transposes
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, T, Dh)
    out = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, Dh)
    return out.transpose(1, 2).reshape(n, t, h * dh)
