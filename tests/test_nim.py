"""NIM: noise specs, denoising pretraining, and the add-noise-then-denoise defense."""

import math

import mimir_fast as mf
import pytest
import torch
from mimir_fast.data import load_digits
from mimir_fast.defenses import NIMDefense
from mimir_fast.noise import add_noise, parse_sigma_spec, sample_sigma

TINY = dict(
    embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4
)


def test_sigma_specs_parse_and_reject():
    assert parse_sigma_spec("gamma:25,3") == ("gamma", 25.0, 3.0)
    assert parse_sigma_spec("uniform:0,30") == ("uniform", 0.0, 30.0)
    assert parse_sigma_spec(("constant", 70)) == ("constant", 70.0)
    for bad in ("gamma:25", "normal:0,1", "uniform:5,1", "gamma:-1,3", "constant:x", "constant:-2"):
        with pytest.raises(ValueError):
            parse_sigma_spec(bad)
    with pytest.raises(ValueError, match="invalid TrainConfig"):
        mf.TrainConfig(noise="gamma:0,3")


@pytest.mark.parametrize(
    "spec,mean,var",
    [("gamma:25,3", 75.0, 225.0), ("uniform:0,30", 15.0, 75.0), ("constant:70", 70.0, 0.0)],
)
def test_sigma_moments(spec, mean, var):
    torch.manual_seed(0)
    n = 20000
    s = sample_sigma(spec, n).double()
    # 5 standard errors of the sample mean; the variance within 5% (n = 20000 gives ~1-2% s.e.)
    assert abs(s.mean().item() - mean) < 5 * math.sqrt(var / n) + 1e-9
    assert s.var().item() == pytest.approx(var, rel=0.05, abs=1e-9)
    assert (s >= 0).all()


def test_add_noise_scale():
    torch.manual_seed(1)
    x = torch.rand(64, 1, 16, 16)
    sigma = torch.tensor([51.0] * 32 + [0.0] * 32)
    noisy = add_noise(x, sigma)
    assert torch.equal(noisy[32:], x[32:])
    assert (noisy[:32] - x[:32]).std().item() == pytest.approx(51 / 255, rel=0.03)


@pytest.fixture(scope="module")
def nim_model(tmp_path_factory):
    result = mf.train(
        method="nim",
        model="vit_tiny_patch4_32",
        model_overrides=TINY,
        epochs=4,
        batch_size=64,
        blr=2e-3,
        augment="crop",
        out_dir=str(tmp_path_factory.mktemp("nim")),
        progress=False,
    )
    return result.model.eval()


@pytest.fixture(scope="module")
def test_images():
    ds = load_digits("test")
    return torch.stack([ds[i][0] for i in range(128)])


@pytest.mark.parametrize("sigma", [50.0, 75.0, 100.0])
def test_denoising_beats_the_noisy_input_across_the_trained_range(nim_model, test_images, sigma):
    assert nim_model.config.norm_pix_loss is False  # NIM predicts pixels
    torch.manual_seed(2)
    noisy = add_noise(test_images, sigma)
    with torch.no_grad():
        denoised = NIMDefense(nim_model, sigma).denoise(noisy)
    err_noisy = ((noisy - test_images) ** 2).mean().item()
    err_denoised = ((denoised - test_images) ** 2).mean().item()
    assert err_denoised < 0.5 * err_noisy
    # and better than knowing only the average digit
    assert err_denoised < ((test_images - test_images.mean(0)) ** 2).mean().item()


def test_defense_is_random_differentiable_and_in_range(nim_model, test_images):
    defense = NIMDefense(nim_model, 75.0)
    x = test_images[:8].clone().requires_grad_(True)
    out = defense(x)
    assert out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert not torch.equal(defense(x), defense(x))  # a fresh noise draw per call


def test_defense_output_does_not_copy_input_patch_statistics():
    model = mf.MaskedViT(img_size=16, patch_size=4, in_chans=1, norm_pix_loss=False, **TINY).eval()
    # a decoder that ignores its latent: whatever the input, the prediction is the bias patch
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.uniform_(model.decoder_pred.bias, 0.2, 0.8)
    defense = NIMDefense(model, 75.0)
    dark = torch.full((2, 1, 16, 16), 0.05)
    bright = torch.rand(2, 1, 16, 16) * 0.3 + 0.7  # other per-patch means and variances
    with torch.no_grad():
        out_dark, out_bright = defense(dark), defense(bright)
    # no path from the input's statistics to the output other than through the network
    assert torch.equal(out_dark, out_bright)
    assert torch.allclose(
        out_dark[0], model.unpatchify(model.decoder_pred.bias.expand(1, 16, -1))[0]
    )


def test_defense_refuses_norm_pix_autoencoders():
    with pytest.raises(ValueError, match="leak"):
        NIMDefense(mf.MaskedViT(img_size=16, patch_size=4, in_chans=1, norm_pix_loss=True, **TINY))
    with pytest.raises(ValueError, match="sigma"):
        NIMDefense(
            mf.MaskedViT(img_size=16, patch_size=4, in_chans=1, norm_pix_loss=False, **TINY), -1.0
        )


def test_finetuning_on_denoised_images(nim_model, test_images, tmp_path):
    nim_model.save(tmp_path / "nim.safetensors")
    cfg = mf.TrainConfig(
        method="finetune",
        model="vit_tiny_patch4_32",
        model_overrides=TINY,
        epochs=1,
        batch_size=32,
        blr=3e-3,
        denoiser=str(tmp_path / "nim.safetensors"),
        out_dir=str(tmp_path / "fin"),
        progress=False,
        log_every=1,
        max_steps=12,
    )
    method = mf.methods.get_method("finetune")(cfg)
    torch.manual_seed(5)
    seen = method.inputs(test_images[:16])
    torch.manual_seed(5)
    sigma = torch.empty(16).uniform_(0, 30)  # the same draws: Uniform(0, 30) per image
    want = NIMDefense(nim_model, 0.0).denoise(add_noise(test_images[:16], sigma))
    torch.testing.assert_close(seen, want)
    assert not torch.equal(seen, test_images[:16])
    result = mf.train(cfg)
    losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    pixel_model = mf.MaskedViT(img_size=32, patch_size=4, in_chans=1, norm_pix_loss=True, **TINY)
    pixel_model.save(tmp_path / "normpix.safetensors")
    with pytest.raises(ValueError, match="pixels"):
        mf.train(
            method="finetune",
            epochs=1,
            denoiser=str(tmp_path / "normpix.safetensors"),
            out_dir=str(tmp_path / "bad"),
            progress=False,
        )
