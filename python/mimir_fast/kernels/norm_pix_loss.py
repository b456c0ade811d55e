"""MAE's reconstruction loss read straight from the image: patchify + per-patch norm + masked MSE.

The PyTorch path patchifies the target (a full permuted copy), computes each patch's mean and
variance, normalises (another copy), subtracts the prediction, squares, averages per patch and
then over the masked patches. Here:

- ``_norm_pix_loss_fwd_kernel``: one program per block of patches of one sample. It gathers
  each patch's pixels from the image (N, C, H, W) in the (row, col, channel) order of
  :func:`~mimir_fast.ops.patchify` (the order of ``pred``'s last dimension), reads the matching
  rows of ``pred``, and in fp32 registers computes the mean, the unbiased variance (eps 1e-6, as
  :func:`~mimir_fast.ops.normalize_patches`), the normalised target and the per-patch MSE; it
  writes one fp32 number per patch. The masked mean of those (N, L) numbers is one tiny
  reduction on the host side (no host sync: ``clamp_min`` on the denominator).
- ``_norm_pix_loss_bwd_kernel``: the same read pattern; writes ``d pred`` and, when the target
  requires grad, ``d image`` straight into the image layout (every pixel belongs to exactly
  one patch: no zero-fill, no atomics). With ``w = grad * mask / count`` and
  ``e = pred - t_hat``: ``d pred = 2 w e / P``; through the normalisation
  ``t_hat = (t - mean) / s``, ``s = sqrt(var + eps)``, with ``g = -2 w e / P``:
  ``d t = (g - mean(g) - t_hat * sum(g * t_hat) / (P - 1)) / s``.

The reference is :func:`mimir_fast.ops.norm_pix_loss.norm_pix_loss_reference`
(:func:`~mimir_fast.ops.norm_pix_loss.masked_mse_loss` on ``patchify(image)``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._shared import NORM_PIX_EPS, LaunchConfig, device_arch, next_power_of_2

__all__ = [
    "NormPixLossFunction",
    "norm_pix_loss_backward",
    "norm_pix_loss_backward_op",
    "norm_pix_loss_config",
    "norm_pix_loss_forward",
    "norm_pix_loss_op",
    "norm_pix_loss_triton",
]


@triton.jit
def _patch_addr(n, patch, e, C, H, W, GW, PATCH: tl.constexpr):
    """Image offsets of elements ``e`` ((row, col, channel) order) of patches ``patch`` of
    sample ``n``."""
    gy = patch // GW
    gx = patch % GW
    r = e // (PATCH * C)
    c = (e // C) % PATCH
    ch = e % C
    return (
        n.to(tl.int64) * C * H * W
        + ch[None, :] * (H * W)
        + (gy[:, None] * PATCH + r[None, :]) * W
        + gx[:, None] * PATCH
        + c[None, :]
    )


@triton.jit
def _norm_pix_loss_fwd_kernel(
    img_ptr,
    pred_ptr,
    per_patch_ptr,
    C,
    H,
    W,
    GW,
    L,
    P,
    stride_pn,
    stride_pl,
    eps,
    PATCH: tl.constexpr,
    NORM_PIX: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Per-patch MSE of BLOCK_L patches of one sample. Grid: (N, cdiv(L, BLOCK_L)).

    Pointers:
        img_ptr: (N, C, H, W) contiguous target image, any float dtype.
        pred_ptr: (N, L, P) prediction, last dimension contiguous (strides stride_pn, stride_pl),
            P = p*p*C in (row, col, channel) order.
        per_patch_ptr: (N, L) fp32 output, the mean over P of the squared error of each patch.
    Constexprs:
        PATCH: p. NORM_PIX: normalise the target patch by its mean and unbiased variance (+ eps).
        BLOCK_L: patches per program. BLOCK_P: next power of two >= P.
    """
    n = tl.program_id(0)
    patch = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    l_ok = patch < L
    e = tl.arange(0, BLOCK_P)
    e_ok = e < P
    ok = l_ok[:, None] & e_ok[None, :]
    t = tl.load(img_ptr + _patch_addr(n, patch, e, C, H, W, GW, PATCH), mask=ok, other=0.0).to(
        tl.float32
    )
    pred = tl.load(
        pred_ptr + n.to(tl.int64) * stride_pn + patch[:, None] * stride_pl + e[None, :],
        mask=ok,
        other=0.0,
    ).to(tl.float32)
    if NORM_PIX:
        mean = tl.sum(t, axis=1) / P
        cen = tl.where(ok, t - mean[:, None], 0.0)
        var = tl.sum(cen * cen, axis=1) / (P - 1)
        t = cen / tl.sqrt(var + eps)[:, None]
    err = tl.where(ok, pred - t, 0.0)
    tl.store(per_patch_ptr + n.to(tl.int64) * L + patch, tl.sum(err * err, axis=1) / P, mask=l_ok)


