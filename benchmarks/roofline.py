"""Bytes each fused kernel and its PyTorch reference move through device memory, from the shapes.

The roofline column of the GPU results: a kernel benchmark records both counts in its
``extra_info`` (``kernel_bytes``, ``reference_bytes``); ``run_gpu_suite.py`` divides each
provider's count by its median time and by the device's peak memory bandwidth
(:func:`peak_bandwidth`), giving the fraction of the bandwidth reached.

How bytes are counted (forward + backward, as the benchmarks time them):

- Every tensor an op reads or writes counts once for that op: a tile read again from L2 or
  shared memory does not count again, so the counts are lower bounds of DRAM traffic.
- Fused path: the tensors each Triton kernel reads and writes, plus the cuBLAS matmuls and the
  small PyTorch ops the launcher calls.
- Reference: each PyTorch op of the benchmark's "torch" provider reads its inputs and writes its
  output, intermediates included; views (slice, expand, permute, transpose) move nothing.
- The upstream gradient is read, not created (the benchmark's ``ones_like`` is not the op's).
  Tensors whose size does not grow with the batch (bias, position rows, scalars) are left out,
  except a matmul's weight.
"""

from __future__ import annotations

__all__ = [
    "PEAK_BANDWIDTH",
    "attention_bytes",
    "bandwidth_fraction",
    "decoder_scatter_bytes",
    "gaussian_gram_bytes",
    "hsic_bytes",
    "masked_patch_embed_bytes",
    "norm_pix_loss_bytes",
    "peak_bandwidth",
    "pgd_step_bytes",
]

F32, I64 = 4, 8

# Peak memory bandwidth in bytes/s by device-name substring, most specific first (vendor data).
PEAK_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),  # SXM
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40 GB
    ("L40S", 0.864e12),
    ("A10G", 0.6e12),
    ("4090", 1.008e12),
)


def peak_bandwidth(device_name: str) -> float | None:
    """Peak memory bandwidth (bytes/s) of a device named like ``torch.cuda.get_device_name``;
    None when the device is not in :data:`PEAK_BANDWIDTH`."""
    return next((bw for key, bw in PEAK_BANDWIDTH if key in device_name), None)


def bandwidth_fraction(num_bytes: float, seconds: float, device_name: str) -> float | None:
    """``num_bytes / seconds`` as a fraction of the device's peak; None for an unknown device."""
    peak = peak_bandwidth(device_name)
    if peak is None or seconds <= 0:
        return None
    return num_bytes / seconds / peak


def _counts(kernel: float, reference: float) -> dict[str, int]:
    return {"kernel_bytes": int(kernel), "reference_bytes": int(reference)}


