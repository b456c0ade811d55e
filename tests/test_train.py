"""The training loop: schedule, checkpoints, resume, the method seam, validation."""

import json
import math
from pathlib import Path

import mimir_fast
import numpy as np
import pytest
import torch
from mimir_fast import Batch, Method, StepOutput, TrainConfig, register_method, train
from mimir_fast.data import ArrayDataset
from mimir_fast.data.augmentations import crop_with_padding_and_flip
from mimir_fast.training import CHECKPOINT_NAME, learning_rate, load_checkpoint, save_checkpoint

TINY = {
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "img_size": 16,
}


def tiny_data(n=48, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16, 1), dtype=np.uint8)
    labels = np.arange(n) % classes
    return ArrayDataset(images, labels)


def tiny_config(tmp_path, **kw):
    base = dict(
        method="mae",
        model="vit_tiny_patch4_32",
        model_overrides=TINY,
        epochs=2,
        batch_size=8,
        blr=1e-3,
        warmup_epochs=1,
        out_dir=str(tmp_path),
        progress=False,
        log_every=1,
        eval_every=1,
        checkpoint_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def run(cfg, **kw):
    return train(cfg, train_data=tiny_data(), test_data=tiny_data(12, seed=1), **kw)


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_learning_rate_schedule():
    peak, floor, warm, total = 1e-3, 1e-5, 10, 110
    assert learning_rate(0, total, warm, peak, floor) == 0.0
    assert learning_rate(5, total, warm, peak, floor) == pytest.approx(peak / 2)
    assert learning_rate(warm, total, warm, peak, floor) == pytest.approx(peak)
    assert learning_rate(60, total, warm, peak, floor) == pytest.approx((peak + floor) / 2)
    assert learning_rate(total, total, warm, peak, floor) == pytest.approx(floor)
    lrs = [learning_rate(s, total, warm, peak, floor) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # cosine part never rises


def test_mae_run_writes_everything_and_learns(tmp_path):
    result = run(tiny_config(tmp_path, epochs=3))
    out = Path(tmp_path)
    for name in (
        "metrics.jsonl",
        "metrics.csv",
        CHECKPOINT_NAME,
        "model.safetensors",
        "summary.json",
        "config.json",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(train_losses) == result.steps == 3 * (48 // 8)
    assert np.mean(train_losses[-4:]) < np.mean(train_losses[:4])
    assert all(math.isfinite(x) for x in train_losses)
    assert sum(r["split"] == "test" for r in records) >= 1
    # the saved model reproduces the trained one
    loaded = mimir_fast.MaskedViT.load(out / "model.safetensors")
    for k, v in result.model.state_dict().items():
        assert torch.equal(v.cpu(), loaded.state_dict()[k]), k
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*tmp"))


@register_method
class CrashingMAE(mimir_fast.methods.MAEPretraining):
    """MAE whose 10th step raises, as a process killed mid-epoch would stop."""

    name = "test-crashing-mae"
    crash_at = 10
    calls = 0

    def training_step(self, model, batch):
        type(self).calls += 1
        if type(self).calls == self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        return super().training_step(model, batch)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    steps_per_epoch = 48 // 8
    reference = run(tiny_config(tmp_path / "ref", epochs=3))
    expected = state_of(reference.model)

    # the same run, killed at its 10th step (mid second epoch) with checkpoints every 4 steps
    cfg = tiny_config(tmp_path / "crash", epochs=3, method="test-crashing-mae", checkpoint_steps=4)
    CrashingMAE.calls = 0
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    ckpt = tmp_path / "crash" / CHECKPOINT_NAME
    from mimir_fast._io import load_tensors

    assert load_tensors(ckpt)[1]["step"] == 8  # the last complete checkpoint before the kill
    CrashingMAE.calls = 10**6  # no more crashes
    resumed = run(cfg, resume="auto")
    assert resumed.steps == 3 * steps_per_epoch
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, expected[k]), f"{k} differs after resume"
    # same schedule: logged learning rates after the resume point equal the reference's
    ref_lr = {r["step"]: r["lr"] for r in reference.history if r["split"] == "train"}
    res_lr = {r["step"]: r["lr"] for r in resumed.history if r["split"] == "train"}
    assert res_lr == ref_lr
    assert len([r for r in resumed.history if r["split"] == "train"]) == 3 * steps_per_epoch


@pytest.mark.parametrize("loader", ["native", "torch"])
def test_max_steps_then_resume_continues_the_schedule(tmp_path, loader):
    full = run(tiny_config(tmp_path / "full", epochs=2, loader=loader))
    cfg = tiny_config(tmp_path / "part", epochs=2, loader=loader)
    first = run(cfg, max_steps=5)
    assert first.steps == 5
    second = run(cfg, resume=str(tmp_path / "part" / CHECKPOINT_NAME))
    assert second.steps == full.steps
    for k, v in second.model.state_dict().items():
        assert torch.equal(v, full.model.state_dict()[k]), k


def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1)
    run(cfg)
    ckpt = tmp_path / CHECKPOINT_NAME
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        run(cfg, resume=str(ckpt))
    ckpt.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="safetensors"):
        run(cfg, resume=str(ckpt))
    with pytest.raises(FileNotFoundError):
        run(cfg, resume=str(tmp_path / "missing.safetensors"))


def test_damaged_optimizer_entries_raise_clear_error(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cfg = tiny_config(tmp_path, epochs=1)
    run(cfg)
    ckpt = tmp_path / CHECKPOINT_NAME
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(ckpt))
    step_key = next(k for k in tensors if k.startswith("optim.") and k.endswith(".step"))
    for renamed in (step_key.replace(".step", ".stepp"), "optim.x.step", "optim.7"):
        damaged = dict(tensors)
        damaged[renamed] = damaged.pop(step_key)
        path = tmp_path / "damaged.safetensors"
        save_file(damaged, str(path), metadata=meta)
        with pytest.raises(ValueError, match="damaged"):
            run(cfg, resume=str(path))


def test_mismatched_checkpoint_raises_clear_error(tmp_path):
    run(tiny_config(tmp_path / "a", epochs=1))
    ckpt = str(tmp_path / "a" / CHECKPOINT_NAME)
    wider = tiny_config(tmp_path / "b", epochs=1, model_overrides={**TINY, "embed_dim": 48})
    with pytest.raises(ValueError, match="different model architecture"):
        run(wider, resume=ckpt)
    other_batch = tiny_config(tmp_path / "c", epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        run(other_batch, resume=ckpt)
    # a plain model file is not a training checkpoint
    with pytest.raises(ValueError, match="not a mimir-fast training checkpoint"):
        run(tiny_config(tmp_path / "d", epochs=1), resume=str(tmp_path / "a" / "model.safetensors"))


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=1)
    result = run(cfg)
    ckpt = tmp_path / CHECKPOINT_NAME
    before = ckpt.read_bytes()

    def broken_save(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(mimir_fast._io, "save_file", broken_save)
    opt = torch.optim.AdamW(result.model.param_groups())
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, result.model, opt, cfg, 99, 1)
    assert ckpt.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    monkeypatch.undo()
    model = mimir_fast.MaskedViT.load(ckpt)  # a checkpoint is also a loadable model file
    assert (
        load_checkpoint(ckpt, model, torch.optim.AdamW(model.param_groups()), cfg) == result.steps
    )


def test_finetune_starts_from_pretrained_weights(tmp_path):
    pre = run(tiny_config(tmp_path / "pre", epochs=1))
    pretrained = state_of(pre.model)
    seen = {}

    @register_method
    class Probe(mimir_fast.methods.Finetuning):
        name = "test-probe-finetune"

        def training_step(self, model, batch):
            if not seen:
                seen.update({k: v.clone() for k, v in model.state_dict().items()})
            return super().training_step(model, batch)

    data = tiny_data(classes=5)
    result = train(
        tiny_config(
            tmp_path / "fin",
            method="test-probe-finetune",
            epochs=1,
            pretrained=str(tmp_path / "pre" / "model.safetensors"),
            model_overrides={},
        ),
        train_data=data,
        test_data=tiny_data(12, seed=1, classes=5),
    )
    assert result.model.num_classes == 5  # head replaced for the new label set
    for k, v in pretrained.items():
        if k.startswith(("blocks", "patch_embed", "cls_token")):
            assert torch.equal(seen[k], v), k
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0


def test_custom_method_plugs_into_the_seam(tmp_path):
    seen_extras = []

    @register_method
    class Denoise(Method):
        name = "test-denoise"
        task = "pretrain"

        def training_step(self, model, batch: Batch) -> StepOutput:
            noisy = batch.images + 0.1 * torch.randn_like(batch.images)
            seen_extras.append(batch.extras)
            loss, _ = model.forward_denoise(noisy, batch.images)
            return StepOutput(loss, {"loss": loss.detach()})

        def evaluate(self, model, batches):
            return {"batches": float(sum(1 for _ in batches))}

    result = run(tiny_config(tmp_path, method="test-denoise", epochs=1))
    assert result.steps == 6 and len(seen_extras) == 6
    assert result.final_metrics == {"batches": 2.0}


def test_unknown_method_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        run(tiny_config(tmp_path, method="nope"))
    bad = [
        dict(epochs=0),
        dict(batch_size=0),
        dict(mask_ratio=1.0),
        dict(lr=-1.0),
        dict(betas=(0.9, 1.5)),
        dict(layer_decay=0.0),
        dict(augment="rotate"),
        dict(amp="fp8"),
        dict(clip_grad=0.0),
    ]
    for kw in bad:
        with pytest.raises(ValueError, match="invalid TrainConfig"):
            tiny_config(tmp_path, **kw)
    with pytest.raises(ValueError, match="larger than the training set"):
        run(tiny_config(tmp_path, batch_size=1000))
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochs": 1, "epochz": 2})


def test_data_model_mismatch_is_reported(tmp_path):
    rgb = ArrayDataset(
        np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
        np.arange(16) % 2,
    )
    with pytest.raises(ValueError, match="1-channel|3-channel"):
        train(
            tiny_config(tmp_path),
            model=mimir_fast.MaskedViT(in_chans=1, **TINY),
            train_data=rgb,
            test_data=rgb,
        )


def test_batch_augmentation_matches_per_sample_slicing():
    images = torch.rand(5, 3, 8, 8)
    gen = torch.Generator().manual_seed(3)
    out = crop_with_padding_and_flip(images, padding=2, generator=gen)
    gen = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 5, (5, 2), generator=gen)
    flips = torch.rand(5, generator=gen) < 0.5
    for i in range(5):
        padded = torch.zeros(3, 12, 12)
        padded[:, 2:10, 2:10] = images[i]
        top, left = offsets[i].tolist()
        crop = padded[:, top : top + 8, left : left + 8]
        if flips[i]:
            crop = torch.flip(crop, dims=[2])
        assert torch.equal(out[i], crop), i
    same = crop_with_padding_and_flip(images, padding=0, flip=False)
    assert torch.equal(same, images)


