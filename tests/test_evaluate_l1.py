"""mimir_fast.evaluate and ``mimir-fast evaluate`` under the L1 threat model (the L1 ball
intersected with [0, 1]): the report, its defaults, its sanity checks and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from mimir_fast.attacks import APGD, APGDT
from mimir_fast.attacks.ensemble import AutoAttack, AutoAttackL1, official_budgets
from mimir_fast.attacks.factory import L1_ATTACK_NAMES
from mimir_fast.attacks.registry import build_attack
from mimir_fast.cli import main
from mimir_fast.cli.evaluate_command import L1_ATTACKS
from mimir_fast.cli.parser import build_parser
from mimir_fast.evaluate import evaluate
from mimir_fast.evaluation import runner as runner_module
from mimir_fast.evaluation.threats import default_eps
from tiny_models import TinyNet, trained_tiny_net

QUIET = {"progress": False}
SMALL_L1 = [
    {"name": "pgd", "steps": 5},
    {"name": "apgd-ce", "steps": 5},
    {"name": "autoattack", "steps": 5, "n_target_classes": 3},
]


class Untouchable(torch.nn.Module):
    """A classifier that fails the test if it is ever called."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran before the arguments were checked")


def l1_distance(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv.double() - x.double()).flatten(1).abs().sum(1)


def test_l1_report_is_consistent(monkeypatch, tmp_path):
    model, x, y = trained_tiny_net()
    x, y = x[:32], y[:32]
    batches = []  # (label, x_adv, x, eps, norm) of every attacked batch
    check = runner_module._check_threat_model

    def recording(name, x_adv, xb, eps, norm):
        batches.append((name, x_adv.detach().clone(), xb.clone(), eps, norm))
        check(name, x_adv, xb, eps, norm)

    monkeypatch.setattr(runner_module, "_check_threat_model", recording)
    report = evaluate(
        model, (x, y), attacks=SMALL_L1, eps=(3.0, 1.0), norm="l1", out_dir=tmp_path, **QUIET
    )

    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert report["norm"] == "l1" and report["eps"] == [1.0, 3.0]
    assert report["clean_accuracy"] == pytest.approx(clean)
    assert {r["attack"] for r in report["results"]} == {"pgd", "apgd-ce", "autoattack"}
    assert len(report["results"]) == 6
    for r in report["results"]:
        assert 0 <= r["robust_accuracy"] <= clean
        assert r["robust_accuracy"] == pytest.approx(
            clean * (1 - r["attack_success_rate"]), abs=1e-6
        )
    for w in report["worst_case"]:
        same_eps = [r["robust_accuracy"] for r in report["results"] if r["eps"] == w["eps"]]
        assert w["robust_accuracy"] <= min(same_eps)
        assert w["attacks"] == ["apgd-ce", "autoattack", "pgd"]
    strongest = min(r["robust_accuracy"] for r in report["results"] if r["eps"] == 3.0)
    assert strongest < clean - 0.3  # the L1 attacks do flip points
    # the string specs became the L1 attacks, AutoAttack its L1 composition
    assert any(text.startswith("pgd: L1PGD(") for text in report["attacks"])
    assert any("norm='l1'" in text for text in report["attacks"] if text.startswith("apgd-ce"))
    assert report["descriptions"]["autoattack"].startswith(
        "AutoAttack L1 standard (apgd-ce 5 restarts, apgd-t 5 targets, at 3, 2, 1 eps)"
    )

    # every adversarial batch lies in the L1 ball and the box, and some moved
    assert {norm for *_, norm in batches} == {"l1"}
    moved = 0.0
    for _, x_adv, xb, eps, _ in batches:
        assert float(l1_distance(x_adv, xb).max()) <= eps * (1 + 1e-5) + 1e-4
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        moved = max(moved, float(l1_distance(x_adv, xb).max()))
    assert moved > 0.5

    # sanity checks under L1: PGD at 0.5 * C H W drives accuracy to ~0, no FGSM rows
    assert [s["attack"] for s in report["sanity"]] == ["pgd@large_eps"]
    assert report["sanity"][0]["eps"] == pytest.approx(0.5 * x[0].numel())
    assert report["sanity"][0]["robust_accuracy"] < 0.1
    assert [m["attack"] for m in report["more_steps"]] == ["pgd@20_steps"]
    assert report["more_steps"][0]["eps"] == 3.0
    assert not any("fgsm" in w.lower() for w in report["warnings"])

    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["norm"] == "l1" and saved["results"] == report["results"]
    assert ", l1, " in (tmp_path / "evaluation.md").read_text()


