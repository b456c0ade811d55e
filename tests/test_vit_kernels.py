"""MaskedViT's fused Triton kernels against their PyTorch references: outputs and every gradient.

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before any kernel is
defined: Triton reads it when a kernel is decorated) at tiny odd shapes; on a GPU the
``requires_cuda`` cases run the real shapes in bf16 too.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mimir_fast import MaskedViT, MaskedViTConfig
from mimir_fast.kernels.attention import AttentionFunction, attention_op, attention_triton
from mimir_fast.kernels.decoder_scatter import (
    DecoderScatterFunction,
    decoder_scatter_op,
    decoder_scatter_triton,
)
from mimir_fast.kernels.masked_patch_embed import (
    MaskedPatchEmbedFunction,
    masked_patch_embed_op,
    masked_patch_embed_triton,
)
from mimir_fast.kernels.norm_pix_loss import (
    NormPixLossFunction,
    norm_pix_loss_op,
    norm_pix_loss_triton,
)
from mimir_fast.ops import random_masking
from mimir_fast.ops.attention import attention_reference as attention
from mimir_fast.ops.decoder_scatter import decoder_scatter_reference as decoder_scatter
from mimir_fast.ops.masked_patch_embed import masked_patch_embed_reference as masked_patch_embed
from mimir_fast.ops.norm_pix_loss import norm_pix_loss_reference as image_mse_loss

pytestmark = pytest.mark.interpreter
DEV = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_kernel_env(monkeypatch):
    monkeypatch.delenv("MIMIR_FAST_KERNELS", raising=False)


def _rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _leaf(*shape, gen, scale=1.0, shift=0.0, dtype=torch.float32, device=DEV):
    return (
        (torch.randn(*shape, generator=gen) * scale + shift)
        .to(device=device, dtype=dtype)
        .requires_grad_(True)
    )


def _ids_keep(n, length, k, gen, device=DEV):
    return torch.stack([torch.randperm(length, generator=gen)[:k] for _ in range(n)]).to(device)


def _check_grads(fast_out, ref_out, fast_in, ref_in, names, tol_out, tol_grad, gen):
    assert fast_out.shape == ref_out.shape and fast_out.dtype == ref_out.dtype
    assert _rel(fast_out, ref_out) < tol_out
    upstream = torch.randn(ref_out.shape, generator=gen).to(ref_out.device)
    g_fast = torch.autograd.grad((fast_out.float() * upstream).sum(), fast_in)
    g_ref = torch.autograd.grad((ref_out.float() * upstream).sum(), ref_in)
    for name, a, b in zip(names, g_fast, g_ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert _rel(a, b) < tol_grad, (name, _rel(a, b))


# ------------------------------------------------------------------------------- attention


@pytest.mark.parametrize(
    "n,t,h,dh",
    [(3, 7, 2, 16), (3, 13, 3, 24), (2, 11, 1, 32), (3, 9, 4, 8)],
    ids=["b3-t7-h2-d16", "b3-t13-h3-d24", "b2-t11-h1-d32", "b3-t9-h4-d8"],
)
def test_attention_matches_reference_fp32(n, t, h, dh):
    gen = _gen(n * t * h + dh)
    qkv = _leaf(n, t, 3, h, dh, gen=gen, scale=1.5)
    ref_in = qkv.detach().clone().requires_grad_(True)
    _check_grads(
        attention_triton(qkv), attention(ref_in), (qkv,), (ref_in,), ["qkv"], 1e-5, 1e-4, gen
    )


def test_attention_spans_several_key_blocks():
    # T = 150: several steps of the online softmax, and partial last blocks of queries and keys.
    gen = _gen(5)
    qkv = _leaf(1, 150, 3, 1, 16, gen=gen, scale=2.0)
    ref_in = qkv.detach().clone().requires_grad_(True)
    _check_grads(
        attention_triton(qkv), attention(ref_in), (qkv,), (ref_in,), ["qkv"], 1e-5, 1e-4, gen
    )


def test_attention_fp32_small_blocks_many_steps():
    # fp32 runs 16-query blocks over 32-key steps: T = 70 is 5 query blocks and 3 key steps,
    # both with a partial last block, at the presets' head dim.
    gen = _gen(7)
    qkv = _leaf(2, 70, 3, 2, 64, gen=gen, scale=1.5)
    ref_in = qkv.detach().clone().requires_grad_(True)
    _check_grads(
        attention_triton(qkv), attention(ref_in), (qkv,), (ref_in,), ["qkv"], 1e-5, 1e-4, gen
    )


def test_attention_config_one_unpipelined_step_when_the_keys_fit():
    from mimir_fast.kernels.attention import attention_config

    for dtype in (torch.float32, torch.bfloat16):
        for kernel in ("fwd", "bwd_dq"):
            one = attention_config(kernel, 17, 64, dtype, 90)  # ViT patch4: 16 kept + cls
            assert one.num_stages == 1 and one.constexprs["BLOCK_N"] >= 17
            many = attention_config(kernel, 197, 64, dtype, 90)
            assert many.num_stages == 2 and many.constexprs["BLOCK_N"] < 197
    assert attention_config("fwd", 197, 64, torch.float32, 80).constexprs["PRECISION"] == "tf32x3"


def test_attention_head_dim_below_16_runs_sdpa(monkeypatch):
    # MIMIR's decoder (head dim 8) runs SDPA under every kernels= choice; head dim 16 the kernel.
    import mimir_fast.kernels.attention as kernel_module
    from mimir_fast.ops.attention import MIN_KERNEL_HEAD_DIM
    from mimir_fast.ops.attention import attention as dispatched

    calls = []
    real = kernel_module.attention_triton
    monkeypatch.setattr(
        kernel_module, "attention_triton", lambda qkv: calls.append(qkv.shape[-1]) or real(qkv)
    )
    gen = _gen(13)
    for dh in (8, 16):
        qkv = torch.randn(2, 5, 3, 2, dh, generator=gen).to(DEV)
        assert _rel(dispatched(qkv, kernels="triton"), attention(qkv)) < 1e-5
    assert calls == [16] and MIN_KERNEL_HEAD_DIM == 16


def test_attention_reads_a_view_of_the_qkv_linear():
    gen = _gen(6)
    x = _leaf(3, 7, 32, gen=gen)
    lin = torch.nn.Linear(32, 96).to(DEV)
    out = attention_triton(lin(x).reshape(3, 7, 3, 2, 16))
    ref = attention(lin(x).reshape(3, 7, 3, 2, 16))
    assert _rel(out, ref) < 1e-5


# ----------------------------------------------------------------------- masked patch embed


@pytest.mark.parametrize(
    "c,img,p,k,bias",
    [(3, 12, 4, 4, True), (5, 12, 4, 9, False), (3, 10, 2, 7, True)],
    ids=["c3-img12-p4-keep4", "c5-keepall-nobias", "c3-img10-p2-keep7"],
)
def test_masked_patch_embed_matches_reference_fp32(c, img, p, k, bias):
    gen = _gen(c * img + k)
    n, d, length = 3, 20, (img // p) ** 2
    x = _leaf(n, c, img, img, gen=gen, scale=0.3, shift=0.5)
    w = _leaf(d, c, p, p, gen=gen, scale=0.2)
    b = _leaf(d, gen=gen) if bias else None
    pos = _leaf(length, d, gen=gen)
    ids = _ids_keep(n, length, k, gen)
    fast_in = [t for t in (x, w, b, pos) if t is not None]
    ref_in = [t.detach().clone().requires_grad_(True) for t in fast_in]
    rx, rw, *rest = ref_in
    rb, rpos = (rest[0], rest[1]) if bias else (None, rest[0])
    names = ["x", "weight"] + (["bias"] if bias else []) + ["pos"]
    _check_grads(
        masked_patch_embed_triton(x, ids, w, b, pos),
        masked_patch_embed(rx, ids, rw, rb, rpos),
        fast_in,
        ref_in,
        names,
        1e-5,
        1e-5,
        gen,
    )


def test_masked_patch_embed_image_gradient_is_zero_on_removed_patches():
    gen = _gen(8)
    x = _leaf(3, 3, 12, 12, gen=gen)
    w, pos = _leaf(16, 3, 4, 4, gen=gen), _leaf(9, 16, gen=gen)
    ids = torch.tensor([[0, 4], [8, 1], [3, 2]], device=DEV)
    out = masked_patch_embed_triton(x, ids, w, None, pos)
    (gx,) = torch.autograd.grad(out.sum(), x)
    per_patch = gx.abs().reshape(3, 3, 3, 4, 3, 4).sum((1, 3, 5)).reshape(3, 9)  # (N, L)
    kept = torch.zeros(3, 9, dtype=torch.bool, device=DEV).scatter_(1, ids, True)
    assert (per_patch[~kept] == 0).all() and (per_patch[kept] > 0).all()


# -------------------------------------------------------------------------- decoder scatter


@pytest.mark.parametrize(
    "length,k,d", [(9, 3, 16), (13, 5, 24), (7, 7, 8)], ids=["L9-K3-d16", "L13-K5-d24", "keepall"]
)
def test_decoder_scatter_matches_reference_fp32(length, k, d):
    gen = _gen(length * k + d)
    n = 3
    _, _, ids_restore = random_masking(
        n, length, 1 - k / length, DEV, torch.rand(n, length, generator=gen).to(DEV)
    )
    x = _leaf(n, 1 + k, d, gen=gen)
    tok = _leaf(1, 1, d, gen=gen)
    pos = _leaf(1, 1 + length, d, gen=gen)
    ref_in = [t.detach().clone().requires_grad_(True) for t in (x, tok, pos)]
    _check_grads(
        decoder_scatter_triton(x, ids_restore, tok, pos),
        decoder_scatter(ref_in[0], ids_restore, *ref_in[1:]),
        (x, tok, pos),
        ref_in,
        ["x", "mask_token", "pos"],
        1e-6,
        1e-5,
        gen,
    )


# ---------------------------------------------------------------------------- norm-pix loss


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw"])
@pytest.mark.parametrize(
    "c,img,p,masked",
    [(3, 12, 4, True), (5, 12, 4, False), (3, 10, 2, True)],
    ids=["c3-p4-mask", "c5-p4-nomask", "c3-p2-mask"],
)
def test_norm_pix_loss_matches_reference_fp32(norm_pix, c, img, p, masked):
    gen = _gen(c * img + p + masked)
    n, length = 3, (img // p) ** 2
    image = _leaf(n, c, img, img, gen=gen, scale=0.3, shift=0.5)
    pred = _leaf(n, length, p * p * c, gen=gen)
    mask = (torch.rand(n, length, generator=gen) < 0.6).float().to(DEV) if masked else None
    ref_in = [t.detach().clone().requires_grad_(True) for t in (image, pred)]
    _check_grads(
        norm_pix_loss_triton(image, pred, mask, p, norm_pix),
        image_mse_loss(ref_in[0], ref_in[1], mask, p, norm_pix),
        (image, pred),
        ref_in,
        ["image", "pred"],
        1e-5,
        1e-4,
        gen,
    )


def test_norm_pix_loss_non_contiguous_pred_and_empty_mask():
    gen = _gen(3)
    image = torch.rand(3, 3, 12, 12, generator=gen).to(DEV)
    full = _leaf(3, 10, 48, gen=gen)
    pred = full[:, 1:, :]  # the decoder's slice: not contiguous
    mask = torch.zeros(3, 9, device=DEV)  # nothing masked: loss 0, gradient 0, no NaN
    loss = norm_pix_loss_triton(image, pred, mask, 4, True)
    (g,) = torch.autograd.grad(loss, full)
    assert loss.item() == 0.0 and torch.isfinite(g).all() and (g == 0).all()
    mask = (torch.rand(3, 9, generator=gen) < 0.5).float().to(DEV)
    assert (
        _rel(
            norm_pix_loss_triton(image, pred, mask, 4, True),
            image_mse_loss(image, pred, mask, 4, True),
        )
        < 1e-6
    )


def test_kernels_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="pred must be"):
        norm_pix_loss_triton(
            torch.rand(2, 3, 12, 12, device=DEV), torch.rand(2, 9, 47, device=DEV), None, 4
        )
    with pytest.raises(ValueError, match="qkv"):
        attention_triton(torch.rand(2, 5, 4, 2, 16, device=DEV))
    with pytest.raises(ValueError, match="pos"):
        decoder_scatter_triton(
            torch.rand(2, 3, 8, device=DEV),
            torch.zeros(2, 9, dtype=torch.int64, device=DEV),
            torch.rand(8, device=DEV),
            torch.rand(9, 8, device=DEV),
        )


# ------------------------------------------------------------------- autograd.Function / ops


def test_autograd_functions_equal_the_custom_ops():
    gen = _gen(11)
    qkv = torch.randn(3, 7, 3, 2, 16, generator=gen).to(DEV)
    assert torch.equal(AttentionFunction.apply(qkv)[0], attention_triton(qkv))
    x, w, pos = (
        torch.rand(3, 3, 12, 12).to(DEV),
        torch.randn(8, 3, 4, 4).to(DEV),
        torch.randn(9, 8).to(DEV),
    )
    ids = _ids_keep(3, 9, 4, gen)
    assert torch.equal(
        MaskedPatchEmbedFunction.apply(x, ids, w, None, pos)[0],
        masked_patch_embed_triton(x, ids, w, None, pos),
    )
    _, _, ids_restore = random_masking(3, 9, 0.6, DEV)
    lat, tok, dpos = (
        torch.randn(3, 4, 8).to(DEV),
        torch.randn(8).to(DEV),
        torch.randn(10, 8).to(DEV),
    )
    assert torch.equal(
        DecoderScatterFunction.apply(lat, ids_restore, tok, dpos),
        decoder_scatter_triton(lat, ids_restore, tok, dpos),
    )
    pred = torch.randn(3, 9, 48).to(DEV)
    assert torch.equal(
        NormPixLossFunction.apply(x, pred, None, 4, True),
        norm_pix_loss_triton(x, pred, None, 4, True),
    )


def _opcheck_cases():
    gen = _gen(12)
    ids = _ids_keep(3, 9, 4, gen)
    _, mask, ids_restore = random_masking(3, 9, 0.6, DEV)
    return {
        "attention": (attention_op, (_leaf(3, 7, 3, 2, 16, gen=gen),)),
        "masked_patch_embed": (
            masked_patch_embed_op,
            (
                _leaf(3, 3, 12, 12, gen=gen),
                ids,
                _leaf(8, 3, 4, 4, gen=gen),
                _leaf(8, gen=gen),
                _leaf(9, 8, gen=gen),
            ),
        ),
        "decoder_scatter": (
            decoder_scatter_op,
            (_leaf(3, 4, 8, gen=gen), ids_restore, _leaf(8, gen=gen), torch.randn(10, 8).to(DEV)),
        ),
        "norm_pix_loss": (
            norm_pix_loss_op,
            (torch.rand(3, 3, 12, 12).to(DEV), _leaf(3, 9, 48, gen=gen), mask, 4, True),
        ),
    }


@pytest.mark.parametrize(
    "name", ["attention", "masked_patch_embed", "decoder_scatter", "norm_pix_loss"]
)
def test_custom_op_registration(name):
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(
        op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
    )


# ------------------------------------------------------------------------ MaskedViT switch

TINY = {
    "img_size": 12,
    "patch_size": 4,
    "in_chans": 3,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 24,
    "decoder_depth": 1,
    "decoder_num_heads": 3,
    "num_classes": 5,
    "global_pool": "avg",
}


def _pair(**overrides):
    cfg = MaskedViTConfig(**{**TINY, **overrides})
    torch.manual_seed(0)
    ref = MaskedViT(cfg, kernels="torch").to(DEV)
    g = _gen(1)
    with torch.no_grad():  # randomise everything: a zero bias or a unit norm weight hides bugs
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    fast = MaskedViT(cfg, kernels="triton").to(DEV)
    fast.load_state_dict(ref.state_dict())
    assert fast.backend == "triton" and all(b.attn.backend == "triton" for b in fast.blocks)
    return ref, fast


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_models(ref, fast, run, tol=1e-4):
    outs = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        out = run(m)
        out.backward()
        outs.append((out.detach(), _grads(m)))
    (o_ref, g_ref), (o_fast, g_fast) = outs
    assert _rel(o_fast, o_ref) < tol
    assert g_ref.keys() == g_fast.keys() and len(g_ref) > 0
    for name in g_ref:
        assert _rel(g_fast[name], g_ref[name]) < tol, (name, _rel(g_fast[name], g_ref[name]))
    return g_ref.keys()


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw"])
def test_switch_mae_path_equal_outputs_and_gradients(norm_pix):
    ref, fast = _pair(norm_pix_loss=norm_pix, learnable_pos_embed=True)
    x = torch.rand(3, 3, 12, 12, generator=_gen(2)).to(DEV)
    target = torch.rand(3, 3, 12, 12, generator=_gen(3)).to(DEV)
    ids_keep = _ids_keep(3, 9, 4, _gen(4))
    up = torch.randn(3, 5, 32, generator=_gen(5)).to(DEV)

    def encoder(m):
        latent, _mask, _ids_restore = m.forward_encoder(x, ids_keep=ids_keep)
        return (latent * up).sum()

    names = _compare_models(ref, fast, encoder)
    assert "pos_embed" in names and "patch_embed.proj.weight" in names

    def decoder_and_loss(m):
        latent, mask, ids_restore = m.forward_encoder(x, ids_keep=ids_keep)
        pred = m.forward_decoder(latent, ids_restore)
        return m.forward_loss(target, pred, mask) + pred.square().mean()

    names = _compare_models(ref, fast, decoder_and_loss)
    assert "mask_token" in names and "decoder_blocks.0.attn.qkv.weight" in names


def test_switch_random_mask_denoise_and_logits():
    ref, fast = _pair()
    x = torch.rand(3, 3, 12, 12, generator=_gen(6)).to(DEV)

    def mae(m):
        torch.manual_seed(7)  # the same mask on both paths
        loss, _pred, _mask = m(x, mask_ratio=0.6)
        return loss

    _compare_models(ref, fast, mae)
    _compare_models(ref, fast, lambda m: m.forward_denoise(x, x * 0.5)[0])
    names = _compare_models(ref, fast, lambda m: m(x).square().mean())
    assert "head.weight" in names and "blocks.1.attn.qkv.weight" in names


def test_switch_image_gradient_for_the_attack():
    ref, fast = _pair()
    x = torch.rand(3, 3, 12, 12, generator=_gen(8)).to(DEV)
    grads = []
    for m in (ref, fast):
        xa = x.clone().requires_grad_(True)
        torch.manual_seed(9)
        loss, _, _ = m(xa, mask_ratio=0.6)
        grads.append(torch.autograd.grad(loss, xa)[0])
    assert _rel(grads[1], grads[0]) < 1e-4


def test_auto_picks_the_reference_off_cuda():
    model = MaskedViT(MaskedViTConfig(**TINY), kernels="auto")
    assert model.backend == ("triton" if torch.cuda.is_available() else "torch")
    assert not model.cpu()._fast(torch.zeros(1)) or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_torch_compile(kernels):
    ref, fast = _pair()
    model = ref if kernels == "torch" else fast
    x = torch.rand(3, 3, 12, 12, generator=_gen(10)).to(DEV)
    ids_keep = _ids_keep(3, 9, 4, _gen(11))
    model.check_inputs = False  # the finiteness check is a host sync; compiled code skips it anyway
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    eager_loss, _, _ = model(x, ids_keep=ids_keep)
    (g_eager,) = torch.autograd.grad(eager_loss, model.blocks[0].attn.qkv.weight)
    loss, _, _ = compiled(x, ids_keep=ids_keep)
    (g,) = torch.autograd.grad(loss, model.blocks[0].attn.qkv.weight)
    assert _rel(loss, eager_loss) < 1e-5 and _rel(g, g_eager) < 1e-5
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ GPU shapes


# fp32 runs its dots as three TF32 products ("tf32x3", ~fp32 accuracy: ~1e-5 expected), bf16
# as bf16 tensor-core products with fp32 accumulation.
@requires_cuda
@pytest.mark.requires_cuda
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"]
)
@pytest.mark.parametrize(
    "n,t,h,dh",
    [(512, 65, 6, 64), (128, 50, 12, 64), (128, 197, 16, 8), (64, 300, 8, 128)],
    ids=["vits2-enc", "vitb16-enc", "vitb16-dec", "t300-d128"],
)
def test_attention_real_shapes(n, t, h, dh, dtype, tol):
    gen = _gen(t + dh)
    qkv = _leaf(n, t, 3, h, dh, gen=gen, dtype=dtype)
    ref_in = qkv.detach().clone().requires_grad_(True)
    _check_grads(
        attention_triton(qkv), attention(ref_in), (qkv,), (ref_in,), ["qkv"], tol, 2 * tol, gen
    )


@requires_cuda
@pytest.mark.requires_cuda
@pytest.mark.parametrize("preset", ["vits2", "vitb16"])
def test_switch_real_shapes_bf16(preset):
    cfg = (
        {"img_size": 32, "patch_size": 2, "embed_dim": 384, "depth": 2, "num_heads": 6}
        if preset == "vits2"
        else {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 2, "num_heads": 12}
    )
    ref = MaskedViT(MaskedViTConfig(**cfg, num_classes=10), kernels="torch").cuda()
    fast = MaskedViT(MaskedViTConfig(**cfg, num_classes=10), kernels="triton").cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(16, 3, cfg["img_size"], cfg["img_size"], device="cuda")
    losses = []
    for m in (ref, fast):
        torch.manual_seed(0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, _ = m(x, mask_ratio=0.75)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    for (name, a), (_, b) in zip(ref.named_parameters(), fast.named_parameters()):
        if a.grad is not None:
            assert _rel(b.grad, a.grad) < 5e-2, name
