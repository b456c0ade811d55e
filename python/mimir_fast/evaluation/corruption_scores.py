"""Scores of a corruption evaluation (Hendrycks & Dietterich 2019, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations").

With ``E(c, s)`` the top-1 error under corruption ``c`` at severity ``s`` and ``E_clean`` the
clean error, the paper's scores, normalised by a baseline model ``b`` the user chooses instead
of AlexNet, are

- corruption error ``CE_c = sum_s E(c, s) / sum_s E_b(c, s)``, and ``mCE`` the mean of ``CE_c``
  over the corruptions;
- relative corruption error ``rCE_c = sum_s (E(c, s) - E_clean) / sum_s (E_b(c, s) - E_b,clean)``
  (how much accuracy the corruption costs, against what it costs the baseline), and the
  relative mCE, its mean.

Sums run over the severities evaluated for ``c`` (all five unless fewer were asked for). A score
whose denominator is 0 (the baseline never errs, or loses nothing to the corruption) is None.

:func:`monotone_check` flags corruptions whose accuracy rises with severity; those of
:data:`MONOTONE_EXCEPTIONS` (a documented reason each) are noted rather than warned about.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MONOTONE_EXCEPTIONS",
    "Table",
    "accuracy_table",
    "add_scores",
    "baseline_results",
    "check_exceptions",
    "corruption_errors",
    "monotone_check",
    "monotone_notes",
]

Table = dict[str, dict[int, float]]  # corruption -> severity -> accuracy

MONOTONE_EXCEPTIONS: dict[str, str] = {
    "glass_blur": "the published parameters do not grow together: in the CIFAR-10-C set "
    "severity 4 blurs less than 3 (sigma 0.25 vs 0.4) but swaps pixels twice, in the "
    "ImageNet-C set severity 2 swaps pixels once where 1 swaps them twice",
    "elastic_transform": "the published parameters trade one distortion for another: the "
    "affine jitter is largest at severity 1 (0.08 of the image size in the CIFAR-10-C set, "
    "with no elastic displacement) and shrinks as the elastic displacement grows; on 16 px "
    "digits the mean change per pixel falls from 43.5/255 at severity 1 to 23.2/255 at 5",
    "pixelate": "at small images the side after down-sampling is a whole number of pixels (16 "
    "px: 15, 14, 13, 12, 10) and a 16-token classifier's accuracy does not follow the "
    "corruption's strength: on 16 px digits the mean change per pixel grows with severity "
    "(3.6, 8.0, 8.6, 10.8, 13.2 /255), yet accuracy rose from severity 1 to 2 on a clean "
    "digits classifier and from 3 to 4 on a PGD-AT one (5 and 18 images more)",
}
"""Corruptions whose accuracy may rise with severity, and why (the default exceptions)."""


def accuracy_table(rows: Any) -> Table:
    """``{corruption: {severity: accuracy}}`` from result rows (dicts with "corruption",
    "severity" and "accuracy"), as in the "results" list of a corruption report."""
    table: Table = {}
    for row in rows:
        table.setdefault(str(row["corruption"]), {})[int(row["severity"])] = float(row["accuracy"])
    return table


def _mean(values: list[float | None]) -> float | None:
    """The mean of ``values``, or None when one of them is None (or there are none)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def corruption_errors(
    accuracy: Table,
    baseline: Table,
    clean: float | None = None,
    baseline_clean: float | None = None,
) -> dict[str, Any]:
    """The corruption error of every corruption of ``accuracy`` against ``baseline``, and mCE.

    Args:
        accuracy: the evaluated model's ``{corruption: {severity: accuracy}}``.
        baseline: the baseline's accuracies; it must hold every corruption and severity of
            ``accuracy``.
        clean, baseline_clean: clean accuracies of the model and of the baseline; the relative
            scores need both (None otherwise).

    Returns:
        ``{"ce": {c: CE_c}, "mce": mCE, "relative_ce": {c: rCE_c}, "relative_mce": ...}``
        (see the module docstring; undefined scores are None, and so is a mean over one).

    Raises:
        ValueError: the baseline lacks a corruption or severity of ``accuracy``.
    """
    relative = clean is not None and baseline_clean is not None
    ce: dict[str, float | None] = {}
    rce: dict[str, float | None] = {}
    for name, by_severity in accuracy.items():
        severities = sorted(by_severity)
        missing = [s for s in severities if s not in baseline.get(name, {})]
        if missing:
            raise ValueError(
                f"baseline has no result for {name} at severity {', '.join(map(str, missing))}; "
                "evaluate the baseline on every corruption and severity evaluated here"
            )
        ours = [by_severity[s] for s in severities]
        theirs = [baseline[name][s] for s in severities]
        ce[name] = _ratio(sum(1.0 - a for a in ours), sum(1.0 - a for a in theirs))
        if relative:
            rce[name] = _ratio(
                sum(clean - a for a in ours),  # type: ignore[operator]
                sum(baseline_clean - a for a in theirs),  # type: ignore[operator]
            )
    return {
        "ce": ce,
        "mce": _mean(list(ce.values())),
        "relative_ce": rce if relative else None,
        "relative_mce": _mean(list(rce.values())) if relative else None,
    }