def test_attack_leaving_the_l1_ball_is_caught():
    """A perturbation inside the L2 ball but outside the L1 ball must be refused."""
    model, x, y = trained_tiny_net()

    def too_dense(model, eps):  # 0.05 on every pixel: L2 0.4, L1 3.2, for 64 pixels
        return lambda xb, yb: xb + 0.05 * torch.where(xb < 0.5, 1.0, -1.0)

    with pytest.raises(RuntimeError, match="outside the threat model"):
        evaluate(
            model,
            (x[:8], y[:8]),
            attacks=too_dense,
            eps=1.0,
            norm="l1",
            sanity_checks=False,
            **QUIET,
        )


def test_defaults_for_l1_on_32x32_images():
    torch.manual_seed(0)
    model = TinyNet(pixels=3 * 32 * 32).eval()
    x = torch.rand(4, 3, 32, 32)
    y = model(x).argmax(1).detach()  # every image classified correctly
    report = evaluate(model, (x, y), norm="l1", **QUIET)
    assert report["eps"] == [12.0]
    assert [r["attack"] for r in report["results"]] == ["pgd", "apgd-ce", "apgd-t"]
    assert report["clean_accuracy"] == 1.0
    assert all(r["robust_accuracy"] <= 1.0 for r in report["results"])
    assert report["sanity"][0]["eps"] == pytest.approx(0.5 * 3 * 32 * 32)
    assert default_eps("linf", x.shape) == default_eps("l2", x.shape) == [2 / 255, 4 / 255, 8 / 255]


def test_l1_has_no_default_eps_for_other_image_sizes():
    model, x, y = trained_tiny_net()  # 8x8 images
    with pytest.raises(ValueError, match=r"32x32.*8x8.*pass eps"):
        evaluate(model, (x[:4], y[:4]), norm="l1", attacks=[{"name": "pgd", "steps": 1}], **QUIET)
    with pytest.raises(ValueError, match="224x224"):
        default_eps("l1", (1, 3, 224, 224))


@pytest.mark.parametrize(
    "attack",
    ["fgsm", "square", "fab", "fab-t", "mifgsm", "difgsm", "mim", {"name": "FGSM", "label": "f"}],
)
def test_attack_without_l1_form_is_refused_before_any_work(attack):
    name = attack if isinstance(attack, str) else attack["name"].lower()
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"{name!r} has no form for norm 'l1'") as error:
        evaluate(Untouchable(), (x, y), attacks=["pgd", attack], eps=1.0, norm="l1", **QUIET)
    assert "apgd-t" in str(error.value)  # names the attacks that do support L1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "autoattack", "version": "plus"}, "'plus' runs FAB and Square"),
        ({"name": "autoattack", "version": "custom", "attacks": ["apgd-ce", "square"]}, "'square'"),
    ],
)
def test_autoattack_versions_without_l1_form_are_refused(spec, match):
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        evaluate(Untouchable(), (x, y), attacks=[spec], eps=1.0, norm="l1", **QUIET)


@pytest.mark.parametrize("eps", [0.0, -1.0, [12.0, 0.0], float("nan")])
def test_l1_eps_must_be_positive(eps):
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        evaluate(Untouchable(), (x, y), eps=eps, norm="l1", **QUIET)


