"""``mimir-fast evaluate`` with a defense, AutoAttack's version and the threat model: the same
report as the API, and bad input named by its option."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from mimir_fast.cli import main
from mimir_fast.cli.evaluate_command import attack_specs
from mimir_fast.data import build_dataset
from mimir_fast.defenses import IMPurePurifier, NIMDefense
from mimir_fast.evaluate import evaluate
from mimir_fast.evaluation.resume import load_samples
from mimir_fast.models import MaskedViT, create_model

AUTOENCODER = {  # a small pixel-predicting MaskedViT on 32x32 digits (16 patches)
    "in_chans": 1,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "norm_pix_loss": False,
}


def run(argv, capsys):
    """main(argv) in-process -> (status, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_classifier):
    """(classifier file, autoencoder file): the digits classifier and a seeded autoencoder (an
    RGB one beside it, ``rgb.safetensors``)."""
    root = tmp_path_factory.mktemp("cli_evaluate")
    classifier, autoencoder = root / "classifier.safetensors", root / "autoencoder.safetensors"
    digits_classifier[0].save(classifier)
    torch.manual_seed(0)
    create_model("vit_tiny_patch4_32", **AUTOENCODER).save(autoencoder)
    create_model("vit_tiny_patch4_32", **{**AUTOENCODER, "in_chans": 3}).save(
        root / "rgb.safetensors"
    )
    return classifier, autoencoder


def without_timings(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k != "seconds"}
    for key in ("results", "sanity", "reconstruction", "more_steps"):
        out[key] = [{k: v for k, v in row.items() if k != "seconds"} for row in out.get(key, [])]
    return out


COMMON = ["--max-images", "12", "--batch-size", "6", "--eps", "8/255", "--steps", "2"]
COMMON += ["--seed", "2", "--device", "cpu", "--no-progress"]


AUTOATTACK_RAND = {"name": "autoattack", "steps": 2, "version": "rand"}


@pytest.mark.parametrize(
    ("flags", "build", "autoattack"),
    [
        (["--defense", "nim:{ae}", "--sigma", "40"], lambda ae: NIMDefense(ae, 40), True),
        (["--defense", "impure:{ae}", "--groups", "4"], lambda ae: IMPurePurifier(ae, 4), False),
    ],
    ids=["nim", "impure"],
)
def test_defended_run_writes_the_api_report(flags, build, autoattack, files, tmp_path, capsys):
    classifier, autoencoder = files
    flags = [f.format(ae=autoencoder) for f in flags] + ["--eot", "2"]
    attacks = ["--attacks", "pgd,autoattack", "--version", "rand"] if autoattack else []
    argv = ["evaluate", str(classifier), *(attacks or ["--attacks", "pgd"]), *flags, *COMMON]
    code, out, err = run([*argv, "--out", str(tmp_path / "cli")], capsys)
    assert code == 0, err
    assert "| attack" in out
    cli = json.loads((tmp_path / "cli" / "evaluation.json").read_text())
    model = MaskedViT.load(classifier)
    data = build_dataset("digits", "test", image_size=model.config.img_size)
    api = evaluate(
        model,
        data,
        attacks=[{"name": "pgd", "steps": 2}] + ([AUTOATTACK_RAND] if autoattack else []),
        eps=8 / 255,
        defense=build(MaskedViT.load(autoencoder)),
        batch_size=6,
        max_images=12,
        seed=2,
        progress=False,
        device="cpu",
        eot_samples=2,
        out_dir=tmp_path / "api",
    )
    assert cli["random_pipeline"] is True and cli["eot_samples"] == 2
    assert ("AutoAttack rand" in json.dumps(cli["descriptions"])) is autoattack
    assert without_timings(cli) == without_timings(json.loads(json.dumps(api)))
    ours, theirs = load_samples(tmp_path / "cli"), load_samples(tmp_path / "api")
    assert torch.equal(ours["clean_correct"], theirs["clean_correct"])
    assert ours["robust"].keys() == theirs["robust"].keys()
    assert len(ours["robust"]) == 1 + autoattack
    for key, robust in ours["robust"].items():
        assert torch.equal(robust, theirs["robust"][key]), key


def test_threat_and_version_reach_the_evaluation(files, tmp_path, capsys):
    classifier, autoencoder = files
    argv = ["evaluate", str(classifier), "--attacks", "square", "--n-queries", "5"]
    argv += ["--defense", f"nim:{autoencoder}", "--threat", "black", *COMMON]
    code, _, err = run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["threat"] == "black" and report["defense"].startswith("NIMDefense")
    args = argparse.Namespace(attacks="pgd,autoattack", steps=None, n_queries=None, version="plus")
    assert attack_specs(args) == [{"name": "pgd"}, {"name": "autoattack", "version": "plus"}]


@pytest.mark.parametrize(
    ("flags", "option"),
    [
        (["--version", "fast"], "--version"),
        (["--eps", "0"], "--eps"),
        (["--eps", "-8/255"], "--eps"),
        (["--defense", "nim"], "--defense"),
        (["--defense", "nim:"], "--defense"),
        (["--defense", "foo:bar"], "--defense"),
        (["--defense", "nim:/no/such/autoencoder.safetensors"], "--defense"),
        (["--eot", "0"], "--eot"),
        (["--sigma", "50"], "--sigma"),
        (["--defense", "impure:{ae}", "--groups", "3"], "--groups"),
        (["--defense", "nim:{ae}", "--sigma", "-1"], "--sigma"),
        (["--defense", "nim:{ae}", "--groups", "4"], "--groups"),
        (["--defense", "nim:{classifier}"], "--defense"),  # a norm-pix model
        (["--defense", "nim:{rgb}"], "--defense"),  # 3-channel images, the classifier's are gray
        (["--version", "plus", "--attacks", "pgd"], "--version"),
    ],
)
def test_bad_input_names_the_option(flags, option, files, tmp_path, capsys):
    classifier, autoencoder = files
    rgb = autoencoder.parent / "rgb.safetensors"
    flags = [f.format(ae=autoencoder, classifier=classifier, rgb=rgb) for f in flags]
    argv = ["evaluate", str(classifier), *COMMON, *flags, "--out", str(tmp_path)]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert option in err and "Traceback" not in err, err
    assert not (tmp_path / "evaluation.json").exists()


def test_api_bad_input_is_a_value_error(digits_classifier):
    model, x, y = digits_classifier
    data = (x[:4], y[:4])
    kw = {"progress": False, "sanity_checks": False}
    with pytest.raises(ValueError, match="eps"):
        evaluate(model, data, eps=0.0, **kw)
    with pytest.raises(ValueError, match="eot_samples"):
        evaluate(model, data, eps=0.01, eot_samples=0, **kw)
    with pytest.raises(ValueError, match="version"):
        evaluate(model, data, attacks=[{"name": "autoattack", "version": "fast"}], eps=0.01, **kw)


def test_resume_mismatch_names_the_restart_flag(files, tmp_path, capsys):
    classifier, _ = files
    argv = ["evaluate", str(classifier), "--attacks", "fgsm", "--no-sanity-checks", *COMMON]
    assert run([*argv, "--out", str(tmp_path)], capsys)[0] == 0
    code, _, err = run([*argv, "--seed", "5", "--out", str(tmp_path)], capsys)
    assert code == 2 and "seed" in err and "--restart" in err, err
    code, _, err = run([*argv, "--seed", "5", "--out", str(tmp_path), "--restart"], capsys)
    assert code == 0, err
