"""IMPure as the paper trains it: the attack mix at 16/255, the configurable pixel + perceptual
loss with a frozen feature network, and pretraining that hides 1/k of the patches."""

import math

import mimir_fast as mf
import pytest
import torch
import torch.nn.functional as F
from mimir_fast import Batch, TrainConfig
from mimir_fast.attacks import APGD, CW, DIFGSM, MIFGSM, PGD
from mimir_fast.defenses import IMPurePurifier
from mimir_fast.defenses.impure_features import (
    FEATURE_NETWORKS,
    build_feature_network,
    register_feature_network,
)
from mimir_fast.methods import get_method
from mimir_fast.methods.impure import ImpurePretraining, ImpureTraining
from mimir_fast.methods.impure_mix import DEFAULT_IMPURE_ATTACKS, AttackMix
from torch import nn

ARCH = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 1,
    "embed_dim": 32,
    "depth": 4,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}
EPS = 16 / 255


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def classifier(seed=1):
    """A tiny classifier whose logits spread as a trained one's do (a fresh head's barely
    differ, and CW cannot fool it within its budget)."""
    torch.manual_seed(seed)
    model = mf.MaskedViT(**ARCH, num_classes=10).eval()
    nn.init.normal_(model.head.weight, std=1.0)
    return model


def autoencoder(seed=0):
    torch.manual_seed(seed)
    return mf.MaskedViT(**ARCH)


def batch(n=8, seed=2):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))