def test_instance_of_another_norm_is_refused():
    model, x, y = trained_tiny_net()
    attack = APGD(model, 0.1, steps=2)  # L-inf
    with pytest.raises(ValueError, match="built for norm 'linf'"):
        evaluate(model, (x[:4], y[:4]), attacks=attack, norm="l1", **QUIET)


def test_autoattack_under_l1_runs_apgd_ce_then_apgd_t():
    model, x, y = trained_tiny_net()
    aa = build_attack("autoattack", model, 2.0, norm="l1", steps=5, n_target_classes=3)
    assert isinstance(aa, AutoAttackL1)
    assert [type(a) for a in aa.attacks] == [APGD, APGDT]
    assert [a.name for a in aa.attacks] == ["apgd-ce", "apgd-t"]
    assert all(a.norm == "l1" for a in aa.attacks)
    assert official_budgets("standard", "l1") == [  # the AutoAttack release's L1 budgets
        ("apgd-ce", {"steps": 100, "restarts": 5, "eot_iter": 1, "large_eps_start": True}),
        (
            "apgd-t",
            {
                "steps": 100,
                "n_target_classes": 5,
                "restarts": 1,
                "eot_iter": 1,
                "large_eps_start": True,
            },
        ),
    ]
    x_adv = aa(x[:16], y[:16])
    assert float(l1_distance(x_adv, x[:16]).max()) <= 2.0 * (1 + 1e-5) + 1e-4
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == y[:16]).sum() < (model(x[:16]).argmax(1) == y[:16]).sum()
    rand = AutoAttackL1(model, 2.0, version="rand", steps=2)
    assert [a.name for a in rand.attacks] == ["apgd-ce", "apgd-dlr"]
    with pytest.raises(ValueError, match="AutoAttackL1"):
        AutoAttack(model, 2.0, norm="l1")


# ---------------------------------------------------------------------- the command line
def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory, digits_classifier):
    path = tmp_path_factory.mktemp("l1_cli") / "classifier.safetensors"
    digits_classifier[0].save(path)
    return path


COMMON = ["--max-images", "8", "--batch-size", "8", "--steps", "2", "--device", "cpu"]
COMMON += ["--no-progress"]


def test_cli_parses_norm_l1():
    args = build_parser().parse_args(["evaluate", "model.safetensors", "--norm", "l1"])
    assert args.norm == "l1" and args.eps is None
    assert L1_ATTACKS.split(", ") == [*L1_ATTACK_NAMES, "autoattack"]  # the help is up to date
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "model.safetensors", "--norm", "l3"])


def test_cli_runs_l1_with_the_default_eps(classifier_file, tmp_path, capsys):
    argv = ["evaluate", str(classifier_file), "--norm", "l1", *COMMON, "--out", str(tmp_path)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["norm"] == "l1" and report["eps"] == [12.0]  # 32x32 digits
    assert [r["attack"] for r in report["results"]] == ["pgd", "autoattack"]
    assert report["descriptions"]["autoattack"].startswith("AutoAttack L1 standard")
    for r in report["results"]:
        assert r["robust_accuracy"] <= report["clean_accuracy"]
    assert [s["attack"] for s in report["sanity"]] == ["pgd@large_eps"]
    assert "l1" in out and "| attack" in out


@pytest.mark.parametrize(
    ("flags", "option", "named"),
    [
        (["--attacks", "pgd,fgsm"], "--attacks", "'fgsm'"),
        (["--attacks", "square"], "--attacks", "'square'"),
        (["--attacks", "autoattack", "--version", "plus"], "--version", "plus"),
    ],
)
def test_cli_refuses_attacks_without_l1_form(
    flags, option, named, classifier_file, tmp_path, capsys
):
    argv = ["evaluate", str(classifier_file), "--norm", "l1", *COMMON, *flags]
    code, _, err = run([*argv, "--out", str(tmp_path)], capsys)
    assert code == 2
    assert option in err and named in err and "Traceback" not in err, err
    assert not (tmp_path / "evaluation.json").exists()