def masked_patch_embed_bytes(
    n: int, chans: int, img: int, patch: int, dim: int, keep: int, size: int = 2
) -> dict[str, int]:
    """Patch embedding of the kept patches, forward + backward, under autocast.

    Args:
        n, chans, img: the fp32 images (N, C, H=W). patch: p. dim: D. keep: K kept patches of
            L = (H / p)^2. size: bytes per element of the autocast dtype (bf16: 2).

    Kernel: gather the kept pixels (read N K P fp32, write patches N K P), matmul with the
    weight (cast once), epilogue adding bias and the gathered position rows (read y, write the
    fp32 tokens). Backward: two casts of the gradient, ``d_patches`` and ``d_weight`` matmuls,
    the pixel scatter (reads ``d_patches`` and the (N, L) slot map, writes the whole image
    gradient once), the bias sum. Reference: image cast, convolution over all L patches,
    position add (fp32), gather; backward: gather scatter into zeros, cast, the convolution's
    input and weight gradients, the image gradient cast.
    """
    s, length = size, (img // patch) ** 2
    p_dim = chans * patch * patch
    kept_px, all_px = n * keep * p_dim, n * length * p_dim
    kept_tok, all_tok, weight = n * keep * dim, n * length * dim, dim * p_dim
    fwd = kept_px * (F32 + s) + weight * (F32 + s) + kept_px * s + weight * s + kept_tok * s
    fwd += kept_tok * (s + 2 * F32)  # epilogue: y, pos rows in, tokens out
    bwd = 2 * kept_tok * (F32 + s)  # the gradient cast twice
    bwd += kept_tok * s + weight * s + kept_px * s  # d_patches = g @ W
    bwd += kept_px * s + 2 * n * length * I64 + all_px * F32  # slot map, pixel scatter
    bwd += kept_tok * s + kept_px * s + weight * s + weight * (s + F32) + kept_tok * F32
    ref = all_px * (F32 + s) + weight * (F32 + s)  # casts
    ref += all_px * s + weight * s + all_tok * s  # convolution
    ref += all_tok * (s + F32) + kept_tok * 2 * F32  # + pos (fp32), gather
    ref_bwd = all_tok * F32 + kept_tok * 2 * F32  # zeros, scatter of the gathered rows
    ref_bwd += all_tok * (F32 + s)  # cast to the convolution's dtype
    ref_bwd += all_tok * s + weight * s + all_px * s + all_px * (s + F32)  # input grad, cast
    ref_bwd += all_tok * s + all_px * s + weight * (2 * s + F32) + all_tok * s  # weight, bias
    return _counts(fwd + bwd, ref + ref_bwd)


def decoder_scatter_bytes(
    n: int, keep: int, length: int, dim: int, size: int = 2
) -> dict[str, int]:
    """Decoder input assembly (unshuffle, mask tokens, position add), forward + backward.

    Args:
        n: batch. keep: K kept tokens. length: L patches. dim: Dd. size: bytes per element of
            the input (N, 1 + K, Dd) (bf16: 2); the output is fp32 (promoted by the position).

    Kernel: read the input rows and ``ids_restore``, write the (N, 1 + L, Dd) output once;
    backward: read the output gradient and the indices, write the input gradient once.
    Reference: cat (promotes to fp32), gather, cat, position add; backward: the gather's
    scatter into zeros, the cast back and the two slice gradients, summed.
    """
    s, ids = size, n * length * I64
    x, x_kept = n * (1 + keep) * dim, n * keep * dim
    patches, out = n * length * dim, n * (1 + length) * dim
    kernel = x * s + ids + out * F32 + out * F32 + ids + x * s
    ref = x_kept * s + patches * F32  # cat
    ref += patches * 2 * F32 + ids  # gather
    ref += n * dim * s + patches * F32 + out * F32  # cat with the class token
    ref += 2 * out * F32  # + pos
    ref_bwd = patches * F32 + patches * 2 * F32 + ids  # zeros, scatter_add
    ref_bwd += (x_kept + n * dim) * (F32 + s)  # casts of both slices
    ref_bwd += 2 * x * s + (x_kept + n * dim) * 2 * s  # slice gradients: zeros + copy
    ref_bwd += 3 * x * s + (patches - x_kept) * F32  # sum of both, mask-token gradient
    return _counts(kernel, ref + ref_bwd)


def attention_bytes(n: int, t: int, heads: int, head_dim: int, size: int = 2) -> dict[str, int]:
    """Softmax attention on the fused (N, T, 3, H, Dh) layout, forward + backward.

    Args:
        n, t, heads, head_dim: the QKV shape. size: bytes per element (bf16: 2).

    Kernel: forward reads q, k, v and writes the output and the fp32 log-sum-exp; the dQ
    kernel reads q, k, v, o, dO and the log-sum-exp, writes dQ and delta; the dK/dV kernel
    reads q, k, v, dO, log-sum-exp and delta, writes dK and dV. Reference: SDPA's forward
    (the same reads and writes), the transpose back to (N, T, H * Dh) (a copy), SDPA's
    backward (q, k, v, o, dO in; dQ, dK, dV out) and the stack of the three gradients into
    the fused layout (a copy).
    """
    one = n * t * heads * head_dim * size  # q, k, v, o or one of their gradients
    lse = n * heads * t * F32
    kernel = 3 * one + one + lse  # forward
    kernel += 5 * one + lse + one + lse  # dQ kernel
    kernel += 4 * one + 2 * lse + 2 * one  # dK/dV kernel
    ref = 3 * one + one + lse + 2 * one  # SDPA forward, transpose copy
    ref += 5 * one + lse + 3 * one + lse  # SDPA backward
    ref += 6 * one  # gradients stacked into the fused layout
    return _counts(kernel, ref)


def norm_pix_loss_bytes(n: int, length: int, patch_dim: int, size: int = 2) -> dict[str, int]:
    """MAE's normalised-pixel masked MSE, forward + backward (gradient of the prediction).

    Args:
        n, length, patch_dim: the prediction (N, L, P); the image holds N * L * P fp32 pixels.
        size: bytes per element of the prediction (bf16: 2).

    Kernel: forward and backward each read the image, the prediction and the mask; the forward
    writes one fp32 loss per patch, the backward the prediction's gradient. Reference:
    patchify (a copy), the prediction's fp32 cast, mean, variance, centring, scaling,
    difference, square, per-patch mean; backward: the square's gradient and the cast back.
    """
    q, patches = n * length * patch_dim, n * length
    kernel = 2 * (q * F32 + q * size + patches * F32) + patches * F32 + q * size
    ref = 2 * q * F32 + q * (size + F32)  # patchify, cast
    ref += 2 * q * F32 + 4 * q * F32  # mean, var, centring, scaling
    ref += 3 * q * F32 + 2 * q * F32 + q * F32  # difference, square, mean
    ref_bwd = 2 * q * F32 + q * (F32 + size)
    return _counts(kernel, ref + ref_bwd)


def gaussian_gram_bytes(m: int, d: int, grad: bool) -> dict[str, int]:
    """One Gaussian Gram matrix of (m, d) fp32 rows; its backward when ``grad``.

    Kernel: read the rows once, write the (m, m) matrix; backward: the two cuBLAS products
    read the rows and an (m, m) matrix and write the row gradient. Reference: square, row sums
    and the ``a @ a.T`` product each read the rows (the square also writes them); about six
    elementwise (m, m) passes; backward: the matmul's two gradient products, the square's
    gradient and the sum of the four contributions.
    """
    rows, gram = m * d * F32, m * m * F32
    kernel = rows + gram + (2 * (rows + gram) + rows + 2 * gram if grad else 0)
    ref = 2 * rows + rows + rows + gram + 12 * gram
    if grad:
        ref += 12 * gram + 2 * (gram + 2 * rows) + 2 * (2 * rows) + 3 * (3 * rows)
    return _counts(kernel, ref)


def hsic_bytes(m: int, x_dim: int, z_dim: int) -> dict[str, int]:
    """MIMIR's HSIC benchmark: the Gram matrix of the images (no gradient) and of the latent
    (with gradient). The (m, m) algebra after them, the same on both paths, is not counted."""
    x, z = gaussian_gram_bytes(m, x_dim, False), gaussian_gram_bytes(m, z_dim, True)
    return {key: x[key] + z[key] for key in x}


def pgd_step_bytes(numel: int, norm: str, size: int = 4) -> dict[str, int]:
    """One projected-gradient step on ``numel`` elements of x_adv, grad and x0 (no autograd).

    Kernel: L-inf reads the three inputs once and writes the result; L2 adds a first pass that
    reads them for the per-sample sums. Reference (:func:`pgd_step_reference`): L-inf is eight
    elementwise ops (11 reads, 8 writes); L2 two norms and seven elementwise ops (12 reads, 7
    writes).
    """
    x = numel * size
    if norm == "linf":
        return _counts(4 * x, 19 * x)
    return _counts(7 * x, 19 * x)
