"""Softmax attention over short sequences, reading the fused QKV projection's layout directly.

A ViT block's ``qkv`` linear writes (N, T, 3 * H * Dh), i.e. (N, T, 3, H, Dh) row-major. The
PyTorch path permutes that to three (N, H, T, Dh) views before ``scaled_dot_product_attention``
and transposes the result back to (N, T, H * Dh) for ``proj``. These kernels index the fused
layout with strides instead, so neither transpose is ever materialised:

- forward (``_attention_fwd_kernel``): one program per (query block, sample * head). It loads its
  queries once and walks over the keys in ``BLOCK_N`` steps with the online softmax (running
  max ``m`` and running sum ``l`` in the log2 domain, fp32 accumulators); for short sequences
  the whole key range is one step. It writes the output straight into (N, T, H * Dh), ready for
  ``proj``, and the log-sum-exp (log2 domain) per row, (N, H, T) fp32, for the backward.
- backward: two kernels, no atomics. ``_attention_bwd_dq_kernel`` (one program per query block)
  computes ``delta = rowsum(dO * O)``, stores it, and accumulates ``dQ`` over the key blocks;
  ``_attention_bwd_dkdv_kernel`` (one program per key block, launched after it on the same
  stream) accumulates ``dK`` and ``dV`` over the query blocks. All three gradients are written
  into one (N, T, 3, H, Dh) tensor: exactly the gradient of the fused ``qkv`` output, so the
  backward of the ``qkv`` linear reads it without a concatenation.

The reference is :func:`mimir_fast.ops.attention.attention_reference`. Every product runs on
tensor cores with fp32 accumulation: bf16/fp16 inputs directly (the path under autocast), fp32
inputs as three TF32 products ("tf32x3": the operands split into high and low TF32 parts, ~fp32
accuracy), so a GPU should agree with the fp32 reference to ~1e-5 (the GPU tests allow 1e-4).
:func:`attention_config` picks each kernel's blocks, warps and stages.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._shared import LaunchConfig, device_arch, next_power_of_2

__all__ = [
    "AttentionFunction",
    "attention_backward",
    "attention_backward_op",
    "attention_config",
    "attention_forward",
    "attention_op",
    "attention_triton",
    "default_block_sizes",
]

_LOG2E = 1.4426950408889634
# fp32 inputs: each dot as three TF32 tensor-core products (high and low parts of the operands),
# about fp32's accuracy (relative error ~1e-6) at a third of TF32's rate, well above fp32 FMA.
_FP32_PRECISION = "tf32x3"


@triton.jit
def _attention_fwd_kernel(
    qkv_ptr,
    out_ptr,
    lse_ptr,
    T,
    H,
    HEAD_DIM,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Attention output for one block of queries of one (sample, head).

    Grid: (cdiv(T, BLOCK_M), N * H).

    Pointers:
        qkv_ptr: (N, T, 3, H, HEAD_DIM) contiguous, fp32/bf16/fp16: the fused projection output.
        out_ptr: (N, T, H * HEAD_DIM) contiguous, qkv's dtype.
        lse_ptr: (N, H, T) fp32 output: log2 of the softmax normaliser of each query row,
            ``max2 + log2(sum 2^(s2 - max2))`` with ``s2 = q.k * qk_scale``.
    Scalars:
        qk_scale: ``head_dim ** -0.5 * log2(e)`` (scores in the log2 domain, for ``exp2``).
    Constexprs:
        BLOCK_M: queries per program; BLOCK_N: keys per loop step; BLOCK_D: next power of two
            >= HEAD_DIM (>= 16 for ``tl.dot``; padded lanes are masked to zero).
        PRECISION: ``tl.dot``'s input precision for fp32 inputs ("tf32x3"); 16-bit ones ignore it.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    n = pid_bh // H
    h = pid_bh % H
    stride_t = 3 * H * HEAD_DIM
    base = qkv_ptr + n.to(tl.int64) * T * stride_t + h * HEAD_DIM
    k_base = base + H * HEAD_DIM
    v_base = base + 2 * H * HEAD_DIM
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(
        base + rows[:, None] * stride_t + d[None, :],
        mask=(rows[:, None] < T) & d_ok[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, T, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_mask = (cols[:, None] < T) & d_ok[None, :]
        k = tl.load(k_base + cols[:, None] * stride_t + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_t + d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        s = tl.where(cols[None, :] < T, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    row_ok = rows < T
    out_base = out_ptr + n.to(tl.int64) * T * H * HEAD_DIM + h * HEAD_DIM
    tl.store(
        out_base + rows[:, None] * (H * HEAD_DIM) + d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    tl.store(lse_ptr + pid_bh.to(tl.int64) * T + rows, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _attention_bwd_dq_kernel(
    qkv_ptr,
    out_ptr,
    dout_ptr,
    lse_ptr,
    delta_ptr,
    dqkv_ptr,
    T,
    H,
    HEAD_DIM,
    qk_scale,
    sm_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ for one block of queries of one (sample, head), and ``delta``.

    Grid: (cdiv(T, BLOCK_M), N * H).

    Pointers:
        qkv_ptr: (N, T, 3, H, HEAD_DIM) the forward's input. dqkv_ptr: same shape and dtype; this
            kernel writes its ``[:, :, 0]`` (dQ) part.
        out_ptr, dout_ptr: (N, T, H * HEAD_DIM) the forward's output and its gradient (contiguous).
        lse_ptr: (N, H, T) fp32 from the forward (log2 domain).
        delta_ptr: (N, H, T) fp32 output, ``rowsum(dO * O)``, read by the dK/dV kernel.
    Scalars:
        qk_scale: ``head_dim ** -0.5 * log2(e)``; sm_scale: ``head_dim ** -0.5``.
    Constexprs: as the forward.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    n = pid_bh // H
    h = pid_bh % H
    stride_t = 3 * H * HEAD_DIM
    off_qkv = n.to(tl.int64) * T * stride_t + h * HEAD_DIM
    base = qkv_ptr + off_qkv
    k_base = base + H * HEAD_DIM
    v_base = base + 2 * H * HEAD_DIM
    off_o = n.to(tl.int64) * T * H * HEAD_DIM + h * HEAD_DIM
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    row_ok = rows < T
    rmask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(base + rows[:, None] * stride_t + d[None, :], mask=rmask, other=0.0)
    o = tl.load(
        out_ptr + off_o + rows[:, None] * (H * HEAD_DIM) + d[None, :], mask=rmask, other=0.0
    )
    do = tl.load(
        dout_ptr + off_o + rows[:, None] * (H * HEAD_DIM) + d[None, :], mask=rmask, other=0.0
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(delta_ptr + pid_bh.to(tl.int64) * T + rows, delta, mask=row_ok)
    lse = tl.load(lse_ptr + pid_bh.to(tl.int64) * T + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, T, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_mask = (cols[:, None] < T) & d_ok[None, :]
        k = tl.load(k_base + cols[:, None] * stride_t + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_t + d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        p = tl.where(cols[None, :] < T, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(
        dqkv_ptr + off_qkv + rows[:, None] * stride_t + d[None, :],
        dq.to(dqkv_ptr.dtype.element_ty),
        mask=rmask,
    )


@triton.jit
def _attention_bwd_dkdv_kernel(
    qkv_ptr,
    dout_ptr,
    lse_ptr,
    delta_ptr,
    dqkv_ptr,
    T,
    H,
    HEAD_DIM,
    qk_scale,
    sm_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dK and dV for one block of keys of one (sample, head). Grid: (cdiv(T, BLOCK_N), N * H).

    Pointers:
        qkv_ptr: (N, T, 3, H, HEAD_DIM) the forward's input. dqkv_ptr: same shape and dtype; this
            kernel writes its ``[:, :, 1]`` (dK) and ``[:, :, 2]`` (dV) parts.
        dout_ptr: (N, T, H * HEAD_DIM) gradient of the forward's output (contiguous).
        lse_ptr, delta_ptr: (N, H, T) fp32 from the forward and from the dQ kernel.
    Constexprs:
        BLOCK_N: keys per program; BLOCK_M: queries per loop step; BLOCK_D, PRECISION: as the
            forward.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    n = pid_bh // H
    h = pid_bh % H
    stride_t = 3 * H * HEAD_DIM
    off_qkv = n.to(tl.int64) * T * stride_t + h * HEAD_DIM
    base = qkv_ptr + off_qkv
    off_o = n.to(tl.int64) * T * H * HEAD_DIM + h * HEAD_DIM
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    cmask = (cols[:, None] < T) & d_ok[None, :]
    k = tl.load(base + H * HEAD_DIM + cols[:, None] * stride_t + d[None, :], mask=cmask, other=0.0)
    v = tl.load(
        base + 2 * H * HEAD_DIM + cols[:, None] * stride_t + d[None, :], mask=cmask, other=0.0
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start in range(0, T, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < T
        rmask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(base + rows[:, None] * stride_t + d[None, :], mask=rmask, other=0.0)
        do = tl.load(
            dout_ptr + off_o + rows[:, None] * (H * HEAD_DIM) + d[None, :], mask=rmask, other=0.0
        )
        lse = tl.load(lse_ptr + pid_bh.to(tl.int64) * T + rows, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + pid_bh.to(tl.int64) * T + rows, mask=row_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        pt = tl.where(row_ok[None, :], tl.exp2(st * qk_scale - lse[None, :]), 0.0)
        dst = pt * (dpt - delta[None, :])
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * sm_scale
    out = dqkv_ptr + off_qkv + cols[:, None] * stride_t + d[None, :]
    tl.store(out + H * HEAD_DIM, dk.to(dqkv_ptr.dtype.element_ty), mask=cmask)
    tl.store(out + 2 * H * HEAD_DIM, dv.to(dqkv_ptr.dtype.element_ty), mask=cmask)


def attention_config(
    kernel: str, t: int, head_dim: int, dtype: torch.dtype, arch: int
) -> LaunchConfig:
    """Block sizes, warps and pipelining of one attention kernel at one shape.

    A program owns ``own`` rows (queries; keys for "bwd_dkdv") and steps over the other side in
    ``step`` rows, with BLOCK_D = Dh padded to a power of two >= 16:

    - 16-bit inputs: own 64, step 64 (32 for Dh > 64); 8 warps for the backward kernels.
    - fp32 inputs (three TF32 products per dot, twice the bytes per element): own 16, step 32
      (16 with 8 warps for Dh > 64).

    Blocks shrink to T for short sequences. When one step covers T the loop runs once, unpipelined
    (num_stages 1: nothing to prefetch); otherwise K/V (or Q/dO) tiles are double-buffered.
    tests/test_aot_compile.py compiles every configuration for sm_80, sm_89 and sm_90: each fits
    99 KB of shared memory without a register spill.

    Args:
        kernel: "fwd", "bwd_dq" or "bwd_dkdv".
        t: tokens T. head_dim: Dh. dtype: qkv's dtype.
        arch: compute capability (80, 89, 90); every arch gets the same configuration.
    """
    del arch  # one configuration fits every arch
    block_d = max(16, next_power_of_2(head_dim))
    rows = max(16, next_power_of_2(t))
    if dtype == torch.float32:
        own, step = min(16, rows), min(32 if block_d <= 64 else 16, rows)
        warps = 4 if block_d <= 64 else 8
    else:
        own, step = min(64, rows), min(64 if block_d <= 64 else 32, rows)
        warps = 4 if kernel == "fwd" else 8
    if kernel == "bwd_dkdv":
        blocks = {"BLOCK_N": own, "BLOCK_M": step}
    else:
        blocks = {"BLOCK_M": own, "BLOCK_N": step}
    return LaunchConfig(
        {**blocks, "BLOCK_D": block_d, "PRECISION": _FP32_PRECISION},
        num_warps=warps,
        num_stages=1 if t <= step else 2,
    )


def _check_qkv(qkv: torch.Tensor) -> None:
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be (N, T, 3, H, head_dim), got {tuple(qkv.shape)}")
    if not qkv.is_floating_point():
        raise ValueError(f"qkv must be floating point, got {qkv.dtype}")


def attention_forward(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward.

    qkv: (N, T, 3, H, Dh) -> (out (N, T, H * Dh) in qkv's dtype, lse (N, H, T) fp32).
    """
    _check_qkv(qkv)
    qkv = qkv.contiguous()
    n, t, _, h, dh = qkv.shape
    out = torch.empty((n, t, h * dh), dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty((n, h, t), dtype=torch.float32, device=qkv.device)
    cfg = attention_config("fwd", t, dh, qkv.dtype, device_arch(qkv))
    sm_scale = dh**-0.5
    grid = (triton.cdiv(t, cfg.constexprs["BLOCK_M"]), n * h)
    _attention_fwd_kernel[grid](qkv, out, lse, t, h, dh, sm_scale * _LOG2E, **cfg.kwargs())
    return out, lse


def attention_backward(
    dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> torch.Tensor:
    """Launch the backward: the gradient of ``qkv``, (N, T, 3, H, Dh) in qkv's dtype."""
    qkv = qkv.contiguous()
    n, t, _, h, dh = qkv.shape
    dout = dout.to(qkv.dtype).contiguous()
    dqkv = torch.empty_like(qkv)
    delta = torch.empty((n, h, t), dtype=torch.float32, device=qkv.device)
    arch = device_arch(qkv)
    scales = (dh**-0.5 * _LOG2E, dh**-0.5)
    cfg = attention_config("bwd_dq", t, dh, qkv.dtype, arch)
    _attention_bwd_dq_kernel[(triton.cdiv(t, cfg.constexprs["BLOCK_M"]), n * h)](
        qkv, out.contiguous(), dout, lse, delta, dqkv, t, h, dh, *scales, **cfg.kwargs()
    )
    # launched after the dQ kernel on the same stream: it reads the delta that kernel wrote
    cfg = attention_config("bwd_dkdv", t, dh, qkv.dtype, arch)
    _attention_bwd_dkdv_kernel[(triton.cdiv(t, cfg.constexprs["BLOCK_N"]), n * h)](
        qkv, dout, lse, delta, dqkv, t, h, dh, *scales, **cfg.kwargs()
    )
    return dqkv


class AttentionFunction(torch.autograd.Function):
    """Differentiable fused attention: ``qkv (N, T, 3, H, Dh) -> (N, T, H * Dh)``.

    ``setup_context``/``backward`` are also the autograd rules of the ``mimir_fast::attention``
    custom op below; the backward calls the ``mimir_fast::attention_backward`` op so that
    ``torch.compile`` can trace it.
    """

    @staticmethod
    def forward(qkv):
        return attention_forward(qkv)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (qkv,) = inputs
        out, lse = output
        ctx.save_for_backward(qkv, out, lse)
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, dout, _dlse=None):
        qkv, out, lse = ctx.saved_tensors
        return torch.ops.mimir_fast.attention_backward(dout, qkv, out, lse)


# The launchers, registered as custom ops: forward -> (out, lse); backward -> d_qkv.
attention_op = torch.library.custom_op("mimir_fast::attention", attention_forward, mutates_args=())
attention_backward_op = torch.library.custom_op(
    "mimir_fast::attention_backward", attention_backward, mutates_args=()
)


@attention_op.register_fake
def _(qkv):
    n, t, _, h, dh = qkv.shape
    return qkv.new_empty((n, t, h * dh)), qkv.new_empty((n, h, t), dtype=torch.float32)


@attention_backward_op.register_fake
def _(dout, qkv, out, lse):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


attention_op.register_autograd(
    AttentionFunction.backward, setup_context=AttentionFunction.setup_context
)


def attention_triton(qkv: torch.Tensor) -> torch.Tensor:
    """Fused softmax attention (scale ``Dh ** -0.5``, no mask, no dropout) on the custom op.

    Args:
        qkv: (N, T, 3, H, Dh), the ``qkv`` linear's output reshaped (a view, no copy).
    Returns:
        (N, T, H * Dh) in qkv's dtype, the input of the ``proj`` linear.
    """
    return attention_op(qkv)[0]


def default_block_sizes(
    t: int, head_dim: int, dtype: torch.dtype = torch.bfloat16, arch: int = 90
) -> dict[str, int]:
    """The forward's block sizes and launch options at a shape (for benchmark reports)."""
    cfg = attention_config("fwd", t, head_dim, dtype, arch)
    blocks = {k: v for k, v in cfg.constexprs.items() if k.startswith("BLOCK")}
    steps = math.ceil(t / blocks["BLOCK_N"])
    return {**blocks, "key_steps": steps, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
