"""Tests for mimir_fast.ops: patches, masking bookkeeping, the MAE loss and sin-cos embeddings.

Every op is compared against a formula written out here with explicit Python loops (in
float64 where it matters), never against another code path of the package.
"""

from __future__ import annotations

import math

import pytest
import torch
from mimir_fast import ops

# --------------------------------------------------------------------------- patchify


def loop_patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """Patch l = row*gw + col; inside a patch, flat index (i*p + j)*C + c."""
    n, c, h, w = images.shape
    gh, gw = h // p, w // p
    out = torch.empty(n, gh * gw, p * p * c, dtype=images.dtype)
    for b in range(n):
        for row in range(gh):
            for col in range(gw):
                for i in range(p):
                    for j in range(p):
                        for ch in range(c):
                            out[b, row * gw + col, (i * p + j) * c + ch] = images[
                                b, ch, row * p + i, col * p + j
                            ]
    return out


PATCH_CASES = [
    # (channels, height, width, patch)
    pytest.param(1, 4, 4, 2, id="C1-4x4-p2"),
    pytest.param(3, 6, 6, 3, id="C3-6x6-p3"),
    pytest.param(5, 8, 8, 4, id="C5-8x8-p4"),
    pytest.param(3, 6, 6, 1, id="C3-6x6-p1"),
    pytest.param(5, 6, 6, 6, id="C5-6x6-single-patch"),
    pytest.param(3, 4, 8, 2, id="C3-4x8-nonsquare"),
]


