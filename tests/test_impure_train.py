"""train(method="impure"): PGD against a frozen classifier, regional-intersection purification,
random combination, pixel + perceptual loss."""

import mimir_fast as mf
import pytest
import torch
import torch.nn.functional as F
from mimir_fast import TrainConfig
from mimir_fast.defenses import IMPurePurifier
from mimir_fast.methods import get_method
from mimir_fast.methods.impure import ImpureTraining

ARCH = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 1,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}
PRESET_OVERRIDES = {
    k: v for k, v in ARCH.items() if k not in ("patch_size", "in_chans")
}  # vit_tiny_patch4_32
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are too small to gain from threads; on a busy machine threads cost
    several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_classifier(seed=1, **kw):
    torch.manual_seed(seed)
    return mf.MaskedViT(**{**ARCH, "num_classes": 10, **kw}).eval()


def tiny_autoencoder(seed=0):
    torch.manual_seed(seed)
    return mf.MaskedViT(
        **{**ARCH, "num_classes": 10, "norm_pix_loss": True}
    )  # prepare_model turns it off


def method_with(classifier, **kw):
    """PGD alone at EPS, pixel + one forward_features L1 term of weight 1 (the paper's mix and
    weights are tested in test_impure_training.py)."""
    config = TrainConfig(
        method="impure",
        impure_eps=EPS,
        attack_step=ALPHA,
        attack_steps=STEPS,
        impure_attacks=["pgd"],
        impure_feature_weights=[1.0],
        **kw,
    )
    features = getattr(classifier, "forward_features", None) if classifier.num_classes else None
    return ImpureTraining(config, classifier=classifier, features=features)


def fixed_batch(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    return mf.Batch(torch.rand(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))


def manual_pgd(classifier, x, y):
    """Random start in the eps-box, then sign steps of CE, projected and clamped (Madry et al.)."""
    x_adv = (x + (2 * torch.rand(x.shape) - 1) * EPS).clamp(0, 1)
    for _ in range(STEPS):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(classifier(x_adv), y), x_adv)
        x_adv = torch.minimum(torch.maximum(x_adv + ALPHA * grad.sign(), x - EPS), x + EPS).clamp(
            0, 1
        )
    return x_adv.detach()


def test_missing_or_mismatched_classifier_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a target classifier"):
        get_method("impure")(TrainConfig(method="impure"))
    with pytest.raises(ValueError, match="needs a target classifier"):
        mf.train(
            method="impure",
            model="vit_tiny_patch4_32",
            model_overrides=PRESET_OVERRIDES,
            out_dir=str(tmp_path),
            progress=False,
        )
    with pytest.raises(ValueError, match="no classification head"):
        method_with(tiny_classifier(num_classes=0))
    method = method_with(tiny_classifier(img_size=8))
    with pytest.raises(ValueError, match="classifier expects 1-channel 8px images"):
        method.prepare_model(tiny_autoencoder(), 10)
    with pytest.raises(ValueError, match="classifier has 10 classes but the data has 3"):
        method_with(tiny_classifier()).prepare_model(tiny_autoencoder(), 3)
    with pytest.raises(ValueError, match="num_groups"):
        method_with(tiny_classifier(), impure_groups=3).prepare_model(tiny_autoencoder(), 10)


