"""Adversarial finetuning: PGD-AT and TRADES in the "finetune" method, end to end through
train()."""

import json
import math

import mimir_fast as mf
import pytest
import torch
import torch.nn.functional as F
from mimir_fast import Batch, TrainConfig
from mimir_fast.data import load_digits
from mimir_fast.methods.finetune import Finetuning, trades_loss

TINY = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}
EPS = 8 / 255


def tiny_model(seed=0, **kw):
    """A random classifier; its head is scaled up from MAE's near-zero init so that logits vary."""
    torch.manual_seed(seed)
    model = mf.MaskedViT(**{**TINY, **kw})
    torch.nn.init.normal_(model.head.weight, std=0.3)
    return model


def method(**kw):
    base = {"method": "finetune", "adversarial": "pgd", "attack_steps": 5, "progress": False}
    return Finetuning(TrainConfig(**{**base, **kw}))


@pytest.fixture(scope="module")
def digits():
    ds = load_digits("train", image_size=16)
    x = torch.stack([ds[i][0] for i in range(64)])
    y = torch.tensor([ds[i][1] for i in range(64)])
    return x, y


def manual_ce(logits, y, smoothing=0.0):
    logp = logits.double().log_softmax(dim=1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * logp.mean(dim=1)).mean()


def manual_kl(clean_logits, adv_logits):
    """KL(softmax clean || softmax adv), summed over classes, averaged over the batch."""
    p = clean_logits.double().softmax(dim=1)
    return (p * (p.log() - adv_logits.double().log_softmax(dim=1))).sum(dim=1).mean()


def test_pgd_examples_stay_in_the_ball_raise_the_loss_and_leave_no_grads(digits):
    x, y = digits[0][:16], digits[1][:16]
    model = tiny_model(drop_path_rate=0.3).train()
    fin = method(attack_steps=10)
    torch.manual_seed(0)
    x_adv = fin.adversarial_examples(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # the attack left no parameter gradient
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())  # train mode restored
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and (x_adv - x).abs().max() > EPS / 2
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        clean_ce, adv_ce = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert adv_ce > clean_ce + 0.05