def monotone_check(
    accuracy: Table, tolerance: float, exceptions: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Corruptions whose accuracy rises with severity by more than ``tolerance``.

    Accuracy is expected not to increase with severity. For each corruption the largest rise
    ``accuracy(t) - accuracy(s)`` over severities ``s < t`` is found; a rise above ``tolerance``
    is flagged.

    Args:
        accuracy: ``{corruption: {severity: accuracy}}``.
        tolerance: the largest rise not flagged.
        exceptions: ``{corruption: reason}`` for corruptions documented not to be monotone;
            their flags carry the reason under "expected" (None for the others).

    Returns:
        One dict per flagged corruption: "corruption", "from_severity", "to_severity",
        "from_accuracy", "to_accuracy", "increase" and "expected".
    """
    exceptions = exceptions or {}
    flags = []
    for name, by_severity in accuracy.items():
        severities = sorted(by_severity)
        pairs = [(s, t) for i, s in enumerate(severities) for t in severities[i + 1 :]]
        if not pairs:
            continue
        s, t = max(pairs, key=lambda p: by_severity[p[1]] - by_severity[p[0]])
        rise = by_severity[t] - by_severity[s]
        if rise > tolerance + 1e-9:  # a rise of exactly the tolerance (whole images) is not flagged
            flags.append(
                {
                    "corruption": name,
                    "from_severity": s,
                    "to_severity": t,
                    "from_accuracy": by_severity[s],
                    "to_accuracy": by_severity[t],
                    "increase": rise,
                    "expected": exceptions.get(name),
                }
            )
    return flags


def monotone_notes(flags: list[dict[str, Any]], tolerance: float) -> list[str]:
    """One sentence per flag of :func:`monotone_check`."""
    notes = []
    for f in flags:
        why = f" (expected: {f['expected']})" if f["expected"] else ""
        notes.append(
            f"accuracy rises with severity under {f['corruption']}: {f['from_accuracy']:.4g} at "
            f"severity {f['from_severity']}, {f['to_accuracy']:.4g} at severity "
            f"{f['to_severity']} (+{f['increase']:.4g} > tolerance {tolerance:.4g}){why}"
        )
    return notes


def _read_results(source: str | os.PathLike) -> dict[str, Any]:
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"baseline: no results file at {str(path)!r}")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"baseline: {str(path)!r} is not a JSON results file ({e})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"baseline: {str(path)!r} does not hold a results object")
    return loaded


def baseline_results(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A baseline's corruption results, from a report dict or its JSON file.

    Args:
        source: what :func:`~mimir_fast.evaluation.corruptions.evaluate_corruptions` returned
            (or :func:`mimir_fast.evaluate`'s report holding it under "corruptions"), or the
            path of its ``corruptions.json`` (or ``evaluation.json``).

    Returns:
        ``{"accuracy": Table, "clean_accuracy", "num_classes", "n_images", "seed", "source"}``
        (the last five None where the results do not say).

    Raises:
        ValueError: no such file, not JSON, or no per-corruption "results" rows.
    """
    name = repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "results"
    results = _read_results(source) if isinstance(source, (str, os.PathLike)) else source
    if isinstance(results.get("corruptions"), Mapping):  # an attack report holding them
        results = results["corruptions"]
    rows = results.get("results")
    try:
        table = accuracy_table(rows)
    except (KeyError, TypeError, ValueError):
        table = {}
    if not table:
        raise ValueError(
            f"baseline: {name} holds no corruption results (a 'results' list of rows with "
            "corruption, severity and accuracy, as evaluate_corruptions writes)"
        )
    return {
        "accuracy": table,
        "clean_accuracy": results.get("clean_accuracy"),
        "num_classes": results.get("num_classes"),
        "n_images": results.get("n_images"),
        "seed": results.get("seed"),
        "source": name,
    }


def check_exceptions(exceptions: Any, names: Sequence[str]) -> dict[str, str]:
    """``monotone_exceptions`` checked: a mapping from evaluated corruptions to reasons; None:
    those of :data:`MONOTONE_EXCEPTIONS` among ``names``."""
    if exceptions is None:
        return {k: v for k, v in MONOTONE_EXCEPTIONS.items() if k in names}
    if not isinstance(exceptions, Mapping):
        raise ValueError("monotone_exceptions must map corruption names to reasons")
    unknown = sorted(set(exceptions) - set(names))
    if unknown:
        raise ValueError(f"monotone_exceptions names corruptions not evaluated: {unknown}")
    return {str(k): str(v) for k, v in exceptions.items()}


def add_scores(
    report: dict[str, Any],
    accuracy: Table,
    base: dict[str, Any] | None,
    classes: int,
) -> None:
    """Add the baseline's accuracies, CE, mCE and their relative forms to a corruption report
    (None each without a baseline), and notes on what limits them.

    Args:
        report: the report being built (its "clean_accuracy", "n_images", "seed", "notes").
        accuracy: the model's accuracies.
        base: the baseline's results as :func:`baseline_results` returns them, or None.
        classes: the model's class count, which the baseline's must equal.

    Raises:
        ValueError: the baseline has another class count, or lacks a corruption or severity.
    """
    report.update(baseline=None, ce=None, mce=None, relative_ce=None, relative_mce=None)
    if base is None:
        return
    if base["num_classes"] is not None and base["num_classes"] != classes:
        raise ValueError(
            f"baseline has {base['num_classes']} classes but the evaluated model {classes}; "
            "compare models of the same task"
        )
    for key, label in (("n_images", "images"), ("seed", "seed")):
        if base.get(key) is not None and base[key] != report[key]:
            report["notes"].append(
                f"the baseline's results come from other {label} ({base[key]} vs "
                f"{report[key]}): CE compares different samples"
            )
    report.update(
        corruption_errors(
            accuracy, base["accuracy"], report["clean_accuracy"], base["clean_accuracy"]
        )
    )
    report["baseline"] = {
        "source": base["source"],
        "clean_accuracy": base["clean_accuracy"],
        "accuracy": {c: {s: base["accuracy"][c][s] for s in accuracy[c]} for c in accuracy},
    }
    undefined = [c for c, v in report["ce"].items() if v is None]
    if undefined:
        report["notes"].append(
            f"CE undefined (the baseline makes no error) for {', '.join(undefined)}: no mCE"
        )
