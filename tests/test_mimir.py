"""MIMIR pretraining: the reconstruction attack, the HSIC-penalised step, masks, host syncs,
train()."""

import mimir_fast as mf
import numpy as np
import pytest
import torch
from host_sync import no_host_sync
from mimir_fast import Batch, TrainConfig, register_method, train
from mimir_fast.attacks import MaskedReconstruction
from mimir_fast.data import ArrayDataset, load_digits
from mimir_fast.hsic import hsic
from mimir_fast.methods import MIMIRPretraining, get_method, mimir_attack
from mimir_fast.training import CHECKPOINT_NAME

TINY = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 1,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "num_classes": 10,
}
EPS, STEP = 8 / 255, 10 / 255
N = 16
LEN_KEEP = 4  # 16 patches, mask ratio 0.75


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return mf.MaskedViT(**TINY)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread avoids oversubscribing a busy machine (5x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    ds = load_digits("train", image_size=16)
    return torch.stack([ds[i][0] for i in range(N)])


def random_keep(seed, n=N):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 16, generator=gen).argsort(dim=1)[:, :LEN_KEEP]


def method(**kw):
    return get_method("mimir")(TrainConfig(method="mimir", **kw))


def batch(x, **extras):
    return Batch(x, torch.zeros(x.shape[0], dtype=torch.long), extras)


def per_sample_recon(model, x_in, target, ids_keep):
    """Independent MAE loss (the attack objective's own implementation)."""
    with torch.no_grad():
        loss, _, _ = MaskedReconstruction().per_sample_loss(model, x_in, target, ids_keep)
    return loss


# ---------------------------------------------------------------------- the attack
def attack_objective(model, x_in, clean, ids_keep, target):
    """The attack's own loss per sample: reconstruct ``x_in`` itself or the clean image."""
    return per_sample_recon(model, x_in, x_in if target == "adversarial" else clean, ids_keep)


@pytest.mark.parametrize("target", ["adversarial", "clean"])
def test_attack_matches_a_reference_pgd_and_raises_the_loss(images, target):
    model = tiny_model().train()
    keep = random_keep(1)
    torch.manual_seed(7)
    x_adv = mimir_attack(model, images, EPS, STEP, 1, ids_keep=keep, target=target)
    # reference: uniform start in the box, one sign step on the MAE loss (of the attacked image
    # itself, or of the clean image), project, clamp
    torch.manual_seed(7)
    start = (images + (2 * torch.rand(images.shape) - 1) * EPS).clamp(0, 1).requires_grad_(True)
    model.eval()
    reference = start if target == "adversarial" else images
    loss, _, _ = MaskedReconstruction().per_sample_loss(model, start, reference, keep)
    (grad,) = torch.autograd.grad(loss.sum(), start)
    want = torch.minimum(
        torch.maximum(start + STEP * grad.sign(), images - EPS), images + EPS
    ).clamp(0, 1)
    torch.testing.assert_close(x_adv, want.detach(), atol=1e-6, rtol=0)

    assert (x_adv - images).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    clean = attack_objective(model, images, images, keep, target)
    adv = attack_objective(model, x_adv, images, keep, target)
    assert (adv > clean).all()
    # far more than a random corner of the same box does
    torch.manual_seed(8)
    corner = (images + EPS * torch.randn(images.shape).sign()).clamp(0, 1)
    assert (adv - clean).mean() > 5 * (
        attack_objective(model, corner, images, keep, target) - clean
    ).mean().abs()
    # more steps push it further
    torch.manual_seed(7)
    x_adv5 = mimir_attack(model, images, EPS, 2 / 255, 5, ids_keep=keep, target=target)
    assert (x_adv5 - images).abs().max() <= EPS + 1e-6
    assert attack_objective(model, x_adv5, images, keep, target).mean() > adv.mean()


