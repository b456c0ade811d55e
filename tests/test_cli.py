"""Tests for the mimir-fast command line (mimir_fast.cli, python -m mimir_fast)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types

import numpy as np
import pytest
from mimir_fast import TrainConfig
from mimir_fast._config_types import parse_annotation
from mimir_fast.cli import load_config_file, main
from mimir_fast.cli.train_fields import field_help as field_comments

TINY = {
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


def run(argv, capsys):
    """main(argv) in-process -> (status, stdout, stderr); SystemExit is turned into its status."""
    try:
        code = main(argv)
    except SystemExit as e:  # pragma: no cover - main returns argparse's status itself
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def dry_run(argv, capsys) -> dict:
    code, out, err = run(argv + ["--dry-run"], capsys)
    assert code == 0, err
    return json.loads(out)


def squash(text: str) -> str:
    return "".join(text.split())  # argparse wraps (and hyphen-breaks) help lines


# --- help ------------------------------------------------------------------------------------


def test_field_comments_come_from_train_py():
    comments = field_comments()
    assert comments["mask_ratio"] == "fraction of patches removed (MAE)"
    assert comments["lr"].startswith("peak learning rate")
    assert comments["num_workers"] == "DataLoader worker processes"


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_help_lists_every_field_with_its_comment(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    flat = squash(out)
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    comments = field_comments()
    assert len(comments) >= 10
    for name, comment in comments.items():
        assert squash(comment) in flat, name
    for name in ("mask_ratio", "lr", "data", "progress"):
        assert squash(comments[name]) in flat
    assert "--no-progress" in out
    assert "--config" in out
    assert squash("(default: 0.75)") in flat  # mask_ratio's default
    assert squash(f"(default: {'mae' if command == 'pretrain' else 'finetune'})") in flat


def test_top_level_help_and_usage_errors(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("pretrain", "finetune", "demo", "info"):
        assert command in out
    code, _, err = run([], capsys)
    assert code == 2 and "error" in err
    code, _, err = run(["pretrain", "--no-such-flag"], capsys)
    assert code == 2 and "--no-such-flag" in err
    code, _, err = run(["pretrain", "--epochs", "ten"], capsys)
    assert code == 2 and "--epochs" in err


def test_annotation_parsing():
    assert parse_annotation("int").base == "int"
    assert parse_annotation("float | None").optional
    assert parse_annotation("Optional[int]").base == "int"
    t = parse_annotation("tuple[float, float]")
    assert (t.base, t.items) == ("tuple", ("float", "float"))
    assert parse_annotation("dict[str, Any]").base == "dict"
    assert parse_annotation("SomethingElse").base == "any"


# --- flags -----------------------------------------------------------------------------------


def test_flags_are_converted_by_type(capsys):
    cfg = dry_run(
        [
            "pretrain",
            "--batch-size",
            "8",
            "--batch_size",
            "12",
            "--lr",
            "0.001",
            "--clip-grad",
            "none",
            "--max_steps",
            "7",
            "--betas",
            "0.8",
            "0.99",
            "--no-progress",
            "--model-overrides",
            '{"depth": 4}',
            "--resume",
            "None",
            "--data=digits",
        ],
        capsys,
    )
    assert cfg["batch_size"] == 12  # underscore spelling; the last one wins
    assert cfg["lr"] == 0.001 and cfg["clip_grad"] is None and cfg["max_steps"] == 7
    assert cfg["betas"] == [0.8, 0.99]
    assert cfg["progress"] is False
    assert cfg["model_overrides"] == {"depth": 4}
    assert cfg["resume"] is None
    assert cfg["method"] == "mae" and cfg["out_dir"] == "runs/mae"
    defaults = TrainConfig().to_dict()
    assert cfg["mask_ratio"] == defaults["mask_ratio"] and cfg["seed"] == defaults["seed"]


def test_finetune_defaults_and_method_checks(capsys):
    cfg = dry_run(["finetune", "--layer_decay", "0.65"], capsys)
    assert (
        cfg["method"] == "finetune"
        and cfg["layer_decay"] == 0.65
        and cfg["out_dir"] == "runs/finetune"
    )
    code, _, err = run(["finetune", "--method", "mae"], capsys)
    assert code == 2 and "mimir-fast pretrain" in err
    code, _, err = run(["pretrain", "--method", "nonsense"], capsys)
    assert code == 2 and err.startswith("mimir-fast: error:") and "nonsense" in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--model-overrides", "[1, 2]"], "JSON object"),
        (["--model-overrides", "{bad"], "JSON"),
        (["--betas", "0.9"], "--betas"),
        (["--max-steps", "x"], "--max-steps"),
    ],
)
def test_bad_flag_values_exit_2(argv, fragment, capsys):
    code, _, err = run(["pretrain"] + argv, capsys)
    assert code == 2
    assert fragment in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--epochs", "-1"], "epochs must be >= 1"),
        (["--mask-ratio", "1.5"], "mask_ratio"),
        (["--betas", "0.9", "1.5"], "betas"),
        (["--augment", "rotate"], "augment"),
        (["--model-overrides", '{"dept": 4}'], "unknown model_overrides keys ['dept']"),
    ],
)
def test_invalid_config_values_exit_2_without_traceback(argv, fragment, capsys):
    code, out, err = run(["pretrain", "--dry-run"] + argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("mimir-fast: error: ") and fragment in err
    assert "Traceback" not in err


# --- config files ----------------------------------------------------------------------------

CONFIG_TEXTS = {
    "flat.toml": "epochs = 3\nbatch_size = 32\nbetas = [0.8, 0.9]\nlr = 0.01\n"
    "model_overrides = { depth = 2 }\nprogress = false\n",
    "table.toml": "[train]\nepochs = 3\nbatch-size = 32\nbetas = [0.8, 0.9]\nlr = 0.01\n"
    "progress = false\n[train.model_overrides]\ndepth = 2\n",
    "flat.json": json.dumps(
        {
            "epochs": 3,
            "batch_size": 32,
            "betas": [0.8, 0.9],
            "lr": 0.01,
            "model_overrides": {"depth": 2},
            "progress": False,
        }
    ),
    "table.json": json.dumps(
        {
            "train": {
                "epochs": 3,
                "batch_size": 32,
                "betas": [0.8, 0.9],
                "lr": 0.01,
                "model_overrides": {"depth": 2},
                "progress": False,
            }
        }
    ),
    "flat.yaml": "epochs: 3\nbatch_size: 32\nbetas: [0.8, 0.9]\nlr: 1e-2\n"
    "model_overrides: {depth: 2}\n"
    "progress: false\n",
    "table.yml": "train:\n  epochs: 3\n  batch_size: 32\n  betas: [0.8, 0.9]\n  lr: 0.01\n"
    "  model_overrides:\n    depth: 2\n  progress: false\n",
}


@pytest.mark.parametrize("name", sorted(CONFIG_TEXTS))
def test_config_files(name, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(CONFIG_TEXTS[name])
    expected = {
        "epochs": 3,
        "batch_size": 32,
        "betas": (0.8, 0.9),
        "lr": 0.01,
        "model_overrides": {"depth": 2},
        "progress": False,
    }
    values = load_config_file(path)
    assert values == expected
    assert isinstance(values["lr"], float)  # YAML reads 1e-2 as a string; it is converted
    cfg = dry_run(["pretrain", "--config", str(path)], capsys)
    assert cfg["epochs"] == 3 and cfg["batch_size"] == 32 and cfg["betas"] == [0.8, 0.9]
    assert cfg["model_overrides"] == {"depth": 2} and cfg["progress"] is False
    assert cfg["mask_ratio"] == TrainConfig().mask_ratio  # not in the file: the default


def test_flags_override_config_file(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(
        '[train]\nepochs = 3\nbatch_size = 32\nmethod = "mae"\n'
        'out_dir = "from-file"\nprogress = false\n'
    )
    cfg = dry_run(["pretrain", "--config", str(path), "--batch-size", "4", "--progress"], capsys)
    assert cfg["epochs"] == 3  # from the file
    assert cfg["batch_size"] == 4  # the flag wins
    assert cfg["progress"] is True
    assert cfg["out_dir"] == "from-file"
    # the file's method is kept, and checked against the subcommand
    code, _, err = run(["finetune", "--config", str(path), "--dry-run"], capsys)
    assert code == 2 and "pretrain" in err
    cfg = dry_run(["finetune", "--config", str(path), "--method", "finetune"], capsys)
    assert cfg["method"] == "finetune" and cfg["epochs"] == 3


@pytest.mark.parametrize(
    "text, suffix, fragment",
    [
        ("epochs = 3\nbatchsize = 4\nfoo = 1\n", ".toml", "unknown keys ['batchsize', 'foo']"),
        ("[train]\nepochs = 3\n[other]\nx = 1\n", ".toml", "unknown top-level keys ['other']"),
        ('{"train": {"epoch": 3}}', ".json", "unknown keys ['epoch']"),
        ("epochs: -2\n", ".yaml", "epochs must be >= 1"),
        ('epochs = "many"\n', ".toml", "epochs must be an integer"),
        ("batch_size = 4.5\n", ".toml", "batch_size must be an integer"),
        ("betas = [0.9]\n", ".toml", "betas must be a list of 2 values"),
        ("progress = 3\n", ".toml", "progress must be true or false"),
        ("epochs = \n", ".toml", "not valid TOML"),
        ("[1, 2]", ".json", "must hold a table"),
        ("epochs = 3\n", ".ini", "unsupported format"),
    ],
)
def test_bad_config_files_exit_2(text, suffix, fragment, tmp_path, capsys):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    code, out, err = run(["pretrain", "--config", str(path), "--dry-run"], capsys)
    assert code == 2
    assert err.startswith("mimir-fast: error: ")
    assert fragment in err
    assert "Traceback" not in err and out == ""


def test_missing_config_file_exits_2(tmp_path, capsys):
    code, _, err = run(["pretrain", "--config", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "nope.toml" in err and err.startswith("mimir-fast: error:")


def test_yaml_without_pyyaml_says_how_to_install(tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    code, _, err = run(["pretrain", "--config", str(path), "--dry-run"], capsys)
    assert code == 2 and "pip install pyyaml" in err


# --- running ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_npy(tmp_path):
    """48 grayscale 16x16 images with 3 classes (train and test are the same for npy data)."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images.npy"
    labels = tmp_path / "labels.npy"
    np.save(images, rng.integers(0, 256, size=(48, 16, 16), dtype=np.uint8))
    np.save(labels, np.arange(48) % 3)
    return f"npy:{images},{labels}"