def test_pgd_step_attacks_in_eval_mode_and_trains_on_the_examples(digits):
    x, y = digits[0][:16], digits[1][:16]
    model = tiny_model().train()
    fin = method(attack_steps=4, label_smoothing=0.1)
    modes = []
    hook = model.register_forward_hook(lambda m, args, out: modes.append(m.training))
    torch.manual_seed(3)
    out = fin.training_step(model, Batch(x, y))
    hook.remove()
    assert modes == [False] * 4 + [
        True
    ]  # 4 attack forwards in eval mode, then the training forward
    assert model.training and all(m.training for m in model.modules())
    assert set(out.metrics) == {"loss", "accuracy", "adv_accuracy"}
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in out.metrics.values())
    torch.manual_seed(3)  # the same random start: the same examples
    x_adv = fin.adversarial_examples(model, x, y)
    assert not torch.equal(x_adv, x)
    logits = model(x_adv)
    torch.testing.assert_close(out.loss.double(), manual_ce(logits, y, 0.1), rtol=1e-5, atol=1e-6)
    assert out.metrics["accuracy"] == (logits.argmax(1) == y).float().mean()
    out.loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_trades_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    clean, adv, y = torch.randn(7, 5) * 3, torch.randn(7, 5) * 3, torch.randint(0, 5, (7,))
    loss, ce, kl = trades_loss(clean, adv, y, beta=6.0, label_smoothing=0.1)
    torch.testing.assert_close(ce.double(), manual_ce(clean, y, 0.1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl.double(), manual_kl(clean, adv), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        loss.double(), manual_ce(clean, y, 0.1) + 6.0 * manual_kl(clean, adv), rtol=1e-5, atol=1e-6
    )
    assert (
        trades_loss(clean, clean, y, beta=6.0)[2].abs() < 1e-6
    )  # no KL between equal distributions


def test_trades_step_matches_the_direct_loss_and_beta_zero_is_clean_ce(digits):
    x, y = digits[0][:12], digits[1][:12]
    model = tiny_model(seed=1).train()
    fin = method(adversarial="trades", attack_steps=5, trades_beta=3.0, label_smoothing=0.1)
    torch.manual_seed(7)
    out = fin.training_step(model, Batch(x, y))
    assert set(out.metrics) == {"loss", "accuracy", "adv_accuracy", "ce", "kl"}
    torch.manual_seed(7)
    x_adv = fin.adversarial_examples(model, x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    clean, adv = model(x), model(x_adv)
    want = manual_ce(clean, y, 0.1) + 3.0 * manual_kl(clean, adv)
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)
    assert out.metrics["kl"] > 0
    # the attack maximises the KL: it beats a random point of the same ball
    model.eval()
    with torch.no_grad():
        rand = (x + (torch.rand_like(x) * 2 - 1) * EPS).clamp(0, 1)
        assert manual_kl(model(x), model(x_adv)) > 2 * manual_kl(model(x), model(rand))
    model.train()
    # beta = 0: plain label-smoothed cross-entropy on the clean images, gradients included
    zero = method(adversarial="trades", attack_steps=2, trades_beta=0.0, label_smoothing=0.1)
    out0 = zero.training_step(model, Batch(x, y))
    model.zero_grad()
    out0.loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = manual_ce(model(x), y, 0.1)
    ref.backward()
    torch.testing.assert_close(out0.loss.double(), ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6)


def test_eps_zero_is_clean_finetuning(digits):
    x, y = digits[0][:8], digits[1][:8]
    model = tiny_model().train()
    for kind in ("pgd", "trades"):
        fin = method(adversarial=kind, attack_eps=0.0)
        out = fin.training_step(model, Batch(x, y))
        torch.testing.assert_close(out.loss.double(), manual_ce(model(x), y), rtol=1e-5, atol=1e-6)
        assert out.metrics["adv_accuracy"] == out.metrics["accuracy"]
        model.eval()
        with torch.no_grad():
            metrics = fin.evaluate(model, [Batch(x, y)])
        model.train()
        assert metrics["adv_accuracy"] == metrics["accuracy"] and metrics[
            "adv_loss"
        ] == pytest.approx(metrics["loss"])


def test_evaluate_reports_robust_accuracy_under_no_grad(digits):
    x, y = digits
    model = tiny_model().eval()
    fin = method(adversarial="trades", attack_steps=3)
    torch.manual_seed(0)
    with torch.no_grad():  # as the trainer calls it
        metrics = fin.evaluate(model, [Batch(x[:16], y[:16]), Batch(x[16:], y[16:])])
    with torch.no_grad():
        logits = model(x)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert metrics["adv_loss"] > metrics["loss"] + 0.05
    assert 0 <= metrics["adv_accuracy"] <= metrics["accuracy"]
    assert all(p.grad is None for p in model.parameters())
    assert "adv_accuracy" not in method(adversarial="none").evaluate(model, [Batch(x, y)])


def robust_metrics(fin, model, x, y):
    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        metrics = fin.evaluate(model, [Batch(x, y)])
    model.train()
    return metrics


def test_a_few_pgd_at_steps_make_a_small_classifier_robust(digits):
    """PGD-AT lowers the adversarial loss and raises robust accuracy on a fixed batch, where clean
    training of the same model from the same start does not. A small MLP learns in a few steps
    (a tiny ViT first learns only the class prior); eps 0.25 is the digits' usual large budget."""
    x, y = digits
    attack = {"attack_eps": 0.25, "attack_step": 0.1, "attack_steps": 2}
    results = {}
    for kind in ("pgd", "none"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        fin = method(adversarial=kind, **attack)
        judge = method(adversarial="pgd", **attack)
        before = robust_metrics(judge, model, x, y)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(20):
            torch.manual_seed(step)
            out = fin.training_step(model, Batch(x, y))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        results[kind] = robust_metrics(judge, model, x, y)
    assert before["adv_accuracy"] < 0.1
    assert results["pgd"]["adv_loss"] < 0.9 * before["adv_loss"], (before, results)
    assert results["pgd"]["adv_accuracy"] >= before["adv_accuracy"] + 0.1, (before, results)
    assert results["pgd"]["adv_loss"] < results["none"]["adv_loss"], results
    assert results["pgd"]["adv_accuracy"] > results["none"]["adv_accuracy"], results


def test_attack_goes_through_the_denoiser(digits, tmp_path):
    x, y = digits[0][:8], digits[1][:8]
    tiny_model(seed=4, norm_pix_loss=False).save(tmp_path / "nim.safetensors")
    fin = method(denoiser=str(tmp_path / "nim.safetensors"), attack_steps=3)
    model = tiny_model().train()
    torch.manual_seed(0)
    x_adv = fin.adversarial_examples(model, x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and (x_adv - x).abs().max() > EPS / 2
    out = fin.training_step(model, Batch(x, y))
    out.loss.backward()
    assert all(p.grad is None for p in fin.denoiser.parameters())
    assert math.isfinite(float(out.loss.detach()))


@pytest.mark.parametrize("kind", ["pgd", "trades"])
def test_train_end_to_end(kind, tmp_path):
    result = mf.train(
        method="finetune",
        adversarial=kind,
        model=tiny_model(),
        data="digits",
        epochs=1,
        max_steps=3,
        attack_steps=2,
        batch_size=16,
        out_dir=str(tmp_path),
        progress=False,
        log_every=1,
    )
    train_records = [r for r in result.history if r["split"] == "train"]
    assert len(train_records) == 3
    assert all("adv_accuracy" in r and math.isfinite(r["loss"]) for r in train_records)
    assert all(("kl" in r) == (kind == "trades") for r in train_records)
    final = result.final_metrics
    assert 0 <= final["adv_accuracy"] <= 1 and final["adv_loss"] >= final["loss"]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["split"] == "test" and logged[-1]["adv_accuracy"] == final["adv_accuracy"]


def test_unknown_adversarial_mode_is_refused():
    with pytest.raises(ValueError, match="adversarial"):
        TrainConfig(method="finetune", adversarial="fgsm")
