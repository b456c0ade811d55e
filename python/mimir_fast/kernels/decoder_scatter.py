"""Decoder input assembly, fused: unshuffle by ``ids_restore``, insert mask tokens, add position.

The PyTorch path concatenates the kept tokens with L - K copies of the mask token, gathers them
back into patch order, concatenates the class token in front and adds the decoder position
embedding: four full passes over (N, 1 + L, Dd). ``_decoder_scatter_fwd_kernel`` writes each
output token once: token 0 is the class token, token 1 + l takes row ``1 + ids_restore[n, l]``
of the input when ``ids_restore[n, l] < K`` (a kept patch), the mask token otherwise; the
position embedding is added in fp32 on the way.

The backward is the matching gather, written as a scatter by the same index
(``_decoder_scatter_bwd_kernel``): ``ids_restore`` is a permutation in which exactly K entries
are < K, so each row of the input gradient receives exactly one output row: no zero-fill, no
atomics. The mask token's gradient is the sum of the output gradient over the removed
positions: each program reduces its block of tokens into one partial row, summed on the host
side by one tiny ``sum`` (no atomics). The position embedding's gradient, when it requires one,
is ``d_out.sum(0)``.

The reference is :func:`mimir_fast.ops.decoder_scatter.decoder_scatter_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._shared import LaunchConfig, device_arch, next_power_of_2

__all__ = [
    "DecoderScatterFunction",
    "decoder_scatter_backward",
    "decoder_scatter_backward_op",
    "decoder_scatter_config",
    "decoder_scatter_forward",
    "decoder_scatter_op",
    "decoder_scatter_triton",
]


@triton.jit
def _decoder_scatter_fwd_kernel(
    x_ptr,
    ids_ptr,
    tok_ptr,
    pos_ptr,
    out_ptr,
    K1,
    L,
    D,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """BLOCK_T output tokens of one sample. Grid: (N, cdiv(1 + L, BLOCK_T)).

    Pointers:
        x_ptr: (N, K1, D) contiguous decoder-embedded latent, K1 = 1 + K (class token first).
        ids_ptr: (N, L) int64 ``ids_restore``. tok_ptr: (D,) mask token.
        pos_ptr: (1 + L, D) contiguous decoder position embedding.
        out_ptr: (N, 1 + L, D) contiguous output (the promoted dtype of x, token and pos).
    Constexprs: BLOCK_T: tokens per program; BLOCK_D: next power of two >= D.
    """
    n = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < L + 1
    r = tl.load(ids_ptr + n.to(tl.int64) * L + t - 1, mask=t_ok & (t >= 1), other=0)
    src = tl.where(t == 0, 0, 1 + r)
    from_x = src < K1
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    vals = tl.load(
        x_ptr + n.to(tl.int64) * K1 * D + src[:, None] * D + d[None, :],
        mask=(t_ok & from_x)[:, None] & d_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    tok = tl.load(tok_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    vals = tl.where(from_x[:, None], vals, tok[None, :])
    ok = t_ok[:, None] & d_ok[None, :]
    vals += tl.load(pos_ptr + t[:, None] * D + d[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + n.to(tl.int64) * (L + 1) * D + t[:, None] * D + d[None, :],
        vals.to(out_ptr.dtype.element_ty),
        mask=ok,
    )


@triton.jit
def _decoder_scatter_bwd_kernel(
    dout_ptr, ids_ptr, dx_ptr, dtok_part_ptr, K1, L, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Gradients for BLOCK_T output tokens of one sample. Grid: (N, cdiv(1 + L, BLOCK_T)).

    Pointers:
        dout_ptr: (N, 1 + L, D) contiguous output gradient. ids_ptr: (N, L) int64 ``ids_restore``.
        dx_ptr: (N, K1, D) contiguous input gradient (x's dtype); each row written once overall.
        dtok_part_ptr: (N, cdiv(1 + L, BLOCK_T), D) fp32 partial sums of the mask token's gradient.
    Constexprs: as the forward.
    """
    n = tl.program_id(0)
    blk = tl.program_id(1)
    t = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < L + 1
    r = tl.load(ids_ptr + n.to(tl.int64) * L + t - 1, mask=t_ok & (t >= 1), other=0)
    src = tl.where(t == 0, 0, 1 + r)
    from_x = src < K1
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    ok = t_ok[:, None] & d_ok[None, :]
    g = tl.load(
        dout_ptr + n.to(tl.int64) * (L + 1) * D + t[:, None] * D + d[None, :], mask=ok, other=0.0
    )
    tl.store(
        dx_ptr + n.to(tl.int64) * K1 * D + src[:, None] * D + d[None, :],
        g.to(dx_ptr.dtype.element_ty),
        mask=ok & from_x[:, None],
    )
    masked = tl.where((t_ok & ~from_x)[:, None], g.to(tl.float32), 0.0)
    nblk = tl.num_programs(1)
    tl.store(
        dtok_part_ptr + (n.to(tl.int64) * nblk + blk) * D + d, tl.sum(masked, axis=0), mask=d_ok
    )