def test_native_loader_feeds_masks_and_sigmas_to_methods(tmp_path):
    seen = {}

    @register_method
    class Probe(mimir_fast.methods.MAEPretraining):
        name = "test-probe-loader"
        loader_masks = 2
        loader_sigma = True

        def training_step(self, model, batch):
            seen.setdefault("extras", {k: v.clone() for k, v in batch.extras.items()})
            seen.setdefault("images", batch.images.clone())
            return super().training_step(model, batch)

    run(
        tiny_config(
            tmp_path, method="test-probe-loader", epochs=1, max_steps=1, noise="constant:30"
        )
    )
    extras = seen["extras"]
    len_keep = int(16 * (1 - 0.75))  # 16x16 images, patch 4: 16 patches
    assert extras["ids_keep"].shape == extras["ids_keep_1"].shape == (8, len_keep)
    assert not torch.equal(extras["ids_keep"], extras["ids_keep_1"])  # independent masks
    assert torch.equal(extras["sigma"], torch.full((8,), 30.0))
    assert (
        seen["images"].dtype == torch.float32
        and 0 <= seen["images"].min()
        and seen["images"].max() <= 1
    )


def test_loader_choice_is_validated(tmp_path):
    with pytest.raises(ValueError, match="loader"):
        tiny_config(tmp_path, loader="dali")
    with pytest.raises(ValueError, match="rrc_flip"):
        run(tiny_config(tmp_path, loader="torch", augment="rrc_flip"))
