"""Tests for mimir_fast.report: loss curves, reconstruction grids, markdown tables, atomic JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mimir_fast
import numpy as np
import pytest
import torch
from mimir_fast.report import (
    format_table,
    load_records,
    plot_loss_curves,
    save_reconstruction_grid,
    write_json,
)
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_pixels(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _records(with_accuracy: bool = False) -> list[dict]:
    out = []
    for step in range(1, 21):
        r = {"step": step, "epoch": step // 10, "split": "train", "loss": 2.0 / step, "lr": 1e-3}
        if with_accuracy:
            r["accuracy"] = min(1.0, step / 20)
        out.append(r)
        if step % 10 == 0:
            t = {"step": step, "epoch": step // 10, "split": "test", "loss": 2.5 / step}
            if with_accuracy:
                t["accuracy"] = step / 25
            out.append(t)
    return out


def _tiny_model(norm_pix_loss: bool = True, in_chans: int = 1) -> mimir_fast.MaskedViT:
    torch.manual_seed(0)
    return mimir_fast.MaskedViT(
        img_size=16,
        patch_size=4,
        in_chans=in_chans,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
        num_classes=3,
        norm_pix_loss=norm_pix_loss,
        kernels="torch",
    )


def _images(n: int = 5, c: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, c, 16, 16, generator=torch.Generator().manual_seed(seed))


# --- loss curves -----------------------------------------------------------------------------


def test_plot_loss_curves_from_records(tmp_path):
    out = plot_loss_curves(_records(), tmp_path / "sub" / "loss.png", title="MAE")
    assert out == tmp_path / "sub" / "loss.png"
    pixels = _png_pixels(out)
    h, w, _ = pixels.shape
    assert h >= 200 and w >= 300
    assert pixels.std() > 0  # something was drawn
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]  # no temp file left


def test_plot_loss_curves_adds_an_accuracy_panel(tmp_path):
    loss_only = _png_pixels(plot_loss_curves(_records(), tmp_path / "a.png"))
    with_acc = _png_pixels(plot_loss_curves(_records(with_accuracy=True), tmp_path / "b.png"))
    assert with_acc.shape[0] > loss_only.shape[0] * 1.5  # a second row of panels
    assert with_acc.shape[1] == loss_only.shape[1]


def test_plot_loss_curves_from_jsonl_and_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(r) for r in _records()] + ['{"step": 21, "split": "tr']  # a line cut short
    (run / "metrics.jsonl").write_text("\n".join(lines))
    assert len(load_records(run / "metrics.jsonl")) == len(_records())
    assert load_records(run) == load_records(run / "metrics.jsonl")
    a = _png_pixels(plot_loss_curves(run / "metrics.jsonl", tmp_path / "a.png"))
    b = _png_pixels(plot_loss_curves(str(run), tmp_path / "b.png"))
    c = _png_pixels(plot_loss_curves(_records(), tmp_path / "c.png"))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    with pytest.raises(FileNotFoundError):
        plot_loss_curves(tmp_path / "missing.jsonl", tmp_path / "d.png")


def test_plot_loss_curves_several_runs_side_by_side(tmp_path):
    jsonl = tmp_path / "finetune.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in _records(with_accuracy=True)))
    single = _png_pixels(plot_loss_curves(_records(), tmp_path / "one.png"))
    both = _png_pixels(
        plot_loss_curves(
            {"pretrain": _records(), "finetune": jsonl}, tmp_path / "two.png", title="demo"
        )
    )
    assert both.shape[1] > single.shape[1] * 1.5  # two columns
    assert both.shape[0] > single.shape[0] * 1.5  # accuracy row (finetuning has accuracy)
    with pytest.raises(ValueError):
        plot_loss_curves({}, tmp_path / "none.png")


# --- reconstruction grid ---------------------------------------------------------------------


def test_reconstruction_grid_is_deterministic_and_keeps_state(tmp_path):
    model = _tiny_model()
    images = _images(5)
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    a = save_reconstruction_grid(model, images, tmp_path / "a.png", seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert model.training  # train mode restored
    b = save_reconstruction_grid(model, images, tmp_path / "b.png", seed=3)
    c = save_reconstruction_grid(model, images, tmp_path / "c.png", seed=4)
    pa, pb, pc = _png_pixels(a), _png_pixels(b), _png_pixels(c)
    assert a.read_bytes() == b.read_bytes()
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)  # another seed, other masks
    assert pa.shape[0] > 200 and pa.shape[1] > 300  # 4 rows x 5 columns


def test_reconstruction_grid_restores_eval_mode_and_limits_images(tmp_path):
    model = _tiny_model()
    model.eval()
    few = _png_pixels(
        save_reconstruction_grid(model, _images(8), tmp_path / "few.png", max_images=2)
    )
    many = _png_pixels(
        save_reconstruction_grid(model, _images(8), tmp_path / "many.png", max_images=8)
    )
    assert not model.training
    assert many.shape[1] > few.shape[1] * 2
    assert few.shape[0] == many.shape[0]


def test_reconstruction_grid_shows_masked_patches_and_pastes_prediction(tmp_path, monkeypatch):
    """The rows are built as MAE shows them: grey masked patches; visible patches kept."""
    import matplotlib.axes

    drawn: list[np.ndarray] = []
    real_imshow = matplotlib.axes.Axes.imshow

    def spy(self, array, *args, **kwargs):
        drawn.append(np.array(array))
        return real_imshow(self, array, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    model = _tiny_model(norm_pix_loss=False)
    images = _images(2)
    save_reconstruction_grid(model, images, tmp_path / "g.png", mask_ratio=0.5, seed=0)
    assert len(drawn) == 4 * 2
    original, masked, recon, pred = (drawn[r * 2] for r in range(4))  # first image of each row
    assert original.shape == (16, 16)
    grey = masked == 0.5
    visible = ~grey
    assert 0.3 < grey.mean() < 0.7  # about half of the pixels are masked
    np.testing.assert_allclose(masked[visible], original[visible])
    np.testing.assert_allclose(recon[visible], original[visible])
    np.testing.assert_allclose(recon[grey], pred[grey])
    assert pred.min() >= 0 and pred.max() <= 1
    # the prediction is the model's own decoding of the same masks
    from mimir_fast.ops import random_masking

    ids_keep, _, _ = random_masking(
        2,
        model.num_patches,
        0.5,
        "cpu",
        torch.rand(2, model.num_patches, generator=torch.Generator().manual_seed(0)),
    )
    model.eval()
    with torch.no_grad():
        _, p, _ = model.forward_mae(images, 0.5, ids_keep=ids_keep)
    expected = model.pred_to_image(p).clamp(0, 1)[0, 0].numpy()
    np.testing.assert_allclose(pred, expected, atol=1e-6)


def test_reconstruction_grid_rgb_and_other_channel_counts(tmp_path, monkeypatch):
    import matplotlib.axes

    shapes: list[tuple] = []
    real_imshow = matplotlib.axes.Axes.imshow

    def spy(self, array, *args, **kwargs):
        shapes.append((np.shape(array), kwargs.get("cmap")))
        return real_imshow(self, array, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    save_reconstruction_grid(_tiny_model(in_chans=3), _images(2, 3), tmp_path / "rgb.png")
    assert set(shapes) == {((16, 16, 3), None)}
    shapes.clear()
    save_reconstruction_grid(_tiny_model(in_chans=2), _images(2, 2), tmp_path / "two.png")
    assert set(shapes) == {((16, 16), "gray")}
    with pytest.raises(ValueError):
        save_reconstruction_grid(_tiny_model(), _images(2), tmp_path / "bad.png", mask_ratio=1.0)


# --- tables ----------------------------------------------------------------------------------


def test_format_table_exact():
    rows = [
        {"method": "mae", "loss": 0.123456, "steps": 1200},
        {"method": "finetune", "loss": 1.5, "accuracy": 0.987654, "steps": 30},
    ]
    expected = (
        "| method   |   loss | steps | accuracy |\n"
        "| -------- | -----: | ----: | -------: |\n"
        "| mae      | 0.1235 |  1200 |          |\n"
        "| finetune |    1.5 |    30 |   0.9877 |"
    )
    assert format_table(rows) == expected


def test_format_table_columns_and_escaping():
    rows = [{"a": "x|y", "b": None, "c": True, "d": 12345.678}]
    assert format_table(rows, columns=["d", "a"]) == (
        "|         d | a    |\n| --------: | ---- |\n| 1.235e+04 | x\\|y |"
    )
    assert format_table(rows, columns=["c"]) == "| c    |\n| ---- |\n| True |"
    assert format_table([]) == ""
    assert format_table([{"x": np.float32(0.5), "y": torch.tensor(2)}]) == (
        "|   x |   y |\n| --: | --: |\n| 0.5 |   2 |"
    )


# --- json ------------------------------------------------------------------------------------


def test_write_json_round_trips_atomically(tmp_path, monkeypatch):
    obj = {
        "name": "mae",
        "loss": 0.25,
        "betas": (0.9, 0.95),
        "nested": {"ok": True, "none": None},
        "path": tmp_path / "x",
        "array": np.arange(3),
        "tensor": torch.tensor([1.5]),
    }
    out = write_json(obj, tmp_path / "d" / "summary.json")
    assert out == tmp_path / "d" / "summary.json"
    text = out.read_text()
    assert text.endswith("\n") and "\n  " in text  # indented
    assert json.loads(text) == {
        "name": "mae",
        "loss": 0.25,
        "betas": [0.9, 0.95],
        "nested": {"ok": True, "none": None},
        "path": str(tmp_path / "x"),
        "array": [0, 1, 2],
        "tensor": [1.5],
    }
    assert os.listdir(tmp_path / "d") == ["summary.json"]

    # a failing write leaves the old file intact and no temp file behind
    with pytest.raises(TypeError):
        write_json({"bad": object()}, out)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json({"new": 1}, out)
    monkeypatch.undo()
    assert json.loads(out.read_text())["name"] == "mae"
    assert os.listdir(tmp_path / "d") == ["summary.json"]


# --- evaluation report: the worst case where people look ---------------------------------------


def _evaluation_report() -> dict:
    """A report as mimir_fast.evaluate returns it (two attacks at two eps), built by hand."""

    def row(attack, eps, acc, kind="iterative"):
        return {"attack": attack, "eps": eps, "kind": kind, "robust_accuracy": acc}

    results = [
        dict(row("pgd", 2 / 255, 0.7), attack_success_rate=0.2, seconds=1.0),
        dict(row("pgd", 8 / 255, 0.4), attack_success_rate=0.5, seconds=1.0),
        dict(row("autoattack", 2 / 255, 0.65), attack_success_rate=0.3, seconds=2.0),
        dict(row("autoattack", 8 / 255, 0.35), attack_success_rate=0.6, seconds=2.0),
    ]
    return {
        "clean_accuracy": 0.9,
        "n_images": 20,
        "norm": "linf",
        "eps": [2 / 255, 8 / 255],
        "threat": "white",
        "defense": "GaussianNoise()",
        "random_pipeline": True,
        "eot_samples": 20,
        "results": results,
        "worst_case": [
            {"eps": 2 / 255, "robust_accuracy": 0.6, "attacks": ["autoattack", "pgd"]},
            {"eps": 8 / 255, "robust_accuracy": 0.3, "attacks": ["autoattack", "pgd"]},
        ],
        "reconstruction": [],
        "sanity": [row("pgd@large_eps", 0.5, 0.0)],
        "more_steps": [dict(row("pgd@80_steps", 8 / 255, 0.38), fewer_steps="pgd")],
        "warnings": [],
        "descriptions": {"autoattack": "AutoAttack standard, Square 1000 queries"},
    }


def test_evaluation_table_has_a_worst_case_column():
    from mimir_fast.report.evaluation import WORST_CASE, accuracy_by_eps, evaluation_markdown

    report = _evaluation_report()
    table = accuracy_by_eps(report)
    aa = "autoattack (AutoAttack standard, Square 1000 queries)"
    assert [list(r) for r in table] == [["eps", "clean", "pgd", aa, WORST_CASE]] * 2
    assert [r[WORST_CASE] for r in table] == [0.6, 0.3]
    assert [r["eps"] for r in table] == ["2/255", "8/255"]
    md = evaluation_markdown(report)
    assert format_table(table) in md
    assert "white-box, defense GaussianNoise(), EOT 20)" in md.splitlines()[0]
    assert aa in md and "pgd@80_steps" in md


def test_evaluation_plot_draws_the_worst_case(tmp_path):
    from mimir_fast.report.evaluation import WORST_CASE, plot_robust_accuracy
    from mimir_fast.report.evaluation import robust_accuracy_series as series

    report = _evaluation_report()
    lines = series(report)
    assert list(lines) == [
        "pgd",
        "autoattack (AutoAttack standard, Square 1000 queries)",
        WORST_CASE,
    ]
    assert lines[WORST_CASE] == [(pytest.approx(2.0), 0.6), (pytest.approx(8.0), 0.3)]
    assert plot_robust_accuracy(report, tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