@pytest.mark.parametrize("c,h,w,p", PATCH_CASES)
def test_patchify_matches_loop_formula(c, h, w, p):
    g = torch.Generator().manual_seed(10 * c + h + p)
    images = torch.randn(3, c, h, w, generator=g)
    got = ops.patchify(images, p)
    assert got.shape == (3, (h // p) * (w // p), p * p * c)
    torch.testing.assert_close(got, loop_patchify(images, p), rtol=0, atol=0)


@pytest.mark.parametrize("c,h,w,p", PATCH_CASES)
def test_unpatchify_inverts_patchify_exactly(c, h, w, p):
    g = torch.Generator().manual_seed(7 * c + w + p)
    images = torch.randn(3, c, h, w, generator=g)
    patches = ops.patchify(images, p)
    back = ops.unpatchify(patches, p, c, (h // p, w // p))
    assert back.shape == images.shape
    assert torch.equal(back, images)
    # and the other direction: arbitrary patches -> image -> the same patches
    patches2 = torch.randn(patches.shape, generator=g)
    assert torch.equal(ops.patchify(ops.unpatchify(patches2, p, c, (h // p, w // p)), p), patches2)


# --------------------------------------------------------------------------- random_masking

MASK_CASES = [
    pytest.param(16, 0.0, id="L16-r0"),
    pytest.param(16, 0.5, id="L16-r0.5"),
    pytest.param(16, 0.75, id="L16-r0.75"),
    pytest.param(49, 0.75, id="L49-r0.75"),
    pytest.param(49, 0.9, id="L49-r0.9"),
    pytest.param(11, 0.5, id="L11-r0.5"),
    pytest.param(64, 0.9, id="L64-r0.9"),
]


def _check_masking_invariants(ids_keep, mask, ids_restore, n, length, ratio):
    len_keep = int(length * (1 - ratio))
    assert ids_keep.shape == (n, len_keep)
    assert ids_keep.dtype == torch.int64
    assert mask.shape == (n, length)
    assert ids_restore.shape == (n, length)
    for b in range(n):
        kept = ids_keep[b].tolist()
        assert len(set(kept)) == len_keep, "ids_keep repeats an index"
        assert all(0 <= k < length for k in kept)
        # mask is 1 exactly at removed patches
        expected_mask = [0.0 if i in set(kept) else 1.0 for i in range(length)]
        assert mask[b].tolist() == expected_mask
        assert mask[b].sum().item() == length - len_keep
        # ids_restore is a permutation ...
        assert sorted(ids_restore[b].tolist()) == list(range(length))
        # ... that puts every kept patch i (at shuffled position s) back: restore[i] == s
        for s, k in enumerate(kept):
            assert ids_restore[b, k].item() == s


@pytest.mark.parametrize("length,ratio", MASK_CASES)
def test_random_masking_given_noise_keeps_smallest(length, ratio):
    n = 3
    g = torch.Generator().manual_seed(length + int(100 * ratio))
    noise = torch.rand(n, length, generator=g)
    ids_keep, mask, ids_restore = ops.random_masking(n, length, ratio, noise=noise)
    _check_masking_invariants(ids_keep, mask, ids_restore, n, length, ratio)
    len_keep = int(length * (1 - ratio))
    for b in range(n):
        values = noise[b].tolist()
        order = sorted(range(length), key=lambda i: values[i])  # ids_shuffle, by hand
        assert ids_keep[b].tolist() == order[:len_keep]
        # gathering the shuffle with ids_restore gives back arange
        restore = ids_restore[b].tolist()
        assert [order[restore[i]] for i in range(length)] == list(range(length))


@pytest.mark.parametrize("length,ratio", MASK_CASES)
def test_random_masking_without_noise(length, ratio):
    torch.manual_seed(length)
    ids_keep, mask, ids_restore = ops.random_masking(3, length, ratio)
    _check_masking_invariants(ids_keep, mask, ids_restore, 3, length, ratio)


def test_random_masking_differs_between_samples_and_calls():
    torch.manual_seed(0)
    a, _, _ = ops.random_masking(4, 64, 0.75)
    b, _, _ = ops.random_masking(4, 64, 0.75)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


# --------------------------------------------------------------------------- ids_from_keep

KEEP_CASES = [
    pytest.param(16, 4, id="L16-keep4"),
    pytest.param(16, 1, id="L16-keep1"),
    pytest.param(16, 16, id="L16-keep-all"),
    pytest.param(25, 13, id="L25-keep13"),
    pytest.param(9, 8, id="L9-keep8"),
]


@pytest.mark.parametrize("length,len_keep", KEEP_CASES)
def test_ids_from_keep(length, len_keep):
    n = 3
    g = torch.Generator().manual_seed(length * 31 + len_keep)
    ids_keep = torch.stack([torch.randperm(length, generator=g)[:len_keep] for _ in range(n)])
    mask, ids_restore = ops.ids_from_keep(ids_keep, length)
    assert mask.shape == (n, length) and ids_restore.shape == (n, length)
    assert ids_restore.dtype == torch.int64
    for b in range(n):
        kept = ids_keep[b].tolist()
        assert mask[b].tolist() == [0.0 if i in kept else 1.0 for i in range(length)]
        assert sorted(ids_restore[b].tolist()) == list(range(length))
        removed = [i for i in range(length) if i not in kept]  # ascending
        shuffle = kept + removed
        restore = ids_restore[b].tolist()
        assert [shuffle[restore[i]] for i in range(length)] == list(range(length))


def test_ids_from_keep_agrees_with_random_masking_on_kept_part():
    # Same kept indices -> same mask and same positions of the kept patches after restore.
    torch.manual_seed(3)
    ids_keep, mask, ids_restore = ops.random_masking(3, 20, 0.6)
    mask2, ids_restore2 = ops.ids_from_keep(ids_keep, 20)
    assert torch.equal(mask, mask2)
    kept_pos = torch.gather(ids_restore, 1, ids_keep)
    assert torch.equal(kept_pos, torch.gather(ids_restore2, 1, ids_keep))
    assert kept_pos.tolist() == [list(range(8))] * 3


# --------------------------------------------------------------------------- masked_mse_loss


def loop_loss(pred, target, mask, norm_pix):
    """Per-patch mean squared error averaged over patches with mask 1 (all if mask is None),
    float64."""
    n, length, p = pred.shape
    total, count = 0.0, 0.0
    for b in range(n):
        for l_ in range(length):
            t = [float(v) for v in target[b, l_]]
            if norm_pix:
                mean = sum(t) / p
                var = sum((v - mean) ** 2 for v in t) / (p - 1)  # unbiased
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
            err = sum((float(pred[b, l_, k]) - t[k]) ** 2 for k in range(p)) / p
            w = 1.0 if mask is None else float(mask[b, l_])
            total += w * err
            count += w
    return total / count


LOSS_CASES = [
    pytest.param(3, 5, 7, False, id="N3-L5-P7-raw"),
    pytest.param(3, 5, 7, True, id="N3-L5-P7-normpix"),
    pytest.param(2, 9, 12, True, id="N2-L9-P12-normpix"),
    pytest.param(1, 4, 3, False, id="N1-L4-P3-raw"),
]


@pytest.mark.parametrize("n,length,p,norm_pix", LOSS_CASES)
@pytest.mark.parametrize("mask_kind", ["float", "bool", "none"])
def test_masked_mse_loss_matches_loop(n, length, p, norm_pix, mask_kind):
    g = torch.Generator().manual_seed(n * 100 + length * 10 + p)
    pred = torch.randn(n, length, p, generator=g)
    target = 2.0 * torch.randn(n, length, p, generator=g) + 0.5
    mask = (torch.rand(n, length, generator=g) < 0.6).float()
    mask[:, 0] = 1.0  # at least one counted patch per row
    mask[:, -1] = 0.0  # at least one ignored one
    arg = {"float": mask, "bool": mask.bool(), "none": None}[mask_kind]
    got = ops.masked_mse_loss(pred, target, arg, norm_pix=norm_pix)
    want = loop_loss(pred.double(), target.double(), None if arg is None else mask, norm_pix)
    assert got.ndim == 0
    assert got.item() == pytest.approx(want, rel=2e-5)


@pytest.mark.parametrize("norm_pix", [False, True], ids=["raw", "normpix"])
def test_masked_mse_loss_ignores_unmasked_patches(norm_pix):
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(3, 6, 5, generator=g)
    target = torch.randn(3, 6, 5, generator=g)
    mask = torch.tensor(
        [[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0]], dtype=torch.float32
    )
    base = ops.masked_mse_loss(pred, target, mask, norm_pix=norm_pix)
    changed = pred.clone()
    changed[mask == 0] += 10.0 * torch.randn(int((mask == 0).sum()), 5, generator=g)
    assert ops.masked_mse_loss(changed, target, mask, norm_pix=norm_pix).item() == base.item()
    # but a change on a masked patch does change it
    changed2 = pred.clone()
    changed2[0, 0] += 1.0
    assert ops.masked_mse_loss(changed2, target, mask, norm_pix=norm_pix).item() != pytest.approx(
        base.item()
    )


def test_masked_mse_loss_mask_none_is_mean_over_all_patches():
    g = torch.Generator().manual_seed(6)
    pred = torch.randn(3, 4, 5, generator=g)
    target = torch.randn(3, 4, 5, generator=g)
    ones = torch.ones(3, 4)
    got = ops.masked_mse_loss(pred, target, None)
    assert got.item() == pytest.approx(ops.masked_mse_loss(pred, target, ones).item(), rel=1e-6)
    assert got.item() == pytest.approx(
        loop_loss(pred.double(), target.double(), None, False), rel=1e-5
    )


def test_masked_mse_loss_all_visible_is_zero_not_nan():
    pred = torch.randn(2, 3, 4)
    target = torch.randn(2, 3, 4)
    loss = ops.masked_mse_loss(pred, target, torch.zeros(2, 3))
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_masked_mse_loss_computes_in_fp32_for_half_inputs():
    g = torch.Generator().manual_seed(8)
    pred = torch.randn(3, 5, 6, generator=g).to(torch.bfloat16)
    target = torch.randn(3, 5, 6, generator=g).to(torch.bfloat16)
    mask = torch.ones(3, 5)
    loss = ops.masked_mse_loss(pred, target, mask, norm_pix=True)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(
        loop_loss(pred.double(), target.double(), mask, True), rel=1e-4
    )


def test_normalize_patches_uses_unbiased_variance():
    g = torch.Generator().manual_seed(9)
    t = 3.0 * torch.randn(3, 4, 7, generator=g, dtype=torch.float64) + 1.0
    got = ops.normalize_patches(t)
    for b in range(3):
        for l_ in range(4):
            vals = t[b, l_].tolist()
            mean = sum(vals) / 7
            var = sum((v - mean) ** 2 for v in vals) / 6
            want = [(v - mean) / math.sqrt(var + 1e-6) for v in vals]
            assert got[b, l_].tolist() == pytest.approx(want, rel=1e-10, abs=1e-12)


# --------------------------------------------------------------------------- sincos_pos_embed_2d


def loop_sincos(dim, rows, cols, cls_token=True):
    q = dim // 4
    out = [[0.0] * dim] if cls_token else []
    for r in range(rows):
        for c in range(cols):
            v = [0.0] * dim
            for k in range(q):
                w = 10000.0 ** (-k / q)
                v[k] = math.sin(c * w)
                v[q + k] = math.cos(c * w)
                v[2 * q + k] = math.sin(r * w)
                v[3 * q + k] = math.cos(r * w)
            out.append(v)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(
    "dim,rows,cols",
    [
        pytest.param(8, 2, 2, id="d8-2x2"),
        pytest.param(16, 4, 4, id="d16-4x4"),
        pytest.param(36, 3, 5, id="d36-3x5-nonsquare"),
        pytest.param(12, 5, 3, id="d12-5x3-nonsquare"),
        pytest.param(64, 7, 7, id="d64-7x7"),
        pytest.param(4, 1, 6, id="d4-1x6"),
    ],
)
def test_sincos_pos_embed_matches_formula(dim, rows, cols):
    got = ops.sincos_pos_embed_2d(dim, (rows, cols))
    assert got.shape == (1 + rows * cols, dim)
    assert got.dtype == torch.float32
    want = loop_sincos(dim, rows, cols)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    assert torch.all(got[0] == 0)
    no_cls = ops.sincos_pos_embed_2d(dim, (rows, cols), cls_token=False)
    assert no_cls.shape == (rows * cols, dim)
    torch.testing.assert_close(no_cls.double(), want[1:], rtol=0, atol=1e-6)


def test_sincos_pos_embed_rows_and_cols_are_distinguished():
    # In a 2x3 grid, patch (r=0, c=1) and (r=1, c=0) must get different embeddings in the
    # right halves: column info in the first half, row info in the second.
    emb = ops.sincos_pos_embed_2d(8, (2, 3))
    r0c1, r1c0 = emb[1 + 0 * 3 + 1], emb[1 + 1 * 3 + 0]
    assert r0c1[0].item() == pytest.approx(math.sin(1.0))  # sin(col * w_0)
    assert r0c1[4].item() == pytest.approx(0.0)  # sin(row * w_0) with row 0
    assert r1c0[0].item() == pytest.approx(0.0)
    assert r1c0[4].item() == pytest.approx(math.sin(1.0))


@pytest.mark.parametrize("dim", [6, 10, 2, 30])
def test_sincos_pos_embed_rejects_width_not_divisible_by_4(dim):
    with pytest.raises(ValueError, match="divisible by 4"):
        ops.sincos_pos_embed_2d(dim, (2, 2))
