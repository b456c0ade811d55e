"""Gaussian Gram matrices for HSIC as one fused Triton kernel.

``K_ij = exp(-||a_i - a_j||^2 * scale)`` for a batch of (m, d) matrices, computed as a GEMM with
the distance and the exponential in its epilogue. Each program owns one (BLOCK_M x BLOCK_M) tile
of one K with block row <= block column (K is symmetric: the lower tiles are the mirror images).
It walks over the feature dimension in BLOCK_D chunks, accumulating the tile's inner products
with ``tl.dot`` on tensor cores (TF32 for fp32 inputs, or exact fp32 when asked; bf16/fp16
directly), all in fp32, and both sides' squared norms in fp32 registers. The epilogue forms
``|a_i|^2 + |a_j|^2 - 2 a_i.a_j``, clamps rounding below zero, zeroes the diagonal, takes the
exponential and stores the tile and, off the diagonal, its transpose. Nothing of size m x m x d,
and no separate distance or norm tensor, is ever written to memory.

HSIC centres its Gram matrices itself (in float64), so the kernel returns K uncentred; centring
needs each row's mean, i.e. every tile of the row, hence a second pass (``center=True`` of
:func:`mimir_fast.ops.gaussian_gram.gaussian_gram` does it in PyTorch).

The reference is :func:`mimir_fast.ops.gaussian_gram.gaussian_gram_reference`. The backward is
two matrix products (see :class:`GaussianGram`), left to cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._tensors import as_device_tensor
from ._shared import LaunchConfig, device_arch

__all__ = [
    "GaussianGram",
    "gaussian_gram_config",
    "gaussian_gram_forward",
    "gaussian_gram_triton",
]


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
    PRECISION: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_M) tile of K and its mirror. Grid: (B, cdiv(m, BLOCK_M) ** 2).

    Pointers:
        a_ptr: (B, m, d) samples, fp32, bf16 or fp16, last dimension contiguous.
        scale_ptr: (B,) fp32, the factor in ``exp(-dist^2 * scale)`` (``1 / (2 sigma^2 d)``).
        k_ptr: (B, m, m) fp32 output, contiguous.
    Constexprs:
        BLOCK_M: rows/columns per tile (>= 16 for tl.dot).
        BLOCK_D: features per step of the loop over d.
        PRECISION: "tf32": tensor cores (TF32 for fp32 inputs, bf16/fp16 ones as they are);
            "ieee": exact fp32 products of inputs of any dtype.
    """
    b = tl.program_id(0)
    n_blocks = tl.cdiv(m, BLOCK_M)
    block_row = tl.program_id(1) // n_blocks
    block_col = tl.program_id(1) % n_blocks
    if block_row > block_col:
        return  # a mirror image: written by the program of (block_col, block_row)
    rows = block_row * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = block_col * BLOCK_M + tl.arange(0, BLOCK_M)
    base = a_ptr + b.to(tl.int64) * stride_ab
    # 64-bit offsets: m * d passes 2^31 for wide inputs (e.g. 16384 images of 3 x 224 x 224)
    row_base = base + rows.to(tl.int64)[:, None] * stride_am
    col_base = base + cols.to(tl.int64)[:, None] * stride_am
    dot = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    sq_rows = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sq_cols = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, d, BLOCK_D):
        feats = start + tl.arange(0, BLOCK_D)
        x = tl.load(
            row_base + feats[None, :], mask=(rows[:, None] < m) & (feats[None, :] < d), other=0.0
        )  # (BLOCK_M, BLOCK_D)
        y = tl.load(
            col_base + feats[None, :], mask=(cols[:, None] < m) & (feats[None, :] < d), other=0.0
        )  # (BLOCK_M, BLOCK_D)
        xf = x.to(tl.float32)
        yf = y.to(tl.float32)
        if PRECISION == "ieee":  # exact products of every input dtype
            dot = tl.dot(xf, tl.trans(yf), dot, input_precision="ieee")  # (BLOCK_M, BLOCK_M)
        else:
            dot = tl.dot(x, tl.trans(y), dot, input_precision=PRECISION)
        sq_rows += tl.sum(xf * xf, axis=1)
        sq_cols += tl.sum(yf * yf, axis=1)
    dist = sq_rows[:, None] + sq_cols[None, :] - 2.0 * dot
    dist = tl.maximum(dist, 0.0)
    dist = tl.where(rows[:, None] == cols[None, :], 0.0, dist)
    gram = tl.exp(-dist * tl.load(scale_ptr + b))  # (BLOCK_M, BLOCK_M)
    out = k_ptr + b.to(tl.int64) * m * m
    ok = (rows[:, None] < m) & (cols[None, :] < m)
    tl.store(out + rows.to(tl.int64)[:, None] * m + cols[None, :], gram, mask=ok)
    if block_row != block_col:
        mirror = out + cols.to(tl.int64)[:, None] * m + rows[None, :]
        tl.store(mirror, tl.trans(gram), mask=(cols[:, None] < m) & (rows[None, :] < m))


