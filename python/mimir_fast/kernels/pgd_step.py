"""Fused projected-gradient step (PGD / APGD update) as Triton kernels.

The reference is :func:`mimir_fast.ops.pgd_step.pgd_step_reference`; this computes the same thing in
fp32 registers and writes the result in ``x_adv``'s dtype (fp32 or bf16):

- L-inf: one pass. Each program loads a block of ``x_adv``, ``grad`` and ``x0`` of one sample,
  takes the sign step, clamps to ``[x0 - eps, x0 + eps]`` and to ``[0, 1]``, and stores.
- L2: two passes. The step direction ``grad / ||grad||`` and the projection radius need
  per-sample norms. Pass 1 (``_pgd_l2_stats_kernel``, one program per sample, looping over
  the sample) reduces three sums: ``||g||^2``, ``<d, g>`` and ``||d||^2`` with
  ``d = x_adv - x0``. The norm of the new perturbation follows without materialising it:
  ``||d + a g/|g| ||^2 = ||d||^2 + 2a <d,g>/|g| + a^2 ||g||^2/|g|^2``. Pass 2 (the same
  ``_pgd_step_kernel``) does step + rescale + clamp in one read of each input.

No autograd: the step runs under ``torch.no_grad()`` inside the attacks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._shared import NORM_FLOOR, LaunchConfig, check_step_inputs, device_arch, per_sample

__all__ = ["pgd_step_config", "pgd_step_triton"]


@triton.jit
def _pgd_step_kernel(
    x_ptr,
    g_ptr,
    x0_ptr,
    out_ptr,
    alpha_ptr,
    eps_ptr,
    scale_ptr,
    d,
    NORM_L2: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Step, project, clamp for one block of one sample. Grid: (N, cdiv(D, BLOCK)).

    Pointers (contiguous, flattened per sample, D = C*H*W):
        x_ptr:   (N, D) current iterate, fp32 or bf16.
        g_ptr:   (N, D) gradient, any float dtype.
        x0_ptr:  (N, D) ball centre (clean images), any float dtype.
        out_ptr: (N, D) result, ``x_ptr``'s dtype.
        alpha_ptr, eps_ptr: (N,) fp32 step size and radius per sample.
        scale_ptr: (N, 2) fp32, L2 only: ``[1/||g||, min(1, eps/||delta_new||)]`` per sample.
    Constexprs:
        NORM_L2: False: sign step and box projection; True: normalised step and ball rescale.
        BLOCK: elements per program.
    """
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = col < d
    offs = row.to(tl.int64) * d + col
    x = tl.load(x_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    c = tl.load(x0_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    alpha = tl.load(alpha_ptr + row)
    eps = tl.load(eps_ptr + row)
    if NORM_L2:
        inv_g = tl.load(scale_ptr + 2 * row)
        shrink = tl.load(scale_ptr + 2 * row + 1)
        delta = x + alpha * (g * inv_g) - c
        x = c + delta * shrink
    else:
        s = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
        x = x + alpha * s
        x = tl.minimum(tl.maximum(x, c - eps), c + eps)
    x = tl.minimum(tl.maximum(x, 0.0), 1.0)
    tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _pgd_l2_stats_kernel(x_ptr, g_ptr, x0_ptr, stats_ptr, d, BLOCK: tl.constexpr):
    """Per-sample sums for the L2 step. Grid: (N,); each program loops over its sample.

    Pointers:
        x_ptr, g_ptr, x0_ptr: (N, D) iterate, gradient, ball centre (any float dtype).
        stats_ptr: (N, 3) fp32 output: ``[||g||^2, <x - x0, g>, ||x - x0||^2]``.
    Constexprs:
        BLOCK: elements per loop iteration.
    """
    row = tl.program_id(0)
    base = row.to(tl.int64) * d
    gg = tl.zeros([BLOCK], dtype=tl.float32)
    dg = tl.zeros([BLOCK], dtype=tl.float32)
    dd = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, d, BLOCK):
        col = start + tl.arange(0, BLOCK)
        valid = col < d
        x = tl.load(x_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        c = tl.load(x0_ptr + base + col, mask=valid, other=0.0).to(tl.float32)
        delta = x - c
        gg += g * g
        dg += delta * g
        dd += delta * delta
    tl.store(stats_ptr + 3 * row, tl.sum(gg, axis=0))
    tl.store(stats_ptr + 3 * row + 1, tl.sum(dg, axis=0))
    tl.store(stats_ptr + 3 * row + 2, tl.sum(dd, axis=0))


def pgd_step_config(kernel: str, arch: int) -> LaunchConfig:
    """BLOCK, warps and pipelining of the step ("step") or the L2 sums ("stats") kernel.

    1024 elements a program (or a loop step) with 4 warps: 8 per thread, vector loads. The sums
    loop over a whole sample (d in the thousands): three stages keep loads in flight.

    Args:
        kernel: "step" or "stats". arch: compute capability; every arch gets the same one.
    """
    del arch  # streaming kernels: one configuration fits every arch
    return LaunchConfig({"BLOCK": 1024}, num_warps=4, num_stages=3 if kernel == "stats" else 1)


def pgd_step_triton(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    alpha: float | torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "linf",
) -> torch.Tensor:
    """Fused projected-gradient step; the contract of
    :func:`~mimir_fast.ops.pgd_step.pgd_step_reference`.

    Args:
        x_adv, grad, x0: (N, ...) tensors of one shape on one device (made contiguous if needed).
        alpha, eps: numbers or (N,) tensors.
        norm: "linf" or "l2".
    Returns:
        A new tensor like ``x_adv``.
    """
    check_step_inputs(x_adv, grad, x0, norm)
    n = x_adv.shape[0]
    d = x_adv.numel() // n
    x, g, c = x_adv.contiguous(), grad.contiguous(), x0.contiguous()
    a = per_sample(alpha, n, x.device).contiguous()
    e = per_sample(eps, n, x.device).contiguous()
    out = torch.empty_like(x)
    arch = device_arch(x)
    if norm == "l2":
        stats = torch.empty((n, 3), dtype=torch.float32, device=x.device)
        _pgd_l2_stats_kernel[(n,)](x, g, c, stats, d, **pgd_step_config("stats", arch).kwargs())
        gg, dg, dd = stats.unbind(1)
        g_norm = gg.sqrt().clamp_min(NORM_FLOOR)
        # ||d + a g/|g| ||^2 expanded; clamp: rounding may take it a hair below 0
        new_sq = (dd + 2 * a * dg / g_norm + a * a * gg / (g_norm * g_norm)).clamp_min(0.0)
        shrink = torch.clamp(e / new_sq.sqrt().clamp_min(NORM_FLOOR), max=1.0)
        scale = torch.stack([1.0 / g_norm, shrink], dim=1).contiguous()
    else:
        scale = a  # unused
    cfg = pgd_step_config("step", arch)
    grid = (n, triton.cdiv(d, cfg.constexprs["BLOCK"]))
    _pgd_step_kernel[grid](x, g, c, out, a, e, scale, d, NORM_L2=norm == "l2", **cfg.kwargs())
    return out.view_as(x_adv) if out.shape == x_adv.shape else out.reshape(x_adv.shape)
