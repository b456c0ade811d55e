"""Accuracy under common corruptions (Hendrycks & Dietterich 2019, ImageNet-C).

:func:`evaluate_corruptions` corrupts the evaluated images with every requested corruption at
every requested severity (:func:`mimir_fast.data.corrupt`), classifies them with the model (or
the defended pipeline) and reports the accuracy of each, their mean, and with a ``baseline``
the corruption errors CE and mCE (:mod:`~mimir_fast.evaluation.corruption_scores`).
:func:`mimir_fast.evaluate` runs it with ``corruptions=...``.

Every draw is seeded: a batch's corruption by ``(seed, corruption, batch index)``, a random
pipeline's prediction as in the attack evaluation (``seed``, a salt per corruption and
severity, the batch index), so results depend on ``batch_size`` but on nothing else. The
severities of a corruption share its seed (common random numbers): the noises draw the same
words at every severity, so a value's noise grows with the severity instead of being drawn
anew, and accuracy across severities differs by the corruption's strength, not by luck. The model
and the baseline see the same corrupted images. Corruptions are not split over the ranks of a
process group: every process evaluates every image, and the main one writes the files.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from .._validate import check_int, check_number, is_integer
from ..attacks import Defended
from ..attacks.base import check_images, check_labels, num_classes_of
from ..report.corruptions import write_corruption_report
from .corruption_scores import (
    Table,
    add_scores,
    baseline_results,
    check_exceptions,
    monotone_check,
    monotone_notes,
)
from .inputs import device_of, load_data
from .runner import AttackRunner

__all__ = [
    "SEVERITIES",
    "corruption_plan",
    "describe_defense",
    "evaluate_corruptions",
    "run_corruptions",
]

SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTION_SALT = 20_000  # prediction salts of corrupted batches start here (attacks: 1, 2, ...)

CorruptFn = Callable[..., Any]


def _corruption_api(
    corrupt_fn: CorruptFn | None, names: Sequence[str] | None
) -> tuple[CorruptFn, tuple[str, ...]]:
    """The corruption function and its corruption names (by default the data package's)."""
    if corrupt_fn is None or names is None:
        from ..data.corruptions import CORRUPTIONS, corrupt

        corrupt_fn = corrupt if corrupt_fn is None else corrupt_fn
        names = CORRUPTIONS if names is None else names
    return corrupt_fn, tuple(names)


# ---------------------------------------------------------------------- what to evaluate
def _severity(word: str, level: str) -> int:
    """The severity of a ``"name:severity"`` entry, an integer in 1..5."""
    text = level.strip()
    if not text.isdigit() or not 1 <= int(text) <= 5:
        raise ValueError(f"corruptions: the severity of {word!r} must be an integer in 1..5")
    return int(text)


def _entries(corruptions: Any) -> list[str]:
    """The comma-separated words of ``corruptions`` (a string or a sequence of strings)."""
    items = [corruptions] if isinstance(corruptions, str) else corruptions
    if not isinstance(items, Sequence) or not all(isinstance(i, str) for i in items):
        raise ValueError(
            "corruptions must be 'all', a name, 'name:severity' or a list of them, "
            f"got {corruptions!r}"
        )
    words = [w.strip() for item in items for w in item.split(",") if w.strip()]
    if not words:
        raise ValueError("corruptions must name at least one corruption (or 'all')")
    return words


def corruption_plan(
    corruptions: str | Sequence[str] = "all",
    severities: int | Sequence[int] = SEVERITIES,
    names: Sequence[str] | None = None,
) -> list[tuple[str, int]]:
    """The (corruption, severity) pairs to evaluate, grouped by corruption.

    Args:
        corruptions: "all", a corruption's name, ``"name:severity"`` (e.g. ``"fog:3"``), or a
            list (or comma-separated string) of them. A name without a severity gets every
            one of ``severities``; duplicates are merged. Hyphens may stand for underscores.
        severities: the severities (integers in 1..5) of names given without one.
        names: the known corruptions; default :data:`mimir_fast.data.CORRUPTIONS`.

    Raises:
        ValueError: an unknown corruption, or a severity outside 1..5 (naming the argument).
    """
    names = _corruption_api(None, names)[1] if names is None else tuple(names)
    sevs = [severities] if is_integer(severities) else severities
    if isinstance(sevs, str) or not isinstance(sevs, Sequence) or not sevs:
        raise ValueError(f"severities must be a non-empty list of integers in 1..5, got {sevs!r}")
    bad = [s for s in sevs if not is_integer(s) or not 1 <= s <= 5]
    if bad:
        raise ValueError(f"severities must be integers in 1..5, got {bad[0]!r}")
    default = sorted({int(s) for s in sevs})
    chosen: dict[str, set[int]] = {}
    for word in _entries(corruptions):
        name, sep, level = word.partition(":")
        name = name.strip().lower().replace("-", "_")
        if name != "all" and name not in names:
            raise ValueError(
                f"corruptions names an unknown corruption {name!r}; choose from all, "
                + ", ".join(names)
            )
        wanted = [_severity(word, level)] if sep else default
        for target in names if name == "all" else [name]:
            chosen.setdefault(target, set()).update(wanted)
    return [(name, s) for name, levels in chosen.items() for s in sorted(levels)]


# ---------------------------------------------------------------------- running them
def _draw(seed: int, name: str, batch: int) -> int:
    """The corruption seed of one batch at every severity (in [0, 2**32))."""
    code = zlib.crc32(name.encode())
    return ((seed * 1_000_003 + code) * 1_000_033 + batch) % 2**32


def _salt(name: str, severity: int) -> int:
    """The prediction salt of one corruption and severity (random pipelines draw by it)."""
    return CORRUPTION_SALT + zlib.crc32(name.encode()) * 8 + severity


def _corrupted(fn: CorruptFn, x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """``x`` (B, C, H, W) corrupted on the CPU, back on its device and in its dtype."""
    out = fn(x.detach().float().cpu(), name, severity, seed=seed)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise RuntimeError(
            f"corruption {name} (severity {severity}) returned "
            f"{getattr(out, 'shape', type(out).__name__)} for images of shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(out).all()) or float(out.min()) < 0 or float(out.max()) > 1:
        raise RuntimeError(f"corruption {name} (severity {severity}) left [0, 1]; this is a bug")
    return out.to(device=x.device, dtype=x.dtype)


def _accuracies(
    runners: list[AttackRunner],
    plan: list[tuple[str, int]],
    corrupt_fn: CorruptFn,
    progress: bool,
) -> list[Table]:
    """Each runner's pipeline's accuracy on every corruption and severity of ``plan``; every
    pipeline classifies the same corrupted batches."""
    lead = runners[0]
    tables: list[Table] = [{} for _ in runners]
    with lead.progress(progress, len(plan)):
        for name, severity in plan:
            hits = [0] * len(runners)
            for start, xb, yb in lead.batches():
                seed = _draw(lead.seed, name, start // lead.batch_size)
                xc = _corrupted(corrupt_fn, xb, name, severity, seed)  # (B, C, H, W)
                for k, runner in enumerate(runners):
                    hits[k] += int((runner.predict(xc, _salt(name, severity), start) == yb).sum())
                if lead.bar is not None:
                    lead.bar.set_postfix_str(f"{name} severity {severity}")
                    lead.bar.update(1)
            for table, count in zip(tables, hits):
                table.setdefault(name, {})[severity] = count / lead.n
    return tables


def _runner(pipeline: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Any:
    """A one-process runner for seeded predictions, and the pipeline's class count."""
    runner = AttackRunner(
        pipeline, pipeline, x, y, batch_size, seed, "linf", distributed.DistContext()
    )
    classes = runner.probe()[1]
    if classes is None:
        raise ValueError("the evaluated model must return logits of shape (N, classes)")
    return runner, classes


def _baseline(baseline: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Any:
    """(runner, class count) of a baseline model, or its results (a dict) read back."""
    if baseline is None:
        return None, None
    if isinstance(baseline, (str, Mapping)) or hasattr(baseline, "__fspath__"):
        return None, baseline_results(baseline)
    if not callable(baseline):
        raise ValueError(
            "baseline must be a model, the results of its corruption evaluation (a dict) or "
            f"their JSON file, got {type(baseline).__name__}"
        )
    try:
        return _runner(baseline, x, y, batch_size, seed), None
    except ValueError as e:
        raise ValueError(f"baseline: {e}") from None


# ---------------------------------------------------------------------- the report
def _report(
    plan: list[tuple[str, int]],
    accuracy: Table,
    clean: float,
    n: int,
    classes: int,
    seed: int,
    defense: str | None,
) -> dict[str, Any]:
    """The accuracy part of the report (scores, checks and notes are added after)."""
    cells = [accuracy[c][s] for c, s in plan]
    return {
        "clean_accuracy": clean,
        "n_images": n,
        "num_classes": classes,
        "seed": seed,
        "defense": defense,
        "corruptions": list(accuracy),
        "severities": sorted({s for _, s in plan}),
        "results": [
            {
                "corruption": c,
                "severity": s,
                "accuracy": accuracy[c][s],
                "error": 1 - accuracy[c][s],
            }
            for c, s in plan
        ],
        "accuracy": accuracy,
        "mean_accuracy": sum(cells) / len(cells),
        "corruption_accuracy": {c: sum(v.values()) / len(v) for c, v in accuracy.items()},
        "notes": [],
    }


def run_corruptions(
    pipeline: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: list[tuple[str, int]],
    *,
    baseline: Any = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
    tolerance: float | None = None,
    monotone_exceptions: Mapping[str, str] | None = None,
    corrupt_fn: CorruptFn | None = None,
    defense: str | None = None,
) -> dict[str, Any]:
    """The corruption report of ``pipeline`` on checked images ``x`` (N, C, H, W) and labels
    ``y`` (N,) on one device, for the pairs of :func:`corruption_plan`; see
    :func:`evaluate_corruptions` for the arguments and the report (``defense``: how the report
    names the defense, None without one)."""
    started = time.perf_counter()
    corrupt_fn = _corruption_api(corrupt_fn, [name for name, _ in plan])[0]
    exceptions = check_exceptions(monotone_exceptions, [name for name, _ in plan])
    n = x.shape[0]
    tol = max(0.02, 2.0 / n) if tolerance is None else check_number(tolerance, "tolerance", 0, 1)
    runner, classes = _runner(pipeline, x, y, batch_size, seed)
    check_labels(y, n, classes)
    base_run, base = _baseline(baseline, x, y, batch_size, seed)
    runners = [runner]
    if base_run is not None:
        if base_run[1] != classes:
            raise ValueError(
                f"baseline has {base_run[1]} classes but the evaluated model {classes}; "
                "compare models of the same task"
            )
        runners.append(base_run[0])
    tables = _accuracies(runners, plan, corrupt_fn, progress)
    clean = int(runner.clean_correct().sum()) / n
    report = _report(plan, tables[0], clean, n, classes, seed, defense)
    if base_run is not None:
        base = {
            "accuracy": tables[1],
            "clean_accuracy": int(base_run[0].clean_correct().sum()) / n,
            "num_classes": base_run[1],
            "source": "model",
        }
    add_scores(report, tables[0], base, classes)
    report["tolerance"] = tol
    report["monotone"] = monotone_check(tables[0], tol, exceptions)
    report["warnings"] = monotone_notes([f for f in report["monotone"] if not f["expected"]], tol)
    report["notes"] += monotone_notes([f for f in report["monotone"] if f["expected"]], tol)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def evaluate_corruptions(
    model: Any,
    data: Any,
    corruptions: str | Sequence[str] = "all",
    severities: int | Sequence[int] = SEVERITIES,
    baseline: Any = None,
    defense: Any = None,
    batch_size: int = 128,
    max_images: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    tolerance: float | None = None,
    monotone_exceptions: Mapping[str, str] | None = None,
    corrupt_fn: CorruptFn | None = None,
    corruption_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of ``model`` (optionally behind ``defense``) under common corruptions.

    Args:
        model: a classifier ``model(x) -> logits`` on images in [0, 1].
        data: a dataset of ``(image, label)``, an ``(x, y)`` tensor pair, or a DataLoader.
        corruptions: "all", names, ``"name:severity"`` entries (:func:`corruption_plan`).
        severities: the severities (1..5) of corruptions named without one.
        baseline: for CE and mCE: a baseline classifier (evaluated without the defense, on
            the same corrupted images, on the same device), or its results (the dict this
            function returned for it, or its ``corruptions.json``). Its class count must be
            the model's.
        defense: a :class:`~mimir_fast.attacks.Defended` pipeline, or a purifier callable
            (wrapped as ``Defended(model, defense)``), as for :func:`mimir_fast.evaluate`.
        batch_size, max_images: batching and the number of images used.
        out_dir: where to write ``corruptions.json``, ``corruptions.md`` and
            ``corruption_accuracy.png`` (:func:`~mimir_fast.report.write_corruption_report`).
        seed: seeds every corruption and every prediction of a random pipeline.
        progress: show a progress bar.
        device: where to run; default the model's device.
        tolerance: the rise of accuracy with severity :func:`monotone_check` tolerates;
            default ``max(0.02, 2 / n_images)``.
        monotone_exceptions: ``{corruption: reason}``: corruptions documented to be
            non-monotone in severity, noted rather than warned about; default
            :data:`~mimir_fast.evaluation.corruption_scores.MONOTONE_EXCEPTIONS` ({}: none).
        corrupt_fn: ``corrupt_fn(images, corruption, severity, seed=...) -> images`` on float
            tensors (N, C, H, W) in [0, 1]; default :func:`mimir_fast.data.corrupt`.
        corruption_names: the corruptions ``corrupt_fn`` knows; default
            :data:`mimir_fast.data.CORRUPTIONS`.

    Returns:
        ``clean_accuracy``, ``n_images``, ``num_classes``, ``seed``, ``corruptions``,
        ``severities``, ``results`` (one row per corruption and severity: ``accuracy``,
        ``error``), ``accuracy`` (corruption -> severity -> accuracy), ``mean_accuracy`` (over
        every pair), ``corruption_accuracy`` (per corruption, over its severities),
        ``baseline`` (source, clean accuracy and accuracies), ``ce``, ``mce``,
        ``relative_ce``, ``relative_mce`` (None without a baseline;
        :mod:`~mimir_fast.evaluation.corruption_scores`), ``tolerance``, ``monotone`` (the
        flags of :func:`monotone_check`), ``warnings``, ``notes``, ``defense``, ``seconds``.
    """
    corrupt_fn, names = _corruption_api(corrupt_fn, corruption_names)
    plan = corruption_plan(corruptions, severities, names)
    check_int(batch_size, "batch_size", low=1)
    check_int(seed, "seed")
    pipeline, x, y = _inputs(model, data, defense, max_images, device)
    report = run_corruptions(
        pipeline,
        x,
        y,
        plan,
        baseline=baseline,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        tolerance=tolerance,
        monotone_exceptions=monotone_exceptions,
        corrupt_fn=corrupt_fn,
        defense=describe_defense(pipeline, defense),
    )
    if out_dir is not None and distributed.current().is_main:
        write_corruption_report(report, out_dir)
    return report


def _inputs(
    model: Any, data: Any, defense: Any, max_images: int | None, device: Any
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The evaluated pipeline, and the checked images (N, C, H, W) and labels (N,) on the
    device."""
    x, y = load_data(data, max_images)
    check_images(x)
    x = x.to(device_of(model, device))
    pipeline = model
    if defense is not None:
        pipeline = defense if isinstance(defense, Defended) else Defended(model, defense)
    return pipeline, x, check_labels(y, x.shape[0], num_classes_of(pipeline)).to(x.device)


def describe_defense(pipeline: Any, defense: Any) -> str | None:
    """How a report names the defense (None without one), as :func:`mimir_fast.evaluate` does."""
    if defense is None:
        return None
    return repr(pipeline.purifier if isinstance(pipeline, Defended) else defense)