def gaussian_gram_config(m: int, dtype: torch.dtype, arch: int, ieee: bool = False) -> LaunchConfig:
    """Tile, warps and pipelining of the Gram kernel for ``m`` samples.

    64 x 64 tiles from m > 256 (fewer re-reads of the samples), 32 x 32 below (more programs
    for small batches), 16 x 16 for m <= 16. The loop over d is long (d in the thousands):
    three stages keep loads in flight while tensor cores work.

    Args:
        m: samples per matrix. dtype: the samples' dtype.
        arch: compute capability (80, 89, 90); every arch gets the same configuration.
        ieee: exact fp32 products for fp32 inputs instead of TF32.
    """
    del arch  # one configuration fits every arch (tests/test_aot_compile.py)
    block_m = 64 if m > 256 else 32 if m > 16 else 16
    block_d = 32 if dtype == torch.float32 else 64
    precision = "ieee" if ieee else "tf32"
    return LaunchConfig(
        {"BLOCK_M": block_m, "BLOCK_D": block_d, "PRECISION": precision},
        num_warps=4,
        num_stages=3,
    )


def gaussian_gram_forward(a: torch.Tensor, scale: torch.Tensor, ieee: bool = False) -> torch.Tensor:
    """Launch the kernel: ``a`` (B, m, d) fp32/bf16/fp16, ``scale`` (B,) fp32 -> (B, m, m) fp32."""
    a = a.contiguous()
    bsz, m, d = a.shape
    k = torch.empty(bsz, m, m, dtype=torch.float32, device=a.device)
    cfg = gaussian_gram_config(m, a.dtype, device_arch(a), ieee)
    grid = (bsz, triton.cdiv(m, cfg.constexprs["BLOCK_M"]) ** 2)
    _gaussian_gram_fwd_kernel[grid](
        a, scale.contiguous().float(), k, m, d, a.stride(0), a.stride(1), **cfg.kwargs()
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
    a: torch.Tensor,
    sigma: float | torch.Tensor = 5.0,
    scale_by_dim: bool = True,
    ieee: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`~mimir_fast.ops.gaussian_gram.gaussian_gram_reference` (no
    centring), on the kernel.

    Args:
        a: (m, d) or (B, m, d). sigma: a number, or a tensor with one value per matrix.
        ieee: exact fp32 inner products; False (default): TF32 tensor cores for fp32 inputs.
            TF32 keeps 10 mantissa bits of each input, so an inner product is off by ~5e-4 of
            ``sqrt(sum_k (a_ik a_jk)^2)``; ``scale`` shrinks that in the exponent, and the GPU
            tests hold K to 1e-4 (relative) of the fp32 reference, its gradient to 1e-3.
    """
    squeeze = a.ndim == 2
    a3 = a.unsqueeze(0) if squeeze else a
    d = a3.shape[-1] if scale_by_dim else 1
    sigma_t = as_device_tensor(sigma, a.device).reshape(-1)
    scale = (1.0 / (2.0 * sigma_t**2 * d)).expand(a3.shape[0]).contiguous()
    k = GaussianGram.apply(a3, scale, ieee)
    return k.squeeze(0) if squeeze else k