def test_attack_leaves_parameters_and_mode_alone(images):
    model = tiny_model().train()
    model.check_inputs = True
    x_adv, loss = mimir_attack(model, images, return_loss=True)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert model.check_inputs is True
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert loss.ndim == 0 and not loss.requires_grad
    # a random attack mask when none is given: reproducible under a seed, different across seeds
    torch.manual_seed(3)
    a = mimir_attack(model, images)
    torch.manual_seed(3)
    b = mimir_attack(model, images)
    torch.manual_seed(4)
    c = mimir_attack(model, images)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attack_rejects_bad_arguments(images):
    model = tiny_model()
    for kw, match in [
        ({"eps": -0.1}, "eps"),
        ({"eps": 2.0}, "eps"),
        ({"step": 0.0}, "step"),
        ({"steps": 0}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
    ]:
        with pytest.raises(ValueError, match=match):
            mimir_attack(model, images, **kw)
    with pytest.raises(ValueError, match="N, C, H, W"):
        mimir_attack(model, images[0])
    with pytest.raises(ValueError, match="MaskedViT"):
        mimir_attack(torch.nn.Identity(), images)


# ---------------------------------------------------------------------- the training step
def test_step_matches_an_independent_recomputation(images):
    model = tiny_model().train()
    keep0, keep1 = random_keep(1), random_keep(2)
    m = method(hsic_weight=0.1)
    torch.manual_seed(11)
    out = m.training_step(model, batch(images, ids_keep=keep0, ids_keep_1=keep1))
    assert all(mod.training for mod in model.modules())  # back in train mode
    torch.manual_seed(11)
    x_adv = mimir_attack(model, images, EPS, STEP, 1, ids_keep=keep0)
    with torch.no_grad():
        recon = per_sample_recon(
            model, x_adv, images, keep1
        ).mean()  # the encoder sees x_adv, the loss the clean x
        latent, _, _ = model.forward_encoder(x_adv, ids_keep=keep1)
        dependence = hsic(x_adv.flatten(1), latent.flatten(1))
    torch.testing.assert_close(out.metrics["recon"], recon, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.metrics["hsic"], dependence, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.detach(), recon + 0.1 * dependence, rtol=1e-5, atol=1e-6)
    assert set(out.metrics) == {"loss", "recon", "hsic", "attack_recon"}
    assert all(not v.requires_grad for v in out.metrics.values())
    # the attack's own reading: its loss at the random start, on its mask, reconstructing the
    # start itself (the default target)
    torch.manual_seed(11)
    start = (images + (2 * torch.rand(images.shape) - 1) * EPS).clamp(0, 1)
    model.eval()
    torch.testing.assert_close(
        out.metrics["attack_recon"],
        per_sample_recon(model, start, start, keep0).mean(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_hsic_gradient_reaches_the_encoder_and_weight_zero_is_plain_recon(images):
    model = tiny_model().train()
    extras = {"ids_keep": random_keep(1), "ids_keep_1": random_keep(2)}
    torch.manual_seed(5)
    with_hsic = method(hsic_weight=0.1).training_step(model, batch(images, **extras))
    torch.manual_seed(5)
    without = method(hsic_weight=0.0).training_step(model, batch(images, **extras))
    assert "hsic" not in without.metrics
    assert torch.equal(without.loss.detach(), without.metrics["recon"])
    assert torch.equal(
        with_hsic.metrics["recon"], without.metrics["recon"]
    )  # same x_adv, same masks
    term = (with_hsic.loss - without.loss) / 0.1  # the HSIC term alone, with its graph
    torch.testing.assert_close(term.detach(), with_hsic.metrics["hsic"], rtol=1e-4, atol=1e-5)
    encoder = [
        p
        for n, p in model.named_parameters()
        if n.startswith(("blocks.", "patch_embed.", "norm.", "cls_token"))
    ]
    decoder = [p for n, p in model.named_parameters() if n.startswith(("decoder", "mask_token"))]
    grads = torch.autograd.grad(term, encoder + decoder, allow_unused=True)
    enc_grads, dec_grads = grads[: len(encoder)], grads[len(encoder) :]
    assert all(g is not None and torch.isfinite(g).all() for g in enc_grads)
    assert sum(g.abs().sum() for g in enc_grads) > 0
    assert all(g is None or g.abs().sum() == 0 for g in dec_grads)  # HSIC does not see the decoder


def test_masks_come_from_extras_and_are_independent(images):
    model = tiny_model().train()
    keep0, keep1, other = random_keep(1), random_keep(2), random_keep(3)
    m = method(hsic_weight=1e-2)

    def step(**extras):
        torch.manual_seed(9)
        out = m.training_step(model, batch(images, **extras))
        return {k: v.clone() for k, v in out.metrics.items()}

    base = step(ids_keep=keep0, ids_keep_1=keep1)
    assert all(torch.equal(base[k], v) for k, v in step(ids_keep=keep0, ids_keep_1=keep1).items())
    new_train_mask = step(ids_keep=keep0, ids_keep_1=other)
    assert torch.equal(
        new_train_mask["attack_recon"], base["attack_recon"]
    )  # the attack kept its mask
    assert not torch.equal(new_train_mask["recon"], base["recon"])
    new_attack_mask = step(ids_keep=other, ids_keep_1=keep1)
    assert not torch.equal(new_attack_mask["attack_recon"], base["attack_recon"])
    assert not torch.equal(new_attack_mask["recon"], base["recon"])  # another x_adv

    # without extras: two fresh masks per step, one for the attack, one for training
    seen = []
    forward_encoder = model.forward_encoder

    def spy(x, mask_ratio=0.75, ids_keep=None):
        latent, mask, ids_restore = forward_encoder(x, mask_ratio, ids_keep)
        modes = {mod.training for mod in model.modules()}
        seen.append((mask.clone(), modes, model.patch_embed.proj.weight.requires_grad))
        return latent, mask, ids_restore

    model.forward_encoder = spy
    torch.manual_seed(9)
    m.training_step(model, batch(images))
    (attack_mask, attack_modes, attack_grad), (train_mask, train_modes, train_grad) = seen
    assert attack_modes == {False} and not attack_grad  # the attack: eval mode, frozen parameters
    assert train_modes == {True} and train_grad
    assert attack_mask.sum(1).eq(12).all() and train_mask.sum(1).eq(12).all()
    assert (attack_mask != train_mask).any(dim=1).float().mean() > 0.5


def test_training_lowers_the_objective_on_a_fixed_batch(images):
    extras = {"ids_keep": random_keep(1), "ids_keep_1": random_keep(2)}

    def first_and_last(weight, steps=5):
        model = tiny_model().train()
        model.check_inputs = False
        m = method(hsic_weight=weight)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        values = []
        for _ in range(steps + 1):
            torch.manual_seed(21)  # the same random start at every step: a fixed objective
            out = m.training_step(model, batch(images, **extras))
            values.append((out.loss.item(), out.metrics["hsic"].item()))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        return values[0], values[-1]

    (start, h_start), (end, h_default) = first_and_last(1e-5)  # MIMIR's lambda
    assert end < 0.9 * start
    (start_w, h_start_w), (end_w, h_weighted) = first_and_last(
        0.1
    )  # HSIC is a third of the objective
    assert (
        h_start_w == h_start and start_w > start + 0.2 * 0.1 * h_start
    )  # same model: the term counts
    assert end_w < 0.9 * start_w
    assert h_weighted < 0.95 * h_default < h_start  # the penalty pulls the dependence down further


# ---------------------------------------------------------------------- no host synchronisation
@pytest.mark.parametrize("estimator", ["nocca", "biased"])
def test_step_makes_no_host_sync_on_cpu(images, estimator):
    """What the CUDA test below checks on a GPU, recorded op by op (tests/host_sync.py)."""
    model = tiny_model().train()
    model.check_inputs = False  # as the trainer does: MaskedViT's finiteness check syncs
    extras = {"ids_keep": random_keep(1), "ids_keep_1": random_keep(2)}
    for with_extras in (True, False):
        m = method(hsic_weight=0.1, attack_steps=2, hsic_estimator=estimator)
        with no_host_sync():
            out = m.training_step(model, batch(images, **(extras if with_extras else {})))
            out.loss.backward()
        assert torch.isfinite(out.loss)
        model.zero_grad(set_to_none=True)


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("estimator", ["nocca", "biased"])
def test_step_makes_no_host_sync_on_cuda(images, estimator):
    model = tiny_model().cuda().train()
    model.check_inputs = False
    x = images.cuda()
    extras = {"ids_keep": random_keep(1).cuda(), "ids_keep_1": random_keep(2).cuda()}
    m = method(hsic_weight=0.1, hsic_estimator=estimator)
    for b in (batch(x, **extras), batch(x)):
        with torch.autocast("cuda", dtype=torch.bfloat16):  # as the trainer runs it
            m.training_step(model, b).loss.backward()  # warm-up: kernel compilation may sync
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = m.training_step(model, b)
            out.loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(out.loss).item()
        model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------- train()
seen_extras = {}


@register_method
class ProbeMIMIR(MIMIRPretraining):
    """MIMIR that records which masks the loader handed it."""

    name = "test-mimir-probe"

    def training_step(self, model, batch):
        seen_extras.setdefault("extras", {k: v.clone() for k, v in batch.extras.items()})
        return super().training_step(model, batch)


@pytest.mark.parametrize("loader", ["native", "torch"])
def test_train_end_to_end_on_digits(tmp_path, loader):
    seen_extras.clear()
    model = tiny_model()
    test = load_digits("test", image_size=16)
    held_out = ArrayDataset(
        test.images[:48], test.labels[:48], num_classes=10
    )  # a short final evaluation
    result = train(
        method="test-mimir-probe",
        model=model,
        train_data=load_digits("train", image_size=16),
        test_data=held_out,
        epochs=1,
        max_steps=3,
        batch_size=16,
        loader=loader,
        out_dir=str(tmp_path),
        progress=False,
        log_every=1,
        hsic_weight=1e-2,
    )
    assert result.steps == 3
    assert (tmp_path / "model.safetensors").is_file()
    loaded = mf.MaskedViT.load(tmp_path / "model.safetensors")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in result.model.state_dict().items())
    records = [r for r in result.history if r["split"] == "train"]
    assert len(records) == 3
    assert all(set(r) >= {"loss", "recon", "hsic", "attack_recon"} for r in records)
    assert all(r["loss"] == pytest.approx(r["recon"] + 1e-2 * r["hsic"], rel=1e-5) for r in records)
    assert set(result.final_metrics) == {"loss", "adv_loss"}
    assert (
        result.final_metrics["adv_loss"] > result.final_metrics["loss"]
    )  # the attack hurts held-out recon
    extras = seen_extras["extras"]
    if loader == "native":  # two independent masks from the loader
        assert extras["ids_keep"].shape == extras["ids_keep_1"].shape == (16, LEN_KEEP)
        assert not torch.equal(extras["ids_keep"], extras["ids_keep_1"])
    else:
        assert extras == {}


def test_resume_matches_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    data = ArrayDataset(
        rng.integers(0, 256, size=(24, 16, 16, 1), dtype=np.uint8), np.arange(24) % 3
    )
    held_out = ArrayDataset(
        rng.integers(0, 256, size=(8, 16, 16, 1), dtype=np.uint8), np.arange(8) % 3
    )
    cfg = TrainConfig(
        method="mimir",
        model="vit_tiny_patch4_32",
        model_overrides={k: v for k, v in TINY.items() if k != "num_classes"},
        epochs=2,
        batch_size=8,
        blr=1e-3,
        warmup_epochs=1,
        progress=False,
        log_every=1,
        hsic_weight=1e-2,
        loader="native",
        eval_every=0,
    )

    def run(out, **kw):
        return train(cfg, train_data=data, test_data=held_out, out_dir=str(tmp_path / out), **kw)

    full = run("full")
    first = run("part", max_steps=2)  # stopped mid-epoch
    assert first.steps == 2
    second = run("part", resume=str(tmp_path / "part" / CHECKPOINT_NAME))
    assert second.steps == full.steps == 6
    for k, v in second.model.state_dict().items():
        assert torch.equal(v, full.model.state_dict()[k]), k
    full_losses = {r["step"]: r["loss"] for r in full.history if r["split"] == "train"}
    resumed_losses = {r["step"]: r["loss"] for r in second.history if r["split"] == "train"}
    assert resumed_losses == full_losses
