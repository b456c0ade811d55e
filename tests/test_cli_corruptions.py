"""``mimir-fast evaluate --corruptions``: the same results as the API, a results file as the
baseline, both reports beside attacks, and bad corruption options named by their flag."""

from __future__ import annotations

import json

import pytest
import torch
from mimir_fast.cli import main
from mimir_fast.data import load_digits
from mimir_fast.evaluate import evaluate_corruptions
from mimir_fast.models import MaskedViT, create_model

N_IMAGES = 12
BATCH = 5
TINY_VIT = {
    "in_chans": 1,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("corruption_cli")
    files = root / "model.safetensors", root / "baseline.safetensors"
    for seed, file in enumerate(files):
        torch.manual_seed(seed)
        create_model("vit_tiny_patch4_32", **TINY_VIT).save(file)
    return files


CLI_COMMON = ["--max-images", str(N_IMAGES), "--batch-size", str(BATCH), "--seed", "3"]
CLI_COMMON += ["--device", "cpu", "--no-progress"]


def test_cli_corruptions_end_to_end_equals_the_api(vit_files, tmp_path, capsys):
    model_file, base_file = vit_files
    argv = ["evaluate", str(model_file), "--corruptions", "fog:2,glass_blur", "--severities"]
    argv += ["1", "4", "--baseline", str(base_file), "--out", str(tmp_path), *CLI_COMMON]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Accuracy under common corruptions") and "evaluation" not in out
    written = json.loads((tmp_path / "corruptions.json").read_text())
    test = load_digits("test")
    data = [test[i] for i in range(N_IMAGES)]
    api = evaluate_corruptions(
        MaskedViT.load(model_file),
        data,
        ["fog:2", "glass_blur"],
        (1, 4),
        seed=3,
        baseline=MaskedViT.load(base_file),
        batch_size=BATCH,
        progress=False,
    )
    assert written["results"] == api["results"] and written["ce"] == api["ce"]
    # the written results as the baseline of a second run: the same CE
    again = tmp_path / "again"
    argv2 = ["evaluate", str(base_file), "--corruptions", "fog:2,glass_blur", "--severities"]
    argv2 += ["1", "4", "--baseline", str(tmp_path / "corruptions.json")]
    assert main(argv2 + ["--out", str(again), *CLI_COMMON]) == 0
    ce = json.loads((again / "corruptions.json").read_text())["ce"]
    expected = {c: (None if v is None else 1 / v) for c, v in api["ce"].items()}
    assert ce == pytest.approx(expected)


def test_cli_with_attacks_prints_both_reports(vit_files, tmp_path, capsys):
    argv = ["evaluate", str(vit_files[0]), "--attacks", "fgsm", "--eps", "8/255"]
    argv += ["--no-sanity-checks", "--corruptions", "contrast:5", "--out", str(tmp_path)]
    assert main(argv + CLI_COMMON) == 0
    out = capsys.readouterr().out
    assert "# Robustness evaluation" in out and "# Accuracy under common corruptions" in out
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert [r["corruption"] for r in report["corruptions"]["results"]] == ["contrast"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--corruptions", "fgo"], "--corruptions names an unknown corruption 'fgo'"),
        (["--corruptions", "fog:7"], "--corruptions: the severity of 'fog:7'"),
        (["--corruptions", "fog", "--severities", "0"], "--severities must be integers"),
        (["--severities", "2"], "--severities applies to --corruptions"),
        (["--corruptions", "fog", "--baseline", "/no/such.safetensors"], "--baseline: no file"),
    ],
    ids=["unknown", "severity-in-spec", "severities", "without-corruptions", "baseline"],
)
def test_cli_bad_corruption_options_exit_2_naming_the_flag(flags, message, vit_files, capsys):
    argv = ["evaluate", str(vit_files[0]), *flags, "--out", "/tmp/unused", *CLI_COMMON]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
