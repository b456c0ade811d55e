"""Evaluation under common corruptions: accuracy per corruption and severity against a hand
computation on the corrupted images, CE and mCE against the formula, the report files, the
monotonicity check, the defense pipeline, ``evaluate(corruptions=...)`` and bad input (the
command line: test_cli_corruptions.py)."""

from __future__ import annotations

import json

import pytest
import torch
from mimir_fast.data import load_digits
from mimir_fast.data.corruptions import CORRUPTIONS, corrupt
from mimir_fast.defenses import Defended
from mimir_fast.defenses.transforms import GaussianNoise
from mimir_fast.evaluate import evaluate, evaluate_corruptions
from mimir_fast.evaluation import corruption_errors, corruption_plan, monotone_check
from mimir_fast.evaluation.corruption_scores import MONOTONE_EXCEPTIONS
from mimir_fast.report import files as report_files
from torch import nn

N_IMAGES = 12
BATCH = 5  # three batches, the last one short


class Linear(nn.Module):
    """A linear classifier on 32x32 one-channel images (random until fitted)."""

    def __init__(self, seed: int, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        torch.manual_seed(seed)
        self.fc = nn.Linear(32 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def fit(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> Linear:
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(self(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return self.eval()


class Recorder:
    """The real :func:`corrupt`, keeping every batch it returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, torch.Tensor]] = []

    def __call__(self, images, corruption, severity, seed=0):
        out = corrupt(images, corruption, severity, seed=seed)
        self.calls.append((corruption, severity, seed, out.clone()))
        return out

    def images(self, corruption: str, severity: int) -> torch.Tensor:
        """Every image the evaluation saw under one corruption and severity, in order."""
        outs = [o for c, s, _, o in self.calls if (c, s) == (corruption, severity)]
        return torch.cat(outs)


def hand_accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / y.shape[0]


def first(dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([dataset[i][0] for i in range(n)])  # (n, 1, 32, 32)
    return x, torch.tensor([dataset[i][1] for i in range(n)])


@pytest.fixture(scope="module")
def digits():
    """(x, y): the first held-out digits."""
    return first(load_digits("test"), N_IMAGES)


@pytest.fixture(scope="module")
def fitted():
    """Two linear classifiers fitted on 300 training digits: a better one and a weaker one."""
    x, y = first(load_digits("train"), 300)
    return Linear(0).fit(x, y, 60), Linear(1).fit(x, y, 6)


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def run(model, data, **kwargs):
    kwargs.setdefault("batch_size", BATCH)
    return evaluate_corruptions(model, data, progress=False, **kwargs)


def without_seconds(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "seconds"}


# ---------------------------------------------------------------------- what is evaluated
def test_plan_expands_all_names_and_name_severity():
    assert corruption_plan("all", (5, 1)) == [(c, s) for c in CORRUPTIONS for s in (1, 5)]
    plan = corruption_plan(["fog:3", "snow", "Fog"], severities=(2, 1))
    assert plan == [("fog", 1), ("fog", 2), ("fog", 3), ("snow", 1), ("snow", 2)]
    assert corruption_plan("gaussian-noise:4,contrast:1") == [
        ("gaussian_noise", 4),
        ("contrast", 1),
    ]


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"corruptions": "fgo"}, "corruptions"),
        ({"corruptions": "frost"}, "corruptions"),
        ({"corruptions": "fog:6"}, "corruptions"),
        ({"corruptions": "fog:0"}, "corruptions"),
        ({"corruptions": "fog:x"}, "corruptions"),
        ({"corruptions": []}, "corruptions"),
        ({"severities": (0, 1)}, "severities"),
        ({"severities": (6,)}, "severities"),
        ({"severities": ()}, "severities"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"monotone_exceptions": {"frost": "no"}}, "monotone_exceptions"),
        ({"baseline": Linear(1, num_classes=7)}, "baseline"),
        ({"baseline": {"results": [], "num_classes": 10}}, "baseline"),
        ({"baseline": "/nonexistent/corruptions.json"}, "baseline"),
        ({"baseline": 3}, "baseline"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_raises_value_error_naming_the_option(kwargs, option, digits):
    kwargs = {"corruptions": "fog:1", **kwargs}
    with pytest.raises(ValueError, match=f"^{option}"):
        run(Linear(0), digits, **kwargs)


def test_baseline_results_of_another_task_or_other_corruptions_are_refused(digits):
    other = run(Linear(1, num_classes=7), (digits[0], digits[1] % 7), corruptions="fog:1")
    with pytest.raises(ValueError, match="^baseline has 7 classes"):
        run(Linear(0), digits, corruptions="fog:1", baseline=other)
    partial = run(Linear(1), digits, corruptions="fog:1")
    with pytest.raises(ValueError, match="^baseline has no result for fog at severity 2"):
        run(Linear(0), digits, corruptions="fog:2", baseline=partial)


# ---------------------------------------------------------------------- accuracies
def test_accuracy_per_corruption_and_severity_matches_hand_computation(digits, fitted):
    model, (x, y), record = fitted[0], digits, Recorder()
    report = run(model, digits, corruptions="all", severities=(1, 5), corrupt_fn=record)
    plan = [(c, s) for c in CORRUPTIONS for s in (1, 5)]
    assert [(r["corruption"], r["severity"]) for r in report["results"]] == plan
    assert report["corruptions"] == list(CORRUPTIONS) and report["severities"] == [1, 5]
    assert len(record.calls) == len(plan) * 3  # three batches each
    assert report["clean_accuracy"] == hand_accuracy(model, x, y) > 0.5
    changed = 0
    for c, s in plan:
        images = record.images(c, s)
        assert images.shape == x.shape
        changed += not torch.equal(images, x)
        expected = hand_accuracy(model, images, y)
        assert report["accuracy"][c][s] == expected, (c, s)
        row = report["results"][plan.index((c, s))]
        assert row["accuracy"] == expected and row["error"] == pytest.approx(1 - expected)
    assert changed == len(plan)  # every corruption changed the images
    cells = [report["accuracy"][c][s] for c, s in plan]
    assert report["mean_accuracy"] == pytest.approx(sum(cells) / len(cells))
    fog = report["accuracy"]["fog"]
    assert report["corruption_accuracy"]["fog"] == pytest.approx((fog[1] + fog[5]) / 2)
    assert report["ce"] is None and report["mce"] is None  # no baseline


def test_darkening_accuracy_matches_hand_computation(digits):
    """An injected corruption with no randomness: the table is the model's accuracy on
    ``x * (1 - severity / 5)``, whatever the seeds."""
    model, (x, y) = Linear(0), digits

    def darken(images, corruption, severity, seed=0):
        return images * (1 - severity / 5)

    report = run(model, digits, corrupt_fn=darken, corruption_names=("dark",), severities=(2, 4))
    for s in (2, 4):
        assert report["accuracy"]["dark"][s] == hand_accuracy(model, x * (1 - s / 5), y)


def test_results_are_seeded_and_deterministic(digits):
    kwargs = {"corruptions": ["gaussian_noise:3", "snow:2"]}
    rec_a, rec_b, rec_other = Recorder(), Recorder(), Recorder()
    a = run(Linear(0), digits, corrupt_fn=rec_a, **kwargs)
    b = run(Linear(0), digits, corrupt_fn=rec_b, **kwargs)
    run(Linear(0), digits, corrupt_fn=rec_other, seed=1, **kwargs)
    assert without_seconds(a) == without_seconds(b)
    for c, s in (("gaussian_noise", 3), ("snow", 2)):
        assert torch.equal(rec_a.images(c, s), rec_b.images(c, s))
        assert not torch.equal(rec_a.images(c, s), rec_other.images(c, s))
    seeds = [seed for _, _, seed, _ in rec_a.calls]
    assert len(set(seeds)) == len(seeds)  # a seed of its own per batch and corruption


# ---------------------------------------------------------------------- CE and mCE
def test_severities_of_a_corruption_share_its_seeds(digits):
    """Common random numbers: batch ``b`` of a corruption gets one seed at every severity, so
    the Gaussian's noise at severity 4 is that of severity 2, scaled (where neither clips)."""
    record = Recorder()
    run(Linear(0), digits, corrupt_fn=record, corruptions=["gaussian_noise:2", "gaussian_noise:4"])
    seeds = {s: [seed for _, k, seed, _ in record.calls if k == s] for s in (2, 4)}
    assert seeds[2] == seeds[4] and len(set(seeds[2])) == len(seeds[2]) == 3
    x = digits[0]
    z2, z4 = (record.images("gaussian_noise", s) - x for s in (2, 4))
    inside = (z2.abs() < 0.2) & (z4.abs() < 0.2) & (x > 0.3) & (x < 0.7)
    assert inside.sum() > 100
    ratio = 0.09 / 0.06  # CIFAR-10-C's sigmas at severities 4 and 2 (small images)
    torch.testing.assert_close(z4[inside], z2[inside] * ratio, atol=1e-5, rtol=0)


def test_mce_matches_hand_computation_with_two_models(digits, fitted):
    (model, base), (x, y), record = fitted, digits, Recorder()
    corruptions = ["gaussian_noise", "contrast", "fog:4"]
    report = run(
        model, digits, corruptions=corruptions, severities=(2, 5), baseline=base, corrupt_fn=record
    )
    plan = corruption_plan(corruptions, (2, 5))
    acc = {p: hand_accuracy(model, record.images(*p), y) for p in plan}
    acc_b = {p: hand_accuracy(base, record.images(*p), y) for p in plan}
    clean, clean_b = hand_accuracy(model, x, y), hand_accuracy(base, x, y)
    assert report["baseline"]["clean_accuracy"] == clean_b
    ce, rce = {}, {}
    for c in ("gaussian_noise", "contrast", "fog"):
        cells = [p for p in plan if p[0] == c]
        ce[c] = ratio(sum(1 - acc[p] for p in cells), sum(1 - acc_b[p] for p in cells))
        rce[c] = ratio(sum(clean - acc[p] for p in cells), sum(clean_b - acc_b[p] for p in cells))
        assert report["baseline"]["accuracy"][c] == {p[1]: acc_b[p] for p in cells}
    assert report["ce"] == pytest.approx(ce)
    assert report["mce"] == pytest.approx(sum(ce.values()) / 3)
    assert report["relative_ce"] == pytest.approx(rce)
    defined = [v for v in rce.values() if v is not None]
    if len(defined) == 3:
        assert report["relative_mce"] == pytest.approx(sum(defined) / 3)
    else:
        assert report["relative_mce"] is None
    assert defined and report["mce"] != pytest.approx(1.0)  # the two models differ


def test_baseline_as_results_dict_or_file_gives_the_models_scores(digits, fitted, tmp_path):
    (model, base), kwargs = (
        fitted,
        {"corruptions": ["shot_noise:1", "pixelate"], "severities": (1, 3)},
    )
    by_model = run(model, digits, baseline=base, **kwargs)
    results = run(base, digits, out_dir=tmp_path / "base", **kwargs)
    by_dict = run(model, digits, baseline=results, **kwargs)
    by_file = run(model, digits, baseline=tmp_path / "base" / "corruptions.json", **kwargs)
    for other in (by_dict, by_file):
        for key in ("ce", "mce", "relative_ce", "relative_mce"):
            assert other[key] == pytest.approx(by_model[key])
    assert by_file["baseline"]["source"].endswith("corruptions.json'")


def test_baseline_equal_to_model_gives_ce_one(digits, fitted):
    model = fitted[0]
    report = run(model, digits, corruptions=["contrast", "fog:5"], baseline=model)
    assert all(v == 1.0 for v in report["ce"].values()) and report["mce"] == 1.0
    defined = [v for v in report["relative_ce"].values() if v is not None]
    assert defined and all(v == 1.0 for v in defined)


def test_corruption_errors_formula():
    acc = {"a": {1: 0.8, 2: 0.6}, "b": {3: 0.5}}
    base = {"a": {1: 0.6, 2: 0.2, 5: 0.0}, "b": {3: 0.75}}
    scores = corruption_errors(acc, base, clean=0.9, baseline_clean=0.8)
    assert scores["ce"] == pytest.approx({"a": 0.6 / 1.2, "b": 0.5 / 0.25})
    assert scores["mce"] == pytest.approx((0.5 + 2.0) / 2)
    assert scores["relative_ce"] == pytest.approx({"a": 0.4 / 0.8, "b": 0.4 / 0.05})
    no_error = corruption_errors({"a": {1: 0.5}}, {"a": {1: 1.0}})
    assert no_error["ce"] == {"a": None} and no_error["mce"] is None
    assert no_error["relative_ce"] is None


# ---------------------------------------------------------------------- monotonicity
def test_monotone_check_flags_accuracy_rising_with_severity():
    acc = {
        "fog": {1: 0.9, 2: 0.7, 3: 0.8, 4: 0.5, 5: 0.4},  # +0.1 from 2 to 3
        "snow": {1: 0.9, 2: 0.89, 3: 0.9, 4: 0.6, 5: 0.5},  # +0.01: within tolerance
        "creep": {1: 0.5, 2: 0.53, 3: 0.56, 4: 0.59, 5: 0.62},  # +0.12 overall, 0.03 a step
    }
    flags = monotone_check(acc, tolerance=0.05)
    assert [(f["corruption"], f["from_severity"], f["to_severity"]) for f in flags] == [
        ("fog", 2, 3),
        ("creep", 1, 5),
    ]
    assert flags[0]["increase"] == pytest.approx(0.1) and flags[0]["expected"] is None
    excused = monotone_check(acc, 0.05, {"fog": "a documented reason"})
    assert excused[0]["expected"] == "a documented reason"
    assert monotone_check(acc, 0.2) == []


def test_rising_accuracy_is_noted_in_the_markdown(digits, fitted, tmp_path):
    """A corruption that gets milder with severity is flagged; an excused one is a note."""

    def fading(images, corruption, severity, seed=0):
        return images * (severity - 1) / 4  # black at 1, the clean image at 5

    kwargs = {"corrupt_fn": fading, "corruption_names": ("fade", "fade2"), "tolerance": 0.05}
    report = run(
        fitted[0], digits, out_dir=tmp_path, monotone_exceptions={"fade2": "why"}, **kwargs
    )
    fade = report["accuracy"]["fade"]
    assert fade[5] == report["clean_accuracy"] > fade[1] + 0.05
    assert [f["corruption"] for f in report["monotone"]] == ["fade", "fade2"]
    assert len(report["warnings"]) == 1 and "under fade:" in report["warnings"][0]
    assert any("(expected: why)" in n for n in report["notes"])
    text = (tmp_path / "corruptions.md").read_text()
    monotone = text.split("## Monotonicity in severity")[1]
    assert "accuracy rises with severity under fade:" in monotone
    assert "(expected: why)" in text.split("## Notes")[1]


def test_glass_blur_is_a_documented_exception_unless_overridden(digits, fitted):
    def fading(images, corruption, severity, seed=0):
        return images * (severity - 1) / 4

    kwargs = {"corrupt_fn": fading, "corruption_names": ("glass_blur",), "tolerance": 0.05}
    report = run(fitted[0], digits, **kwargs)
    assert report["monotone"][0]["expected"] == MONOTONE_EXCEPTIONS["glass_blur"]
    assert report["warnings"] == [] and "(expected: the published" in report["notes"][0]
    strict = run(fitted[0], digits, monotone_exceptions={}, **kwargs)
    assert len(strict["warnings"]) == 1 and strict["notes"] == []


# ---------------------------------------------------------------------- files
def test_markdown_png_and_json_are_written(digits, tmp_path):
    report = run(
        Linear(0),
        digits,
        corruptions=["fog:2", "brightness"],
        severities=(1, 3),
        baseline=Linear(1),
        out_dir=tmp_path,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corruption_accuracy.png",
        "corruptions.json",
        "corruptions.md",
    ]
    assert (tmp_path / "corruption_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads((tmp_path / "corruptions.json").read_text())
    assert loaded["results"] == report["results"] and loaded["mce"] == report["mce"]
    assert loaded["accuracy"]["fog"] == {"2": report["accuracy"]["fog"][2]}
    lines = (tmp_path / "corruptions.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| corruption"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells == ["corruption", "1", "2", "3", "mean", "CE", "relative CE"]
    fog = next(line for line in lines if line.startswith("| fog "))
    fog_cells = [c.strip() for c in fog.strip("|").split("|")]
    assert fog_cells[1] == "" and fog_cells[3] == ""  # fog only at severity 2
    assert float(fog_cells[2]) == pytest.approx(report["accuracy"]["fog"][2], abs=5e-4)
    assert float(fog_cells[5]) == pytest.approx(report["ce"]["fog"], rel=1e-3)
    assert any(line.startswith(f"mCE {report['mce']:.4g}") for line in lines)


def test_without_matplotlib_the_heatmap_is_skipped_and_noted(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(report_files, "_has_matplotlib", lambda: False)
    run(Linear(0), digits, corruptions="fog:1", out_dir=tmp_path)
    assert not (tmp_path / "corruption_accuracy.png").exists()
    assert "matplotlib is not installed" in (tmp_path / "corruptions.md").read_text()
    notes = json.loads((tmp_path / "corruptions.json").read_text())["notes"]
    assert any("corruption_accuracy.png skipped" in n for n in notes)


# ---------------------------------------------------------------------- defense, evaluate()
def test_defense_pipeline_is_seeded_and_equals_the_defended_model(digits):
    model, kwargs = Linear(0), {"corruptions": ["defocus_blur:2", "jpeg_compression:4"]}
    a = run(model, digits, defense=GaussianNoise(0.3), **kwargs)
    b = run(Defended(model, GaussianNoise(0.3)), digits, **kwargs)
    plain = run(model, digits, **kwargs)
    assert a["defense"] is not None and "GaussianNoise" in a["defense"]
    assert {k: v for k, v in without_seconds(a).items() if k != "defense"} == {
        k: v for k, v in without_seconds(b).items() if k != "defense"
    }
    assert without_seconds(a) == without_seconds(
        run(model, digits, defense=GaussianNoise(0.3), **kwargs)
    )
    assert a["accuracy"] != plain["accuracy"] or a["clean_accuracy"] != plain["clean_accuracy"]


def test_evaluate_with_corruptions_holds_the_corruption_report(digits, tmp_path):
    model, kwargs = Linear(0), {"corruptions": ["elastic_transform:3", "motion_blur:1"]}
    report = evaluate(
        model,
        digits,
        attacks="fgsm",
        eps=8 / 255,
        batch_size=BATCH,
        sanity_checks=False,
        progress=False,
        out_dir=tmp_path,
        baseline=Linear(1),
        **kwargs,
    )
    alone = run(model, digits, baseline=Linear(1), **kwargs)
    assert without_seconds(report["corruptions"]) == without_seconds(alone)
    for name in ("evaluation.md", "corruptions.md", "corruptions.json"):
        assert (tmp_path / name).is_file()
    with pytest.raises(ValueError, match="^corruptions names an unknown corruption"):
        evaluate(model, digits, attacks="fgsm", corruptions="fgo", progress=False)


def test_accuracy_falls_with_severity_on_the_digits_classifier(digits_classifier):
    """Every corruption at every severity on the held-out digits: accuracy never rises with
    severity beyond the tolerance, except for the documented exceptions."""
    model, x, y = digits_classifier
    report = evaluate_corruptions(model, (x, y), corruptions="all", progress=False)
    assert report["warnings"] == []
    table = {}
    for row in report["results"]:
        table.setdefault(row["corruption"], []).append(row["accuracy"])
    assert len(table) == 14 and all(len(v) == 5 for v in table.values())
    # the corruptions hurt: the strongest severity is below clean accuracy on average
    assert sum(v[-1] for v in table.values()) / 14 < report["clean_accuracy"] - 0.05