def decoder_scatter_config(width: int, arch: int) -> LaunchConfig:
    """Tokens per program (BLOCK_T) and row width (BLOCK_D) of both kernels for width D.

    About 2048 elements and at most 32 tokens a program: at 4096 elements or 64 tokens ptxas
    spilled a few bytes in the 16-bit forward (tests/test_aot_compile.py). No loops: num_stages 1.

    Args:
        width: D. arch: compute capability; every arch gets the same configuration.
    """
    del arch  # no shared memory, no tensor cores: one configuration fits every arch
    block = next_power_of_2(width)
    tokens = max(1, min(32, 2048 // block))
    return LaunchConfig({"BLOCK_T": tokens, "BLOCK_D": block}, num_warps=4, num_stages=1)


def decoder_scatter_forward(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """Launch the forward.

    Args:
        x: (N, 1 + K, D). ids_restore: (N, L) int64. mask_token: (D,) (any shape with D elements).
        pos: (1 + L, D).
    Returns:
        (N, 1 + L, D) in the promoted dtype of the three inputs (as ``cat`` + ``add`` would give).
    """
    if x.ndim != 3 or ids_restore.ndim != 2 or ids_restore.shape[0] != x.shape[0]:
        raise ValueError(
            f"decoder_scatter: x {tuple(x.shape)} / ids_restore {tuple(ids_restore.shape)} "
            "must be (N, 1 + K, D) / (N, L)"
        )
    n, k1, d = x.shape
    length = ids_restore.shape[1]
    if pos.shape[-2:] != (length + 1, d) or mask_token.numel() != d:
        raise ValueError(
            f"decoder_scatter: pos {tuple(pos.shape)} must be (1 + L, D) = ({length + 1}, {d}) "
            f"and mask_token must hold D = {d} values"
        )
    dtype = torch.promote_types(torch.promote_types(x.dtype, mask_token.dtype), pos.dtype)
    out = torch.empty((n, length + 1, d), dtype=dtype, device=x.device)
    cfg = decoder_scatter_config(d, device_arch(x))
    _decoder_scatter_fwd_kernel[(n, triton.cdiv(length + 1, cfg.constexprs["BLOCK_T"]))](
        x.contiguous(),
        ids_restore.contiguous(),
        mask_token.reshape(d).contiguous(),
        pos.reshape(length + 1, d).contiguous(),
        out,
        k1,
        length,
        d,
        **cfg.kwargs(),
    )
    return out


def decoder_scatter_backward(
    dout: torch.Tensor,
    ids_restore: torch.Tensor,
    num_kept: int,
    x_dtype: torch.dtype,
    need_pos: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: ``(d_x (N, 1 + K, D) in x_dtype, d_mask_token (D,) fp32,
    d_pos (1 + L, D) fp32)`` (d_pos empty unless ``need_pos``)."""
    n, t, d = dout.shape
    length = t - 1
    dout = dout.contiguous()
    cfg = decoder_scatter_config(d, device_arch(dout))
    nblk = triton.cdiv(length + 1, cfg.constexprs["BLOCK_T"])
    d_x = torch.empty((n, num_kept + 1, d), dtype=x_dtype, device=dout.device)
    part = torch.empty((n, nblk, d), dtype=torch.float32, device=dout.device)
    _decoder_scatter_bwd_kernel[(n, nblk)](
        dout,
        ids_restore.contiguous(),
        d_x,
        part,
        num_kept + 1,
        length,
        d,
        **cfg.kwargs(),
    )
    d_tok = part.sum((0, 1))
    d_pos = dout.float().sum(0) if need_pos else dout.new_empty(0, dtype=torch.float32)
    return d_x, d_tok, d_pos


class DecoderScatterFunction(torch.autograd.Function):
    """Differentiable decoder scatter: ``(x, ids_restore, mask_token, pos) -> (N, 1 + L, D)``.

    Its ``setup_context``/``backward`` are the autograd rules of the ``mimir_fast::decoder_scatter``
    custom op below; the backward calls ``mimir_fast::decoder_scatter_backward``.
    """

    @staticmethod
    def forward(x, ids_restore, mask_token, pos):
        return decoder_scatter_forward(x, ids_restore, mask_token, pos)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ids_restore, mask_token, pos = inputs
        ctx.save_for_backward(ids_restore)
        ctx.num_kept = x.shape[1] - 1
        ctx.meta = (x.dtype, mask_token.dtype, mask_token.shape, pos.dtype, pos.shape)

    @staticmethod
    def backward(ctx, dout):
        (ids_restore,) = ctx.saved_tensors
        x_dtype, tok_dtype, tok_shape, pos_dtype, pos_shape = ctx.meta
        need_x, _, need_tok, need_pos = ctx.needs_input_grad
        d_x, d_tok, d_pos = torch.ops.mimir_fast.decoder_scatter_backward(
            dout, ids_restore, ctx.num_kept, x_dtype, need_pos
        )
        return (
            d_x if need_x else None,
            None,
            d_tok.to(tok_dtype).reshape(tok_shape) if need_tok else None,
            d_pos.to(pos_dtype).reshape(pos_shape) if need_pos else None,
        )


# The launchers, registered as custom ops.
decoder_scatter_op = torch.library.custom_op(
    "mimir_fast::decoder_scatter", decoder_scatter_forward, mutates_args=()
)
decoder_scatter_backward_op = torch.library.custom_op(
    "mimir_fast::decoder_scatter_backward", decoder_scatter_backward, mutates_args=()
)


@decoder_scatter_op.register_fake
def _(x, ids_restore, mask_token, pos):
    n, _, d = x.shape
    dtype = torch.promote_types(torch.promote_types(x.dtype, mask_token.dtype), pos.dtype)
    return x.new_empty((n, ids_restore.shape[1] + 1, d), dtype=dtype)


@decoder_scatter_backward_op.register_fake
def _(dout, ids_restore, num_kept, x_dtype, need_pos):
    n, t, d = dout.shape
    return (
        dout.new_empty((n, num_kept + 1, d), dtype=x_dtype),
        dout.new_empty((d,), dtype=torch.float32),
        dout.new_empty((t, d) if need_pos else (0,), dtype=torch.float32),
    )


decoder_scatter_op.register_autograd(
    DecoderScatterFunction.backward, setup_context=DecoderScatterFunction.setup_context
)


def decoder_scatter_triton(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """The decoder's input tokens, on the custom op.

    Args:
        x: (N, 1 + K, D) decoder-embedded latent (class token first). ids_restore: (N, L) int64.
        mask_token: D values (e.g. the (1, 1, D) parameter). pos: (1 + L, D) or (1, 1 + L, D).
    Returns:
        (N, 1 + L, D): ``cat([x[:, :1], unshuffle(cat([x[:, 1:], mask tokens]))]) + pos``.
    """
    return decoder_scatter_op(x, ids_restore, mask_token, pos)
