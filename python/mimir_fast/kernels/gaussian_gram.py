"""Gaussian Gram matrices for HSIC as one fused Triton kernel.

``K_ij = exp(-||a_i - a_j||^2 * scale)`` for a batch of (m, d) matrices. Each program owns an
(BLOCK_M x BLOCK_M) tile of one K: it walks over the feature dimension in BLOCK_D chunks,
accumulating the tile's inner products with ``tl.dot`` and both rows' squared norms in fp32
registers, then forms the distances, clamps rounding below zero, zeroes the diagonal, takes
the exponential and stores the tile. Nothing of size m x m x d, and no separate distance or
norm tensor, is ever written to memory.

The reference is :func:`mimir_fast.ops.gaussian_gram.gaussian_gram_reference`. The backward is
two matrix products (see :class:`GaussianGram`), left to cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["GaussianGram", "gaussian_gram_forward", "gaussian_gram_triton"]


@triton.jit
def _gaussian_gram_fwd_kernel(
    a_ptr,
    scale_ptr,
    k_ptr,
    m,
    d,
    stride_ab,
    stride_am,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_M) tile of K. Grid: (B, cdiv(m, BLOCK_M), cdiv(m, BLOCK_M)).

    Pointers:
        a_ptr: (B, m, d) samples, fp32 or bf16, last dimension contiguous.
        scale_ptr: (B,) fp32, the factor in ``exp(-dist^2 * scale)`` (``1 / (2 sigma^2 d)``).
        k_ptr: (B, m, m) fp32 output, contiguous.
    Constexprs:
        BLOCK_M: rows/columns per tile (>= 16 for tl.dot).
        BLOCK_D: features per step of the loop over d.
        IEEE: exact fp32 products (True) or TF32 tensor cores for fp32 inputs (False).
    """
    b = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    base = a_ptr + b.to(tl.int64) * stride_ab
    dot = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    sq_rows = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sq_cols = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, d, BLOCK_D):
        feats = start + tl.arange(0, BLOCK_D)
        x = tl.load(
            base + rows[:, None] * stride_am + feats[None, :],
            mask=(rows[:, None] < m) & (feats[None, :] < d),
            other=0.0,
        )
        y = tl.load(
            base + cols[:, None] * stride_am + feats[None, :],
            mask=(cols[:, None] < m) & (feats[None, :] < d),
            other=0.0,
        )
        if IEEE:
            dot += tl.dot(x.to(tl.float32), tl.trans(y.to(tl.float32)), input_precision="ieee")
        else:
            dot += tl.dot(x, tl.trans(y))
        xf = x.to(tl.float32)
        yf = y.to(tl.float32)
        sq_rows += tl.sum(xf * xf, axis=1)
        sq_cols += tl.sum(yf * yf, axis=1)
    dist = sq_rows[:, None] + sq_cols[None, :] - 2.0 * dot
    dist = tl.maximum(dist, 0.0)
    dist = tl.where(rows[:, None] == cols[None, :], 0.0, dist)
    scale = tl.load(scale_ptr + b)
    gram = tl.exp(-dist * scale)
    out = k_ptr + b.to(tl.int64) * m * m + rows[:, None] * m + cols[None, :]
    tl.store(out, gram, mask=(rows[:, None] < m) & (cols[None, :] < m))


def gaussian_gram_forward(a: torch.Tensor, scale: torch.Tensor, ieee: bool = True) -> torch.Tensor:
    """Launch the kernel. ``a``: (B, m, d) fp32/bf16; ``scale``: (B,) fp32 -> (B, m, m) fp32."""
    a = a.contiguous()
    bsz, m, d = a.shape
    k = torch.empty(bsz, m, m, dtype=torch.float32, device=a.device)
    block_m = 32 if m > 16 else 16
    block_d = 64
    grid = (bsz, triton.cdiv(m, block_m), triton.cdiv(m, block_m))
    _gaussian_gram_fwd_kernel[grid](
        a,
        scale.contiguous().float(),
        k,
        m,
        d,
        a.stride(0),
        a.stride(1),
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        IEEE=ieee,
    )
    return k


class GaussianGram(torch.autograd.Function):
    """Forward: the fused kernel. Backward, with ``W = (G + G^T) * K`` for upstream ``G``:
    ``dL/da = -2 scale (diag(W 1) a - W a)``, two matrix products."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, scale: torch.Tensor, ieee: bool) -> torch.Tensor:
        k = gaussian_gram_forward(a, scale, ieee)
        ctx.save_for_backward(a, scale, k)
        return k

    @staticmethod
    def backward(ctx, grad_k: torch.Tensor):
        a, scale, k = ctx.saved_tensors
        eye = torch.eye(k.shape[-1], dtype=torch.bool, device=k.device)
        w = ((grad_k + grad_k.mT) * k).masked_fill(eye, 0.0)  # (B, m, m); K_ii does not depend on a
        af = a.float()
        grad_a = -2.0 * scale.view(-1, 1, 1) * (w.sum(dim=-1, keepdim=True) * af - w @ af)
        return grad_a.to(a.dtype), None, None


def gaussian_gram_triton(
    a: torch.Tensor, sigma: float | torch.Tensor = 5.0, scale_by_dim: bool = True, ieee: bool = True
) -> torch.Tensor:
    """Same contract as :func:`~mimir_fast.ops.gaussian_gram.gaussian_gram_reference` (no
    centring), on the kernel.

    Args:
        a: (m, d) or (B, m, d). sigma: a number, or a tensor with one value per matrix.
        ieee: exact fp32 inner products; False allows TF32 for fp32 inputs (faster, ~1e-3).
    """
    squeeze = a.ndim == 2
    a3 = a.unsqueeze(0) if squeeze else a
    d = a3.shape[-1] if scale_by_dim else 1
    sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=a.device).reshape(-1)
    scale = (1.0 / (2.0 * sigma_t**2 * d)).expand(a3.shape[0]).contiguous()
    k = GaussianGram.apply(a3, scale, ieee)
    return k.squeeze(0) if squeeze else k
