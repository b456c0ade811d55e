"""IMPure purification: regional intersection, random combination, loss."""

import mimir_fast as mf
import pytest
import torch
import torch.nn.functional as F
from mimir_fast.defenses import IMPurePurifier, impure_loss

TINY = dict(
    img_size=16,
    patch_size=4,
    in_chans=3,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    norm_pix_loss=False,
)


@pytest.fixture
def purifier():
    torch.manual_seed(0)
    return IMPurePurifier(mf.MaskedViT(**TINY).eval(), num_groups=4)


def test_a_patch_is_never_rebuilt_from_its_own_pixels(purifier):
    ae = purifier.autoencoder
    x = torch.rand(3, 3, 16, 16)
    order = purifier.group_order(3, x.device)
    with torch.no_grad():
        base = ae.patchify(purifier(x, order))
        for sample in range(3):
            for g in range(4):
                group = order[sample, g * 4 : (g + 1) * 4]
                patches = ae.patchify(x)
                patches[sample, group] = torch.rand_like(
                    patches[sample, group]
                )  # perturb one group
                out = ae.patchify(purifier(ae.unpatchify(patches), order))
                changed = (out - base).abs().amax(dim=-1)  # (N, L)
                assert torch.equal(changed[sample, group], torch.zeros(4)), (sample, g)
                others = torch.ones(16, dtype=torch.bool)
                others[group] = False
                assert (changed[sample, others] > 0).all()  # the other groups do see it
                assert torch.equal(
                    changed[[s for s in range(3) if s != sample]], torch.zeros(2, 16)
                )


def test_batched_passes_equal_one_pass_per_group(purifier):
    ae = purifier.autoencoder
    x = torch.rand(2, 3, 16, 16)
    order = purifier.group_order(2, x.device)
    with torch.no_grad():
        got = ae.patchify(purifier(x, order))
        want = torch.empty_like(got)
        for i in range(2):
            for g in range(4):
                hidden = order[i, g * 4 : (g + 1) * 4]
                kept = torch.tensor([j for j in order[i].tolist() if j not in hidden.tolist()])
                latent, _, restore = ae.forward_encoder(x[i : i + 1], ids_keep=kept[None])
                pred = ae.forward_decoder(latent, restore)[0]
                want[i, hidden] = pred[hidden].clamp(0, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_random_combination_pastes_a_fraction_of_patches(purifier):
    ae = purifier.autoencoder
    torch.manual_seed(3)
    x_adv = torch.zeros(64, 3, 16, 16)
    purified = torch.ones(64, 3, 16, 16)
    mixed = ae.patchify(purifier.random_combination(x_adv, purified))
    per_patch = mixed.mean(dim=-1)  # 1 where pasted, 0 where kept
    assert set(per_patch.unique().tolist()) <= {0.0, 1.0}
    counts = per_patch.sum(dim=1).long().tolist()
    assert set(counts) <= {16 // 2, 16 // 3, 16 // 4} and len(set(counts)) > 1


def test_impure_loss_matches_formula():
    purified, clean = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    feats = lambda t: [t.mean(dim=1), t.amax(dim=(2, 3))]  # noqa: E731
    got = impure_loss(purified, clean, feats, pixel_weight=2.0, feature_weights=[30.0, 10.0])
    want = (
        2.0 * (purified - clean).abs().mean()
        + 30.0 * (purified.mean(1) - clean.mean(1)).abs().mean()
        + 10.0 * (purified.amax(dim=(2, 3)) - clean.amax(dim=(2, 3))).abs().mean()
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert impure_loss(purified, clean).item() == pytest.approx(F.l1_loss(purified, clean).item())
    with pytest.raises(ValueError, match="feature weights"):
        impure_loss(purified, clean, feats, feature_weights=[1.0])


def test_bad_configuration():
    with pytest.raises(ValueError, match="norm_pix_loss"):
        IMPurePurifier(mf.MaskedViT(**{**TINY, "norm_pix_loss": True}))
    for k in (1, 3, 2.0):
        with pytest.raises(ValueError, match="num_groups"):
            IMPurePurifier(mf.MaskedViT(**TINY), num_groups=k)


def test_unclamped_output_is_the_raw_prediction():
    torch.manual_seed(0)
    ae = mf.MaskedViT(
        img_size=16,
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
        norm_pix_loss=False,
    )
    purifier = IMPurePurifier(ae, 4)
    x = torch.rand(3, 1, 16, 16)
    order = purifier.group_order(3, x.device)
    raw = purifier(x, order, clamp=False)
    assert torch.equal(raw.clamp(0, 1), purifier(x, order))
    assert (
        (raw < 0) | (raw > 1)
    ).any()  # an untrained decoder leaves [0, 1]: training must see that
