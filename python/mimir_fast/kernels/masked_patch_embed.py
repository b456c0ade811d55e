"""Masked patch embedding: patchify + gather of the kept patches + position embedding, fused.

The PyTorch path embeds every patch (a strided convolution over the whole image), adds the
position embedding to all L tokens, then gathers the ``len_keep`` kept ones: at mask ratio 0.75
three quarters of that work and memory traffic is thrown away. Here:

1. ``_masked_patch_embed_fwd_kernel`` reads the pixels of only the kept patches straight from
   the image (N, C, H, W) and writes them as rows of a (N, K, C*p*p) matrix. The row layout is
   (channel, row, col), the flattening of the convolution weight (D, C, p, p), so the weight is
   used as a (D, C*p*p) view with no reordering, and each patch row is read as p runs of p
   contiguous pixels.
2. The projection is one matmul on the kept rows only (cuBLAS): K/L of the convolution's FLOPs.
3. ``_masked_patch_embed_epilogue_kernel`` adds the bias and the *gathered* position embedding
   (row ``ids_keep[n, j]`` of ``pos``) to the matmul output in one read-modify-write pass
   (a separate tiny kernel, as cuBLAS owns the matmul's epilogue).

Backward: ``d_patches = d_out @ W`` (cuBLAS), ``dW = d_out^T @ patches`` (cuBLAS, patches saved
from the forward), ``d_bias = sum(d_out)``, ``d_pos = index_add(d_out)`` (only when ``pos``
requires grad), and ``_masked_patch_embed_bwd_kernel`` writes the image gradient: one program
per block of the L patches of a sample; a kept patch copies its row of ``d_patches`` back to its
pixels, a removed patch writes zeros. Every pixel is written exactly once: no zero-fill pass, no
atomics.

The reference is :func:`mimir_fast.ops.masked_patch_embed.masked_patch_embed_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._shared import LaunchConfig, device_arch, next_power_of_2

__all__ = [
    "MaskedPatchEmbedFunction",
    "masked_patch_embed_backward",
    "masked_patch_embed_backward_op",
    "masked_patch_embed_config",
    "masked_patch_embed_forward",
    "masked_patch_embed_op",
    "masked_patch_embed_triton",
]


@triton.jit
def _masked_patch_embed_fwd_kernel(
    img_ptr,
    ids_ptr,
    patches_ptr,
    C,
    H,
    W,
    GW,
    K,
    P,
    PATCH: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Gather the pixels of BLOCK_K kept patches of one sample. Grid: (N, cdiv(K, BLOCK_K)).

    Pointers:
        img_ptr: (N, C, H, W) contiguous image, any float dtype.
        ids_ptr: (N, K) int64 kept patch indices (row-major over the (H/p, W/p) grid).
        patches_ptr: (N, K, P) contiguous output, P = C*p*p in (channel, row, col) order; its dtype
            is the matmul's (pixels are cast on the way).
    Scalars: GW = W / p patches per grid row.
    Constexprs: PATCH: p; BLOCK_K: patches per program; BLOCK_P: next power of two >= P.
    """
    n = tl.program_id(0)
    j = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    j_ok = j < K
    patch = tl.load(ids_ptr + n.to(tl.int64) * K + j, mask=j_ok, other=0)
    gy = patch // GW
    gx = patch % GW
    e = tl.arange(0, BLOCK_P)
    e_ok = e < P
    ch = e // (PATCH * PATCH)
    r = (e // PATCH) % PATCH
    c = e % PATCH
    addr = (
        n.to(tl.int64) * C * H * W
        + ch[None, :] * (H * W)
        + (gy[:, None] * PATCH + r[None, :]) * W
        + gx[:, None] * PATCH
        + c[None, :]
    )
    ok = j_ok[:, None] & e_ok[None, :]
    px = tl.load(img_ptr + addr, mask=ok, other=0.0)
    dst = patches_ptr + n.to(tl.int64) * K * P + j[:, None] * P + e[None, :]
    tl.store(dst, px.to(patches_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _masked_patch_embed_epilogue_kernel(
    y_ptr,
    bias_ptr,
    pos_ptr,
    ids_ptr,
    out_ptr,
    K,
    D,
    HAS_BIAS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``out[n, j] = y[n, j] + bias + pos[ids[n, j]]`` for BLOCK_K tokens.

    Grid: (N, cdiv(K, BLOCK_K)).

    Pointers:
        y_ptr: (N, K, D) contiguous matmul output.
        out_ptr: (N, K, D) contiguous, the promoted dtype.
        bias_ptr: (D,) (unused when not HAS_BIAS). pos_ptr: (L, D) contiguous position embedding
            of the patch tokens. ids_ptr: (N, K) int64.
    Constexprs: HAS_BIAS; BLOCK_K: tokens per program; BLOCK_D: next power of two >= D.
    """
    n = tl.program_id(0)
    j = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    j_ok = j < K
    patch = tl.load(ids_ptr + n.to(tl.int64) * K + j, mask=j_ok, other=0)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    ok = j_ok[:, None] & d_ok[None, :]
    row = n.to(tl.int64) * K * D + j[:, None] * D + d[None, :]
    acc = tl.load(y_ptr + row, mask=ok, other=0.0).to(tl.float32)
    acc += tl.load(pos_ptr + patch[:, None] * D + d[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + row, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _masked_patch_embed_bwd_kernel(
    dpatch_ptr,
    slot_ptr,
    dimg_ptr,
    C,
    H,
    W,
    GW,
    K,
    L,
    P,
    PATCH: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Image gradient for BLOCK_L patches of one sample. Grid: (N, cdiv(L, BLOCK_L)).

    Pointers:
        dpatch_ptr: (N, K, P) contiguous gradient of the gathered patches, rows in
            (channel, row, col) order.
        slot_ptr: (N, L) int64: for patch l, its row j in ``ids_keep`` (``ids_keep[n, j] == l``),
            or -1 for a removed patch.
        dimg_ptr: (N, C, H, W) contiguous output, the image's dtype; fully written (zeros where
            removed).
    Constexprs: PATCH: p; BLOCK_L: patches per program; BLOCK_P: next power of two >= P.
    """
    n = tl.program_id(0)
    patch = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    l_ok = patch < L
    slot = tl.load(slot_ptr + n.to(tl.int64) * L + patch, mask=l_ok, other=-1)
    kept = slot >= 0
    gy = patch // GW
    gx = patch % GW
    e = tl.arange(0, BLOCK_P)
    e_ok = e < P
    ch = e // (PATCH * PATCH)
    r = (e // PATCH) % PATCH
    c = e % PATCH
    src = dpatch_ptr + n.to(tl.int64) * K * P + tl.maximum(slot, 0)[:, None] * P + e[None, :]
    g = tl.load(src, mask=(kept & l_ok)[:, None] & e_ok[None, :], other=0.0)
    addr = (
        n.to(tl.int64) * C * H * W
        + ch[None, :] * (H * W)
        + (gy[:, None] * PATCH + r[None, :]) * W
        + gx[:, None] * PATCH
        + c[None, :]
    )
    tl.store(dimg_ptr + addr, g.to(dimg_ptr.dtype.element_ty), mask=l_ok[:, None] & e_ok[None, :])


def _check(x: torch.Tensor, ids_keep: torch.Tensor, weight: torch.Tensor) -> None:
    if (
        x.ndim != 4
        or weight.ndim != 4
        or weight.shape[1] != x.shape[1]
        or weight.shape[2] != weight.shape[3]
    ):
        raise ValueError(
            f"masked_patch_embed: image {tuple(x.shape)} and conv weight {tuple(weight.shape)} "
            "do not fit (N, C, H, W) / (D, C, p, p)"
        )
    p = weight.shape[2]
    if x.shape[2] % p or x.shape[3] % p:
        raise ValueError(f"image {x.shape[2]}x{x.shape[3]} is not divisible by patch size {p}")
    if ids_keep.dtype != torch.int64 or ids_keep.ndim != 2 or ids_keep.shape[0] != x.shape[0]:
        raise ValueError(
            f"ids_keep must be int64 (N, K), got {ids_keep.dtype} {tuple(ids_keep.shape)}"
        )


def masked_patch_embed_config(kernel: str, width: int, arch: int) -> LaunchConfig:
    """Rows per program and row width of one kernel: about 4096 elements a program (no loops).

    Args:
        kernel: "fwd" and "bwd" (rows of C*p*p pixels; constexprs BLOCK_K / BLOCK_L, BLOCK_P)
            or "epilogue" (rows of D features; BLOCK_K, BLOCK_D).
        width: C*p*p, or D for the epilogue.
        arch: compute capability; every arch gets the same configuration.
    """
    del arch  # no shared memory, no tensor cores: one configuration fits every arch
    block = next_power_of_2(width)
    rows = max(1, min(64, 4096 // block))
    names = {"fwd": ("BLOCK_K", "BLOCK_P"), "bwd": ("BLOCK_L", "BLOCK_P")}
    row_name, width_name = names.get(kernel, ("BLOCK_K", "BLOCK_D"))
    return LaunchConfig({row_name: rows, width_name: block}, num_warps=4, num_stages=1)


def masked_patch_embed_forward(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward.

    Args:
        x: (N, C, H, W) images. ids_keep: (N, K) int64.
        weight: (D, C, p, p) convolution weight, in the matmul's dtype (the caller casts it under
            autocast). bias: (D,) or None. pos: (L, D).
    Returns:
        tokens (N, K, D) in ``promote_types(weight, pos)`` and the gathered patches (N, K, C*p*p)
        in the weight's dtype (saved for the weight gradient).
    """
    _check(x, ids_keep, weight)
    x = x.contiguous()
    ids_keep = ids_keep.contiguous()
    n, c, h, w = x.shape
    d, _, p, _ = weight.shape
    k = ids_keep.shape[1]
    pdim = c * p * p
    patches = torch.empty((n, k, pdim), dtype=weight.dtype, device=x.device)
    arch = device_arch(x)
    cfg = masked_patch_embed_config("fwd", pdim, arch)
    _masked_patch_embed_fwd_kernel[(n, triton.cdiv(k, cfg.constexprs["BLOCK_K"]))](
        x, ids_keep, patches, c, h, w, w // p, k, pdim, PATCH=p, **cfg.kwargs()
    )
    with torch.autocast(x.device.type, enabled=False):
        y = torch.matmul(patches.view(n * k, pdim), weight.reshape(d, pdim).t())  # (N*K, D)
    out_dtype = torch.promote_types(weight.dtype, pos.dtype)
    if bias is not None:
        out_dtype = torch.promote_types(out_dtype, bias.dtype)
    out = torch.empty((n, k, d), dtype=out_dtype, device=x.device)
    cfg = masked_patch_embed_config("epilogue", d, arch)
    _masked_patch_embed_epilogue_kernel[(n, triton.cdiv(k, cfg.constexprs["BLOCK_K"]))](
        y,
        y if bias is None else bias.contiguous(),
        pos.contiguous(),
        ids_keep,
        out,
        k,
        d,
        HAS_BIAS=bias is not None,
        **cfg.kwargs(),
    )
    return out, patches


def masked_patch_embed_backward(
    dout: torch.Tensor,
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    patches: torch.Tensor,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
    need_pos: bool,
    num_patches: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: ``(d_x, d_weight, d_bias fp32, d_pos fp32)``; an unneeded one is an
    empty tensor."""
    n, c, h, w = x.shape
    d, _, p, _ = weight.shape
    k = ids_keep.shape[1]
    pdim = c * p * p
    g = dout.reshape(n * k, d)
    # distinct empty tensors: a custom op's outputs may not alias each other
    d_x, d_w, d_b, d_pos = (dout.new_empty(0) for _ in range(4))
    with torch.autocast(x.device.type, enabled=False):
        if need_x:
            dpatch = torch.matmul(
                g.to(weight.dtype), weight.reshape(d, pdim)
            ).contiguous()  # (N*K, P)
            slot = torch.full((n, num_patches), -1, dtype=torch.int64, device=x.device)
            slot.scatter_(1, ids_keep, torch.arange(k, device=x.device).expand(n, k))
            d_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            cfg = masked_patch_embed_config("bwd", pdim, device_arch(x))
            grid = (n, triton.cdiv(num_patches, cfg.constexprs["BLOCK_L"]))
            _masked_patch_embed_bwd_kernel[grid](
                dpatch, slot, d_x, c, h, w, w // p, k, num_patches, pdim, PATCH=p, **cfg.kwargs()
            )
        if need_weight:
            d_w = torch.matmul(g.t().to(patches.dtype), patches.reshape(n * k, pdim)).reshape(
                weight.shape
            )
        if need_bias:
            d_b = g.float().sum(0)
        if need_pos:
            d_pos = torch.zeros((num_patches, d), dtype=torch.float32, device=x.device)
            d_pos.index_add_(0, ids_keep.reshape(-1), g.float())
    return d_x, d_w, d_b, d_pos


class MaskedPatchEmbedFunction(torch.autograd.Function):
    """Differentiable masked patch embedding:
    ``(x, ids_keep, weight, bias, pos) -> (tokens, patches)``.

    Its ``setup_context``/``backward`` are the autograd rules of the
    ``mimir_fast::masked_patch_embed`` custom op below; the backward calls
    ``mimir_fast::masked_patch_embed_backward``.
    """

    @staticmethod
    def forward(x, ids_keep, weight, bias, pos):
        return masked_patch_embed_forward(x, ids_keep, weight, bias, pos)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ids_keep, weight, bias, pos = inputs
        _, patches = output
        ctx.save_for_backward(x, ids_keep, weight, patches)
        ctx.has_bias = bias is not None
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype, pos.dtype)
        ctx.num_patches = pos.shape[0]
        ctx.mark_non_differentiable(patches)

    @staticmethod
    def backward(ctx, dout, _dpatches=None):
        x, ids_keep, weight, patches = ctx.saved_tensors
        nx, _, nw, nb, npos = ctx.needs_input_grad
        d_x, d_w, d_b, d_pos = torch.ops.mimir_fast.masked_patch_embed_backward(
            dout.contiguous(),
            x,
            ids_keep,
            weight,
            patches,
            nx,
            nw,
            nb and ctx.has_bias,
            npos,
            ctx.num_patches,
        )
        w_dtype, b_dtype, pos_dtype = ctx.dtypes
        return (
            d_x if nx else None,
            None,
            d_w.to(w_dtype) if nw else None,
            d_b.to(b_dtype) if nb and ctx.has_bias else None,
            d_pos.to(pos_dtype) if npos else None,
        )


# The launchers, registered as custom ops.
masked_patch_embed_op = torch.library.custom_op(
    "mimir_fast::masked_patch_embed", masked_patch_embed_forward, mutates_args=()
)
masked_patch_embed_backward_op = torch.library.custom_op(
    "mimir_fast::masked_patch_embed_backward", masked_patch_embed_backward, mutates_args=()
)


@masked_patch_embed_op.register_fake
def _(x, ids_keep, weight, bias, pos):
    n, k = ids_keep.shape
    d, c, p, _ = weight.shape
    dtype = torch.promote_types(weight.dtype, pos.dtype)
    if bias is not None:
        dtype = torch.promote_types(dtype, bias.dtype)
    return x.new_empty((n, k, d), dtype=dtype), x.new_empty((n, k, c * p * p), dtype=weight.dtype)


@masked_patch_embed_backward_op.register_fake
def _(dout, x, ids_keep, weight, patches, need_x, need_weight, need_bias, need_pos, num_patches):
    d = weight.shape[0]
    e = dout.new_empty(0)
    return (
        x.new_empty(x.shape) if need_x else e,
        weight.new_empty(weight.shape) if need_weight else e,
        dout.new_empty((d,), dtype=torch.float32) if need_bias else e,
        dout.new_empty((num_patches, d), dtype=torch.float32) if need_pos else e,
    )


masked_patch_embed_op.register_autograd(
    MaskedPatchEmbedFunction.backward, setup_context=MaskedPatchEmbedFunction.setup_context
)


def masked_patch_embed_triton(
    x: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor,
) -> torch.Tensor:
    """Tokens of the kept patches: ``conv(x)[ids_keep] + bias + pos[ids_keep]``, on the custom op.

    Args:
        x: (N, C, H, W). ids_keep: (N, K) int64. weight: (D, C, p, p). bias: (D,) or None.
        pos: (L, D) position embedding of the patch tokens (no class token).
    Returns:
        (N, K, D). Under autocast the matmul runs in the autocast dtype (as the convolution
        would) and the bias / position add in fp32, giving the reference's dtype.
    """
    if torch.is_autocast_enabled(x.device.type):
        weight = weight.to(torch.get_autocast_dtype(x.device.type))
    return masked_patch_embed_op(x, ids_keep, weight, bias, pos)[0]
