"""MIMIR's attack target: by default the attack reconstructs the attacked image itself (the
authors' code), so every pixel is attacked; with the clean target the masked pixels are not."""

import math

import mimir_fast as mf
import pytest
import torch
from mimir_fast import Batch, TrainConfig
from mimir_fast.methods import get_method, mimir_attack
from mimir_fast.methods.mimir import mimir_attack_loss

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
}
EPS, STEP = 8 / 255, 10 / 255
N, PATCH = 16, 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(norm_pix=True):
    torch.manual_seed(0)
    return mf.MaskedViT(**TINY, norm_pix_loss=norm_pix).eval()


def images(seed=1):
    """Pixels in [0.2, 0.8]: an eps-ball of 8/255 never reaches 0 or 1, so no pixel is clamped."""
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(N, 1, 16, 16, generator=g)


def keep(seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, 16, generator=g).argsort(dim=1)[:, :4]  # mask ratio 0.75


def pixel_mask(ids_keep):
    """(N, 1, 16, 16) True on the pixels of masked (hidden) patches."""
    hidden = torch.ones(N, 16, dtype=torch.bool)
    hidden.scatter_(1, ids_keep, False)
    grid = hidden.view(N, 1, 4, 4)
    return grid.repeat_interleave(PATCH, 2).repeat_interleave(PATCH, 3)


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "pixels"])
def test_gradient_reaches_the_masked_patches_only_with_the_adversarial_target(norm_pix):
    model, x, ids = tiny_model(norm_pix), images(), keep()
    hidden = pixel_mask(ids)
    torch.manual_seed(3)
    start = (x + (2 * torch.rand(x.shape) - 1) * EPS).requires_grad_(True)
    grads = {}
    for target in ("adversarial", "clean"):
        loss = mimir_attack_loss(model, start, x, ids, 0.75, target)
        (grads[target],) = torch.autograd.grad(loss, start)
    adv, clean = grads["adversarial"], grads["clean"]
    # the default target: every pixel of the hidden patches has a gradient
    assert (adv[hidden] != 0).float().mean() > 0.99
    assert (adv[~hidden] != 0).float().mean() > 0.99
    # the clean target: none there (the encoder never sees them, the target does not move)
    assert (clean[hidden] == 0).all()
    assert (clean[~hidden] != 0).float().mean() > 0.99


def boundary_fraction(x_adv, x):
    """Fraction of the pixels (none clamped here) at distance eps from the clean image."""
    return ((x_adv - x).abs() - EPS).abs().le(1e-6).float().mean().item()


def moved_fraction(x_adv, start):
    return (x_adv - start).abs().gt(1e-7).float().mean().item()


def attack(x, target, step=STEP, seed=4):
    model, ids = tiny_model(), keep()
    torch.manual_seed(seed)
    return mimir_attack(model, x, EPS, step, 1, ids_keep=ids, target=target)


def random_start(x, seed=4):
    torch.manual_seed(seed)
    return (x + (2 * torch.rand(x.shape) - 1) * EPS).clamp(0, 1)


def test_one_step_attacks_every_pixel_with_the_adversarial_target():
    x = images()
    start = random_start(x)
    pixels = x.numel()
    tol = 4 * math.sqrt(0.25 / pixels)  # four standard deviations of a sampled fraction
    adv, clean = attack(x, "adversarial"), attack(x, "clean")
    assert (adv - x).abs().max() <= EPS + 1e-6 and (clean - x).abs().max() <= EPS + 1e-6
    # a sign step moves every pixel with a gradient off its random start
    assert moved_fraction(adv, start) > 0.99
    assert moved_fraction(clean, start) == pytest.approx(0.25, abs=tol)  # the visible quarter
    # a step of 2 eps from anywhere in the ball ends on its boundary: so does every attacked pixel
    adv2, clean2 = attack(x, "adversarial", 2 * EPS), attack(x, "clean", 2 * EPS)
    assert boundary_fraction(adv2, x) >= 0.9
    assert not boundary_fraction(clean2, x) >= 0.9  # the brief's check fails with the clean target
    assert boundary_fraction(clean2, x) == pytest.approx(0.25, abs=tol)
    # MIMIR's step of 10/255 at eps 8/255 ends on the boundary when the uniform start offset d
    # satisfies sign * d >= eps - step = -2/255: a fraction step / (2 eps) = 5/8 of the pixels
    expected = STEP / (2 * EPS)
    assert boundary_fraction(adv, x) == pytest.approx(expected, abs=0.05)
    assert boundary_fraction(clean, x) == pytest.approx(0.25 * expected, abs=0.05)


def test_attack_target_is_a_setting_and_the_clean_one_keeps_the_old_behaviour():
    model, x = tiny_model(), images()
    extras = {"ids_keep": keep(), "ids_keep_1": keep(5)}
    batch = Batch(x, torch.zeros(N, dtype=torch.long), extras)
    outs = {}
    for target in ("adversarial", "clean"):
        method = get_method("mimir")(TrainConfig(method="mimir", attack_target=target))
        torch.manual_seed(6)
        outs[target] = method.training_step(model.train(), batch)
    assert TrainConfig().attack_target == "adversarial"
    start = random_start(x, 6)
    model.eval()
    with torch.no_grad():  # attack_recon: the attack's loss at its random start, per target
        for target in ("adversarial", "clean"):
            want = mimir_attack_loss(model, start, x, keep(), 0.75, target)
            torch.testing.assert_close(
                outs[target].metrics["attack_recon"], want, rtol=1e-5, atol=0
            )
    assert not torch.equal(outs["adversarial"].metrics["recon"], outs["clean"].metrics["recon"])
    with pytest.raises(ValueError, match="attack_target"):
        TrainConfig(attack_target="noisy")
    with pytest.raises(ValueError, match="target"):
        mimir_attack(model, x, target="noisy")