@triton.jit
def _norm_pix_loss_bwd_kernel(
    img_ptr,
    pred_ptr,
    mask_ptr,
    w_ptr,
    dpred_ptr,
    dimg_ptr,
    C,
    H,
    W,
    GW,
    L,
    P,
    stride_pn,
    stride_pl,
    eps,
    PATCH: tl.constexpr,
    NORM_PIX: tl.constexpr,
    HAS_MASK: tl.constexpr,
    NEED_DIMG: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Gradients for BLOCK_L patches of one sample. Grid: (N, cdiv(L, BLOCK_L)).

    Pointers:
        img_ptr, pred_ptr: as the forward.
        mask_ptr: (N, L) any dtype, 1 = counts (unused if not HAS_MASK).
        w_ptr: (1,) fp32, ``grad_loss / count`` (count = mask sum clamped to >= 1, or N*L).
        dpred_ptr: (N, L, P) contiguous output, pred's dtype.
        dimg_ptr: (N, C, H, W) contiguous output, the image's dtype (only written if NEED_DIMG).
    Constexprs: as the forward, plus HAS_MASK and NEED_DIMG.
    """
    n = tl.program_id(0)
    patch = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    l_ok = patch < L
    e = tl.arange(0, BLOCK_P)
    e_ok = e < P
    ok = l_ok[:, None] & e_ok[None, :]
    addr = _patch_addr(n, patch, e, C, H, W, GW, PATCH)
    t = tl.load(img_ptr + addr, mask=ok, other=0.0).to(tl.float32)
    pred = tl.load(
        pred_ptr + n.to(tl.int64) * stride_pn + patch[:, None] * stride_pl + e[None, :],
        mask=ok,
        other=0.0,
    ).to(tl.float32)
    if NORM_PIX:
        mean = tl.sum(t, axis=1) / P
        cen = tl.where(ok, t - mean[:, None], 0.0)
        var = tl.sum(cen * cen, axis=1) / (P - 1)
        inv_s = 1.0 / tl.sqrt(var + eps)
        t = cen * inv_s[:, None]
    w = tl.load(w_ptr)
    if HAS_MASK:
        w = w * tl.load(mask_ptr + n.to(tl.int64) * L + patch, mask=l_ok, other=0.0).to(tl.float32)
        coef = (2.0 / P) * w[:, None]
    else:
        coef = tl.full([BLOCK_L, 1], 2.0 / P, dtype=tl.float32) * w
    dp = tl.where(ok, coef * (pred - t), 0.0)
    tl.store(
        dpred_ptr + n.to(tl.int64) * L * P + patch[:, None] * P + e[None, :],
        dp.to(dpred_ptr.dtype.element_ty),
        mask=ok,
    )
    if NEED_DIMG:
        g = -dp
        if NORM_PIX:
            g_mean = tl.sum(g, axis=1) / P
            g_t = tl.sum(g * t, axis=1) / (P - 1)
            g = (g - g_mean[:, None] - t * g_t[:, None]) * inv_s[:, None]
        tl.store(dimg_ptr + addr, g.to(dimg_ptr.dtype.element_ty), mask=ok)


def _geometry(
    image: torch.Tensor, pred: torch.Tensor, patch_size: int
) -> tuple[int, int, int, int, int]:
    n, c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
    length, pdim = (h // p) * (w // p), p * p * c
    if pred.shape != (n, length, pdim):
        raise ValueError(
            f"pred must be (N, L, p*p*C) = ({n}, {length}, {pdim}) for this image, "
            f"got {tuple(pred.shape)}"
        )
    return n, c, h, w, length


def norm_pix_loss_config(pdim: int, arch: int) -> LaunchConfig:
    """Patches per program (BLOCK_L) and patch width (BLOCK_P) of both kernels.

    About 4096 elements a program, each patch whole in one program (its mean and variance are
    one reduction), 8 warps for a full 4096 (with 4, ptxas spilled in the fp32 backward on
    sm_89: tests/test_aot_compile.py). No loops: num_stages 1.

    Args:
        pdim: P = p*p*C. arch: compute capability; every arch gets the same configuration.
    """
    del arch  # no shared memory to speak of, no tensor cores: one configuration fits every arch
    block = next_power_of_2(pdim)
    patches = max(1, min(64, 4096 // block))
    warps = 8 if patches * block >= 4096 else 4
    return LaunchConfig({"BLOCK_L": patches, "BLOCK_P": block}, num_warps=warps, num_stages=1)


def _pred_strides(pred: torch.Tensor) -> torch.Tensor:
    return pred if pred.stride(-1) == 1 else pred.contiguous()


def norm_pix_loss_forward(
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix: bool,
) -> torch.Tensor:
    """Launch the forward: the scalar fp32 loss, the masked mean of the per-patch MSE (the plain
    mean when ``mask`` is None)."""
    n, c, h, w, length = _geometry(image, pred, patch_size)
    image = image.contiguous()
    pred = _pred_strides(pred)
    pdim = pred.shape[-1]
    per_patch = torch.empty((n, length), dtype=torch.float32, device=image.device)
    cfg = norm_pix_loss_config(pdim, device_arch(image))
    _norm_pix_loss_fwd_kernel[(n, triton.cdiv(length, cfg.constexprs["BLOCK_L"]))](
        image,
        pred,
        per_patch,
        c,
        h,
        w,
        w // patch_size,
        length,
        pdim,
        pred.stride(0),
        pred.stride(1),
        NORM_PIX_EPS,
        PATCH=patch_size,
        NORM_PIX=norm_pix,
        **cfg.kwargs(),
    )
    if mask is None:
        return per_patch.mean()
    m = mask.float()
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


def norm_pix_loss_backward(
    grad: torch.Tensor,
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix: bool,
    need_image: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward: ``(d_pred (N, L, P) in pred's dtype, d_image (N, C, H, W))``, d_image
    empty unless ``need_image``."""
    n, c, h, w, length = _geometry(image, pred, patch_size)
    image = image.contiguous()
    pred = _pred_strides(pred)
    pdim = pred.shape[-1]
    count = (
        mask.float().sum().clamp_min(1.0)
        if mask is not None
        else torch.full((), float(n * length), device=image.device)
    )
    wscale = (grad.float() / count).reshape(1).contiguous()
    d_pred = torch.empty((n, length, pdim), dtype=pred.dtype, device=pred.device)
    d_img = torch.empty(image.shape if need_image else (0,), dtype=image.dtype, device=image.device)
    cfg = norm_pix_loss_config(pdim, device_arch(image))
    _norm_pix_loss_bwd_kernel[(n, triton.cdiv(length, cfg.constexprs["BLOCK_L"]))](
        image,
        pred,
        wscale if mask is None else mask.contiguous(),
        wscale,
        d_pred,
        d_img,
        c,
        h,
        w,
        w // patch_size,
        length,
        pdim,
        pred.stride(0),
        pred.stride(1),
        NORM_PIX_EPS,
        PATCH=patch_size,
        NORM_PIX=norm_pix,
        HAS_MASK=mask is not None,
        NEED_DIMG=need_image,
        **cfg.kwargs(),
    )
    return d_pred, d_img


class NormPixLossFunction(torch.autograd.Function):
    """Differentiable loss ``(image, pred, mask, patch_size, norm_pix) -> scalar``, with respect
    to pred and image.

    Its ``setup_context``/``backward`` are the autograd rules of the ``mimir_fast::norm_pix_loss``
    custom op below; the backward calls ``mimir_fast::norm_pix_loss_backward``. The mask gets no
    gradient.
    """

    @staticmethod
    def forward(image, pred, mask, patch_size, norm_pix):
        return norm_pix_loss_forward(image, pred, mask, patch_size, norm_pix)

    @staticmethod
    def setup_context(ctx, inputs, output):
        image, pred, mask, patch_size, norm_pix = inputs
        ctx.save_for_backward(image, pred, mask)
        ctx.patch_size, ctx.norm_pix = patch_size, norm_pix

    @staticmethod
    def backward(ctx, grad):
        image, pred, mask = ctx.saved_tensors
        need_image, need_pred = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d_pred, d_img = torch.ops.mimir_fast.norm_pix_loss_backward(
            grad, image, pred, mask, ctx.patch_size, ctx.norm_pix, need_image
        )
        return (d_img if need_image else None, d_pred if need_pred else None, None, None, None)


# The launchers, registered as custom ops.
norm_pix_loss_op = torch.library.custom_op(
    "mimir_fast::norm_pix_loss", norm_pix_loss_forward, mutates_args=()
)
norm_pix_loss_backward_op = torch.library.custom_op(
    "mimir_fast::norm_pix_loss_backward", norm_pix_loss_backward, mutates_args=()
)


@norm_pix_loss_op.register_fake
def _(image, pred, mask, patch_size, norm_pix):
    return pred.new_empty((), dtype=torch.float32)


@norm_pix_loss_backward_op.register_fake
def _(grad, image, pred, mask, patch_size, norm_pix, need_image):
    return (pred.new_empty(pred.shape), image.new_empty(image.shape if need_image else (0,)))


norm_pix_loss_op.register_autograd(
    NormPixLossFunction.backward, setup_context=NormPixLossFunction.setup_context
)


def norm_pix_loss_triton(
    image: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix: bool = True,
) -> torch.Tensor:
    """``masked_mse_loss(pred, patchify(image), mask, norm_pix)`` on the custom op, fp32 scalar.

    Args:
        image: (N, C, H, W) target. pred: (N, L, p*p*C). mask: (N, L) 1 = counts, or None (all).
        patch_size: p. norm_pix: normalise each target patch by its mean and unbiased std.
    """
    return norm_pix_loss_op(image, pred, mask, patch_size, norm_pix)