class SpyNet(nn.Module):
    """A user feature network: two feature tensors, counting its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        a = torch.relu(self.conv(x))
        return [a, self.fc(a.flatten(1))]


# ---------------------------------------------------------------------- the attack mix
def test_defaults_are_the_papers():
    c = TrainConfig(method="impure")
    assert c.impure_eps == pytest.approx(16 / 255)
    assert c.impure_attacks == list(DEFAULT_IMPURE_ATTACKS)
    assert {"fgsm", "pgd", "cw", "mifgsm", "difgsm", "apgd-ce"} <= set(c.impure_attacks)
    assert c.impure_pixel_weight == 1.0 and c.impure_feature_weights == [30.0, 10.0, 10.0]
    method = ImpureTraining(c, classifier=classifier())
    mix = method.mix
    assert mix.eps == pytest.approx(EPS) and mix.step == pytest.approx(4 / 255) and mix.steps == 10
    by_name = dict(zip(mix.names, mix.attacks))
    assert isinstance(by_name["pgd"], PGD) and by_name["pgd"].alpha == pytest.approx(4 / 255)
    assert by_name["pgd"].steps == 10 and by_name["pgd"].random_start
    assert isinstance(by_name["mifgsm"], MIFGSM) and by_name["mifgsm"].decay == 1.0
    assert isinstance(by_name["difgsm"], DIFGSM) and by_name["difgsm"].decay == 0.0
    assert by_name["mdifgsm"].decay == 1.0
    assert isinstance(by_name["apgd-ce"], APGD) and by_name["apgd-ce"].steps == 10
    assert by_name["apgd-ce"].objective.name == "ce" and by_name["apgd-dlr"].objective.name == "dlr"
    assert isinstance(by_name["cw"].attack, CW) and by_name["cw"].attack.steps == 50
    assert all(a.eps == pytest.approx(EPS) for n, a in by_name.items() if n != "clean")


def test_every_attack_of_the_mix_is_drawn_and_respects_eps():
    model = classifier()
    mix = AttackMix(model, DEFAULT_IMPURE_ATTACKS, EPS)
    calls = {name: 0 for name in mix.names}
    rows = {name: 0 for name in mix.names}

    def spy(name, attack):
        def run(x, y):
            calls[name] += 1
            rows[name] += x.shape[0]
            return attack(x, y)

        return run

    mix.attacks = [spy(n, a) for n, a in zip(mix.names, mix.attacks)]
    torch.manual_seed(0)
    changed = {name: False for name in mix.names}
    for step in range(4):
        b = batch(24, seed=step)
        with torch.no_grad():  # labelled by the classifier: every attack has something to fool
            b.labels = model(b.images).argmax(1)
        x_adv = mix(b.images, b.labels)
        assert x_adv.shape == b.images.shape
        assert (x_adv - b.images).abs().max() <= EPS + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        counts = torch.bincount(mix.last_choice, minlength=len(mix.names))
        for i, name in enumerate(mix.names):
            picked = mix.last_choice == i
            moved = (x_adv[picked] - b.images[picked]).abs().amax(dim=(1, 2, 3)) > 0
            changed[name] |= bool(moved.any())
            if name == "clean":
                assert not moved.any()
        assert int(counts.sum()) == 24
    assert all(calls[n] > 0 for n in mix.names), calls  # every attack drawn
    assert sum(rows.values()) == 4 * 24  # each image attacked once
    assert all(changed[n] for n in mix.names if n != "clean"), changed


def test_the_draw_is_per_image_and_uniform():
    mix = AttackMix(classifier(), ["fgsm", "pgd", "cw"], EPS)
    mix.attacks = [lambda x, y: x for _ in mix.attacks]  # routing only
    torch.manual_seed(1)
    draws = []
    for _ in range(200):
        b = batch(12, seed=0)
        mix(b.images, b.labels)
        draws.append(mix.last_choice.clone())
    choice = torch.stack(draws)  # (batches, N)
    counts = torch.bincount(choice.flatten(), minlength=3).double()
    n = choice.numel()
    assert ((counts - n / 3).abs() < 5 * math.sqrt(n * (1 / 3) * (2 / 3))).all(), counts
    mixed = (choice != choice[:, :1]).any(dim=1).double().mean()  # batches holding >1 attack
    assert mixed > 0.99


def test_bad_attack_settings_are_refused():
    with pytest.raises(ValueError, match="impure_attacks"):
        TrainConfig(impure_attacks=["pgd", "deepfool"])
    with pytest.raises(ValueError, match="impure_attacks"):
        TrainConfig(impure_attacks=[])
    with pytest.raises(ValueError, match="impure_eps"):
        TrainConfig(impure_eps=0.0)
    assert TrainConfig(impure_attacks="fgsm, pgd").impure_attacks == ["fgsm", "pgd"]


# ---------------------------------------------------------------------- the loss
def make(**kw):
    config = TrainConfig(method="impure", impure_attacks=["fgsm"], **kw)
    return ImpureTraining(config, classifier=classifier())


def test_weights_reach_the_loss_by_the_expected_amounts():
    net = SpyNet()
    register_feature_network("test-spy", net)
    try:
        base = {"impure_features": "test-spy"}
        p, c = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16)
        l1 = F.l1_loss(p, c)
        with torch.no_grad():
            fp, fc = net(p), net(c)
            f1, f2 = F.l1_loss(fp[0], fc[0]), F.l1_loss(fp[1], fc[1])

        def loss(pixel, weights):
            m = make(impure_pixel_weight=pixel, impure_feature_weights=weights, **base)
            return m.loss(p, c).detach()

        ref = loss(1.0, [30.0, 10.0])
        torch.testing.assert_close(ref, l1 + 30 * f1 + 10 * f2)
        torch.testing.assert_close(loss(3.0, [30.0, 10.0]) - ref, 2 * l1)
        torch.testing.assert_close(loss(1.0, [31.0, 10.0]) - ref, f1)
        torch.testing.assert_close(loss(1.0, [30.0, 12.5]) - ref, 2.5 * f2)
        torch.testing.assert_close(loss(0.0, [2.0]), 2 * (f1 + f2))  # one weight for all
        assert loss(0.0, [0.0, 0.0]).item() == 0.0
        with pytest.raises(ValueError, match="feature weights"):
            loss(1.0, [1.0, 2.0, 3.0])
    finally:
        FEATURE_NETWORKS.pop("test-spy", None)


def test_a_user_feature_network_is_frozen_used_and_unchanged_by_training():
    net = SpyNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    method = make(impure_feature_weights=[5.0, 1.0])
    method = ImpureTraining(method.config, classifier=method.classifier, features=net)
    assert all(not p.requires_grad for p in net.parameters()) and not net.training
    model = method.prepare_model(autoencoder(), 10).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    out = method.training_step(model, batch())
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    assert net.calls >= 2  # purified and clean, both passes
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # the feature term is part of the step's loss: without it the loss differs
    torch.manual_seed(0)
    plain = ImpureTraining(
        make(impure_feature_weights=[0.0]).config, classifier=method.classifier, features=net
    ).training_step(model, batch())
    assert not torch.allclose(plain.loss, out.loss)


def test_the_default_features_are_three_taps_of_the_classifier():
    method = make()
    clf = method.classifier
    p, c = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)

    def taps(x):  # independent: the blocks by hand
        tokens = clf.patch_embed(x) + clf.pos_embed[:, 1:]
        cls = (clf.cls_token + clf.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        for i, block in enumerate(clf.blocks):
            tokens = block(tokens)
            if i == 2:  # round(0.75 * 4) = 3rd block
                mid = tokens
        final = tokens if clf.config.use_fc_norm else clf.norm(tokens)
        return [mid, final, clf.forward_head(final, pre_logits=True)]

    with torch.no_grad():
        got, want = taps(p), taps(c)
        expected = F.l1_loss(p, c) + sum(
            w * F.l1_loss(a, b) for w, a, b in zip([30.0, 10.0, 10.0], got, want)
        )
        torch.testing.assert_close(method.loss(p, c), expected, rtol=1e-5, atol=1e-6)


def test_feature_network_specs(tmp_path):
    import timm  # a dev dependency
    from safetensors.torch import save_file

    net = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "r10.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    features = build_feature_network(f"timm:resnet10t:{path}", classifier())
    assert torch.equal(features.network.state_dict()["conv1.0.weight"], net.conv1[0].weight)
    assert all(not p.requires_grad for p in features.parameters())
    out = features(torch.rand(2, 1, 16, 16))  # grey images into the RGB network
    assert isinstance(out, list) and len(out) > 1
    vit = classifier(seed=5)
    vit.save(tmp_path / "vit.safetensors")
    from_file = build_feature_network(str(tmp_path / "vit.safetensors"), classifier())
    assert len(from_file(torch.rand(2, 1, 16, 16))) == 3
    for spec, match in [
        ("timm:resnet10t", "WEIGHTS_FILE"),
        (f"timm:resnet10t:{tmp_path / 'missing.pth'}", "no weights file"),
        ("no-such-network", "impure_features"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_feature_network(spec, classifier())
    with pytest.raises(ValueError, match="impure_feature_weights"):
        TrainConfig(impure_feature_weights=[-1.0])


# ---------------------------------------------------------------------- pretraining
@pytest.mark.parametrize("groups", [4, 2])
def test_pretraining_hides_one_kth_of_the_patches(groups):
    method = get_method("impure-pretrain")(
        TrainConfig(method="impure-pretrain", impure_groups=groups)
    )
    assert isinstance(method, ImpurePretraining)
    model = method.prepare_model(autoencoder(), 10).train()
    assert model.config.norm_pix_loss is False
    seen = []
    encode = model.forward_encoder

    def spy(x, mask_ratio=0.75, ids_keep=None):
        latent, mask, ids_restore = encode(x, mask_ratio, ids_keep)
        seen.append(mask.clone())
        return latent, mask, ids_restore

    model.forward_encoder = spy
    b = batch(5)
    torch.manual_seed(3)
    out = method.training_step(model, b)
    (mask,) = seen  # one encoder call: the k passes as one batch
    assert mask.shape == (5 * groups, 16)
    assert mask.sum(1).eq(16 // groups).all()  # each pass hides 1/k of the patches
    per_image = mask.view(5, groups, 16)
    assert per_image.sum(1).eq(1).all()  # the k hidden groups cover every patch once
    model.forward_encoder = encode
    torch.manual_seed(3)
    rebuilt = IMPurePurifier(model, groups)(b.images, clamp=False)
    torch.testing.assert_close(out.loss.detach(), F.l1_loss(rebuilt, b.images).detach())


def test_pretraining_runs_end_to_end(tmp_path):
    result = mf.train(
        method="impure-pretrain",
        model=autoencoder(),
        data="digits",
        epochs=1,
        max_steps=2,
        batch_size=16,
        progress=False,
        eval_every=0,
        checkpoint_every=0,
        out_dir=str(tmp_path),
    )
    assert result.steps == 2
    assert {"loss", "psnr"} <= set(result.final_metrics)
    assert mf.MaskedViT.load(tmp_path / "model.safetensors").config.norm_pix_loss is False


def test_the_settings_are_command_line_flags(capsys):
    import json

    from mimir_fast.cli import main

    argv = ["pretrain", "--method", "impure", "--classifier", "c.safetensors", "--dry-run"]
    argv += ["--impure-attacks", "fgsm", "cw", "--impure-eps", "0.03", "--impure-pixel-weight", "2"]
    argv += ["--impure-feature-weights", "3", "1", "--impure-features", "timm:vgg19_bn:w.pth"]
    assert main(argv + ["--attack-target", "clean"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["impure_attacks"] == ["fgsm", "cw"] and config["impure_eps"] == 0.03
    assert config["impure_pixel_weight"] == 2.0 and config["impure_feature_weights"] == [3.0, 1.0]
    assert config["impure_features"] == "timm:vgg19_bn:w.pth"
    assert config["attack_target"] == "clean"
    assert main(["pretrain", "--method", "impure", "--impure-attacks", "foo", "--dry-run"]) == 2
    assert "impure_attacks" in capsys.readouterr().err
