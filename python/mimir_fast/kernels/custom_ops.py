"""The MaskedViT kernels registered as PyTorch custom ops (``torch.library.custom_op``).

Each fused op is a pair: ``mimir_fast::<op>`` (forward) and ``mimir_fast::<op>_backward``, both
opaque to ``torch.compile`` (a fake implementation gives shapes and dtypes for tracing) and
free of host synchronisation (CUDA-graph safe). The forward op's autograd rule
(``register_autograd``) is the ``setup_context``/``backward`` pair of the op's
``torch.autograd.Function`` in its kernel module; the backward calls the backward op, so
AOTAutograd traces the backward graph too.

Importing this module registers the ops; the ``*_triton`` functions of the kernel modules do so
on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention import AttentionFunction, attention_backward, attention_forward
from .decoder_scatter import (
    DecoderScatterFunction,
    decoder_scatter_backward,
    decoder_scatter_forward,
)
from .masked_patch_embed import (
    MaskedPatchEmbedFunction,
    masked_patch_embed_backward,
    masked_patch_embed_forward,
)
from .norm_pix_loss import NormPixLossFunction, norm_pix_loss_backward, norm_pix_loss_forward

# ---------------------------------------------------------------------------------- attention


@torch.library.custom_op("mimir_fast::attention", mutates_args=())
def attention(qkv: Tensor) -> tuple[Tensor, Tensor]:
    """qkv (N, T, 3, H, Dh) -> (out (N, T, H*Dh), lse (N, H, T) fp32, log2 domain)."""
    return attention_forward(qkv)


@attention.register_fake
def _(qkv):
    n, t, _, h, dh = qkv.shape
    return qkv.new_empty((n, t, h * dh)), qkv.new_empty((n, h, t), dtype=torch.float32)


@torch.library.custom_op("mimir_fast::attention_backward", mutates_args=())
def attention_backward_op(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor) -> Tensor:
    """Gradient of qkv, (N, T, 3, H, Dh)."""
    return attention_backward(dout, qkv, out, lse)


@attention_backward_op.register_fake
def _(dout, qkv, out, lse):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


attention.register_autograd(
    AttentionFunction.backward, setup_context=AttentionFunction.setup_context
)

# ------------------------------------------------------------------------- masked patch embed


@torch.library.custom_op("mimir_fast::masked_patch_embed", mutates_args=())
def masked_patch_embed(
    x: Tensor, ids_keep: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor
) -> tuple[Tensor, Tensor]:
    """(tokens (N, K, D), gathered patches (N, K, C*p*p)); see the kernel module."""
    return masked_patch_embed_forward(x, ids_keep, weight, bias, pos)


@masked_patch_embed.register_fake
def _(x, ids_keep, weight, bias, pos):
    n, k = ids_keep.shape
    d, c, p, _ = weight.shape
    dtype = torch.promote_types(weight.dtype, pos.dtype)
    if bias is not None:
        dtype = torch.promote_types(dtype, bias.dtype)
    return x.new_empty((n, k, d), dtype=dtype), x.new_empty((n, k, c * p * p), dtype=weight.dtype)


@torch.library.custom_op("mimir_fast::masked_patch_embed_backward", mutates_args=())
def masked_patch_embed_backward_op(
    dout: Tensor,
    x: Tensor,
    ids_keep: Tensor,
    weight: Tensor,
    patches: Tensor,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
    need_pos: bool,
    num_patches: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(d_x, d_weight, d_bias fp32, d_pos fp32); an unneeded one is an empty tensor."""
    return tuple(
        masked_patch_embed_backward(
            dout,
            x,
            ids_keep,
            weight,
            patches,
            need_x,
            need_weight,
            need_bias,
            need_pos,
            num_patches,
        )
    )


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


masked_patch_embed.register_autograd(
    MaskedPatchEmbedFunction.backward, setup_context=MaskedPatchEmbedFunction.setup_context
)

# ---------------------------------------------------------------------------- decoder scatter


@torch.library.custom_op("mimir_fast::decoder_scatter", mutates_args=())
def decoder_scatter(x: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor) -> Tensor:
    """(N, 1 + L, D) decoder input tokens; see the kernel module."""
    return decoder_scatter_forward(x, ids_restore, mask_token, pos)


@decoder_scatter.register_fake
def _(x, ids_restore, mask_token, pos):
    n, _, d = x.shape
    dtype = torch.promote_types(torch.promote_types(x.dtype, mask_token.dtype), pos.dtype)
    return x.new_empty((n, ids_restore.shape[1] + 1, d), dtype=dtype)


@torch.library.custom_op("mimir_fast::decoder_scatter_backward", mutates_args=())
def decoder_scatter_backward_op(
    dout: Tensor, ids_restore: Tensor, num_kept: int, x_dtype: torch.dtype, need_pos: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(d_x (N, 1 + K, D), d_mask_token (D,) fp32, d_pos (1 + L, D) fp32 or empty)."""
    return tuple(decoder_scatter_backward(dout, ids_restore, num_kept, x_dtype, need_pos))


@decoder_scatter_backward_op.register_fake
def _(dout, ids_restore, num_kept, x_dtype, need_pos):
    n, t, d = dout.shape
    return (
        dout.new_empty((n, num_kept + 1, d), dtype=x_dtype),
        dout.new_empty((d,), dtype=torch.float32),
        dout.new_empty((t, d) if need_pos else (0,), dtype=torch.float32),
    )


decoder_scatter.register_autograd(
    DecoderScatterFunction.backward, setup_context=DecoderScatterFunction.setup_context
)

# ------------------------------------------------------------------------------ norm-pix loss


@torch.library.custom_op("mimir_fast::norm_pix_loss", mutates_args=())
def norm_pix_loss(
    image: Tensor, pred: Tensor, mask: Tensor | None, patch_size: int, norm_pix: bool
) -> Tensor:
    """Scalar fp32 loss; see the kernel module."""
    return norm_pix_loss_forward(image, pred, mask, patch_size, norm_pix)


@norm_pix_loss.register_fake
def _(image, pred, mask, patch_size, norm_pix):
    return pred.new_empty((), dtype=torch.float32)


@torch.library.custom_op("mimir_fast::norm_pix_loss_backward", mutates_args=())
def norm_pix_loss_backward_op(
    grad: Tensor,
    image: Tensor,
    pred: Tensor,
    mask: Tensor | None,
    patch_size: int,
    norm_pix: bool,
    need_image: bool,
) -> tuple[Tensor, Tensor]:
    """(d_pred (N, L, P), d_image (N, C, H, W) or empty)."""
    return tuple(norm_pix_loss_backward(grad, image, pred, mask, patch_size, norm_pix, need_image))


@norm_pix_loss_backward_op.register_fake
def _(grad, image, pred, mask, patch_size, norm_pix, need_image):
    return (pred.new_empty(pred.shape), image.new_empty(image.shape if need_image else (0,)))


norm_pix_loss.register_autograd(
    NormPixLossFunction.backward, setup_context=NormPixLossFunction.setup_context
)

__all__ = ["attention", "decoder_scatter", "masked_patch_embed", "norm_pix_loss"]