def test_loss_equals_an_independent_recomputation():
    classifier = tiny_classifier()
    method = method_with(classifier)
    model = method.prepare_model(tiny_autoencoder(), 10).train()
    assert model.config.norm_pix_loss is False
    batch = fixed_batch()
    torch.manual_seed(5)
    out = method.training_step(model, batch)

    torch.manual_seed(5)  # same draws, in the same order: attack start, groups, combination, groups
    clean = batch.images
    x_adv = manual_pgd(classifier, clean, batch.labels)
    purifier = IMPurePurifier(model, 4)
    purified = purifier(
        x_adv, clamp=False
    )  # the loss sees raw predictions (clamping stops gradients)
    purified2 = purifier(
        purifier.random_combination(x_adv, purified.detach().clamp(0, 1)), clamp=False
    )
    with torch.no_grad():
        features_clean = classifier.forward_features(clean)
    parts = [
        (p - clean).abs().mean() + (classifier.forward_features(p) - features_clean).abs().mean()
        for p in (purified, purified2)
    ]
    want = (parts[0] + parts[1]) / 2
    torch.testing.assert_close(out.loss.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    params = list(model.parameters())  # same gradients too: the pasted region is detached
    got_grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    assert sum(g is not None for g in got_grads) > 10
    for g, w in zip(got_grads, want_grads):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    purified = purified.detach()
    torch.testing.assert_close(
        out.metrics["pixel_l1"], (purified - clean).abs().mean(), rtol=1e-5, atol=1e-7
    )
    mse = ((purified - clean) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(
        out.metrics["psnr"], (-10 * torch.log10(mse)).mean(), rtol=1e-4, atol=1e-4
    )
    assert x_adv.sub(clean).abs().max() <= EPS + 1e-6 and x_adv.ne(clean).any()


def test_gradients_reach_the_purifier_only_and_the_classifier_stays_frozen():
    classifier = tiny_classifier()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    method = method_with(classifier)
    model = method.prepare_model(tiny_autoencoder(), 10).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = fixed_batch()
    for step in range(3):
        torch.manual_seed(step)
        optimizer.zero_grad(set_to_none=True)
        method.training_step(model, batch).loss.backward()
        if step == 0:
            for name in (
                "patch_embed.proj.weight",
                "blocks.0.attn.qkv.weight",
                "decoder_pred.weight",
            ):
                grad = dict(model.named_parameters())[name].grad
                assert grad is not None and grad.abs().sum() > 0, name
            assert model.head.weight.grad is None  # the autoencoder's head takes no part
        optimizer.step()
        assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())
    assert not classifier.training
    for k, v in classifier.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    method = method_with(tiny_classifier())
    model = method.prepare_model(tiny_autoencoder(), 10).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch = fixed_batch()
    losses = []
    for _ in range(8):
        torch.manual_seed(0)  # the same adversarial images, groups and combination every step
        loss = method.training_step(model, batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_evaluate_equals_a_direct_computation():
    classifier = tiny_classifier()
    method = method_with(classifier)
    model = method.prepare_model(tiny_autoencoder(), 10).eval()
    batches = [fixed_batch(6, seed=3), fixed_batch(4, seed=4)]
    for (
        batch
    ) in batches:  # label by the classifier itself: clean accuracy 1, for the attack to lower
        batch.labels = classifier(batch.images).argmax(1)
    torch.manual_seed(7)
    with torch.no_grad():  # as the trainer calls it: the attack must turn gradients back on
        got = method.evaluate(model, batches)

    torch.manual_seed(7)
    purifier = IMPurePurifier(model, 4)
    rows = []
    for batch in batches:
        x, y = batch.images, batch.labels
        x_adv = manual_pgd(classifier, x, y)
        with torch.no_grad():
            p_adv, p_clean = purifier(x_adv), purifier(x)
            accuracy = [(classifier(t).argmax(1) == y).float() for t in (x, x_adv, p_adv, p_clean)]
            psnr = [-10 * torch.log10(((t - x) ** 2).flatten(1).mean(1)) for t in (p_clean, p_adv)]
        rows.append(torch.stack(accuracy + psnr, dim=1))
    want = torch.cat(rows).mean(0).tolist()
    keys = (
        "accuracy_clean",
        "accuracy_adv",
        "accuracy_purified_adv",
        "accuracy_purified_clean",
        "psnr_clean",
        "psnr_adv",
    )
    for key, value in zip(keys, want):
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert got["accuracy_clean"] == 1.0 and got["accuracy_adv"] < 1.0  # the attack works


def test_end_to_end_on_digits(tmp_path):
    common = {
        "model": "vit_tiny_patch4_32",
        "model_overrides": PRESET_OVERRIDES,
        "data": "digits",
        "epochs": 1,
        "max_steps": 3,
        "batch_size": 64,
        "warmup_epochs": 0,
        "progress": False,
        "eval_every": 0,
        "checkpoint_every": 0,
    }
    finetuned = mf.train(method="finetune", out_dir=str(tmp_path / "classifier"), lr=3e-3, **common)
    path = tmp_path / "classifier" / "model.safetensors"
    result = mf.train(
        method="impure",
        classifier=str(path),
        attack_steps=2,
        lr=1e-3,
        out_dir=str(tmp_path / "impure"),
        **common,
    )
    assert result.steps == 3
    saved = mf.MaskedViT.load(tmp_path / "impure" / "model.safetensors")
    assert saved.config.norm_pix_loss is False
    metrics = result.final_metrics
    for key in (
        "accuracy_clean",
        "accuracy_adv",
        "accuracy_purified_adv",
        "accuracy_purified_clean",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    # the same classifier on the same held-out digits as the finetune run's own evaluation
    assert metrics["accuracy_clean"] == pytest.approx(finetuned.final_metrics["accuracy"])
    for key in ("psnr_clean", "psnr_adv"):
        assert 0.0 < metrics[key] < 100.0, key
    train_records = [r for r in result.history if r["split"] == "train"]
    assert {"loss", "pixel_l1", "psnr"} <= set(train_records[-1])