def test_tiny_pretraining_run(tmp_path, tiny_npy, capsys):
    out_dir = tmp_path / "run"
    overrides = dict(TINY, img_size=16, patch_size=4)
    code, out, err = run(
        [
            "pretrain",
            "--data",
            tiny_npy,
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--batch-size",
            "16",
            "--model-overrides",
            json.dumps(overrides),
            "--out-dir",
            str(out_dir),
            "--no-progress",
            "--log-every",
            "1",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    assert (out_dir / "model.safetensors").stat().st_size > 0
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert any(r["split"] == "test" for r in records)
    assert "held-out" in out and "loss" in out and str(out_dir.resolve()) in out
    saved = json.loads((out_dir / "config.json").read_text())
    assert (
        saved["method"] == "mae"
        and saved["max_steps"] == 3
        and saved["model_overrides"] == overrides
    )


def test_data_problems_exit_2(tmp_path, capsys):
    code, _, err = run(
        [
            "pretrain",
            "--data",
            f"npy:{tmp_path / 'missing.npy'}",
            "--out-dir",
            str(tmp_path / "r"),
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2
    assert err.startswith("mimir-fast: error:") and "missing.npy" in err
    code, _, err = run(
        [
            "pretrain",
            "--data",
            "bogus:thing",
            "--out-dir",
            str(tmp_path / "r"),
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2 and "bogus" in err


def test_diverging_loss_is_reported_without_traceback(monkeypatch, capsys):
    train_module = sys.modules[
        "mimir_fast.training"
    ]  # the package's `train` attribute is the function

    def diverge(config):
        raise FloatingPointError(
            "loss became nan at step 3; lower the learning rate or enable clip_grad"
        )

    monkeypatch.setattr(train_module, "train", diverge)
    code, _, err = run(["pretrain"], capsys)
    assert code == 1
    assert (
        err == "mimir-fast: error: loss became nan at step 3; "
        "lower the learning rate or enable clip_grad\n"
    )


def test_demo_command_calls_run_demo(monkeypatch, capsys, tmp_path):
    calls = []

    def run_demo(out_dir="mimir-fast-demo", quick=False, progress=True):
        calls.append((out_dir, quick, progress))
        print("demo report")
        return {"ok": True}

    fake = types.ModuleType("mimir_fast.demo")
    fake.run_demo = run_demo
    monkeypatch.setitem(sys.modules, "mimir_fast.demo", fake)
    import mimir_fast

    monkeypatch.setattr(mimir_fast, "demo", fake, raising=False)
    code, out, _ = run(["demo"], capsys)
    assert code == 0 and "demo report" in out
    code, _, _ = run(["demo", "--out", str(tmp_path), "--quick", "--no-progress"], capsys)
    assert code == 0
    assert calls == [("mimir-fast-demo", False, True), (str(tmp_path), True, False)]


def test_info(capsys):
    import mimir_fast
    import torch

    code, out, _ = run(["info"], capsys)
    assert code == 0
    assert mimir_fast.__version__ in out
    assert torch.__version__ in out
    assert "cuda available" in out and "device" in out
    assert "profile" in out  # from _native.build_info()


def test_python_dash_m(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mimir_fast", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "pretrain" in done.stdout and "mimir-fast" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "mimir_fast", "pretrain", "--epochs", "0", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "mimir-fast: error:" in done.stderr and "Traceback" not in done.stderr
