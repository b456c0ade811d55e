"""The files of a corruption evaluation: ``corruptions.json``, ``corruptions.md`` and the heatmap
``corruption_accuracy.png``, from the report
:func:`~mimir_fast.evaluation.corruptions.evaluate_corruptions` returns.

matplotlib is needed for the heatmap only: without it the JSON and the markdown are still
written, and both record that the heatmap was skipped. Every file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .._io import atomic_write
from .files import PathLike, write_report_files
from .tables import format_table

__all__ = [
    "CORRUPTION_HEATMAP",
    "CORRUPTION_JSON",
    "CORRUPTION_MD",
    "corruption_markdown",
    "corruption_rows",
    "plot_corruption_heatmap",
    "write_corruption_report",
]

CORRUPTION_JSON = "corruptions.json"
CORRUPTION_MD = "corruptions.md"
CORRUPTION_HEATMAP = "corruption_accuracy.png"


def _cell(table: dict[Any, Any], severity: int) -> float | None:
    """A severity's value in a table whose keys are ints (or strings, read back from JSON)."""
    value = table.get(severity, table.get(str(severity)))
    return None if value is None else float(value)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def corruption_rows(report: dict[str, Any], key: str = "accuracy") -> list[dict[str, Any]]:
    """The table of ``corruptions.md``: one row per corruption with its accuracy at every
    severity (a column each, empty where not evaluated), their mean and, with a baseline, CE
    and relative CE; then a "mean" row (per severity over the corruptions, the mean over every
    pair, mCE and relative mCE).

    Args:
        report: the dict :func:`~mimir_fast.evaluation.corruptions.evaluate_corruptions`
            returns.
        key: "accuracy" for the model's accuracies; the baseline's table is drawn from
            ``report["baseline"]["accuracy"]`` with ``key="baseline"`` (no CE columns).
    """
    table = report["baseline"]["accuracy"] if key == "baseline" else report["accuracy"]
    severities = report["severities"]
    scores = key == "accuracy" and report.get("ce") is not None
    relative = scores and report.get("relative_ce") is not None
    rows = []
    for name in report["corruptions"]:
        by_severity = table[name]
        row: dict[str, Any] = {"corruption": name}
        row.update({str(s): _cell(by_severity, s) for s in severities})
        row["mean"] = _mean([_cell(by_severity, s) for s in severities])
        if scores:
            row["CE"] = report["ce"][name]
        if relative:
            row["relative CE"] = report["relative_ce"][name]
        rows.append(row)
    last: dict[str, Any] = {"corruption": "mean"}
    last.update({str(s): _mean([r[str(s)] for r in rows]) for s in severities})
    cells = [r[str(s)] for r in rows for s in severities]
    last["mean"] = _mean(cells)
    if scores:
        last["CE"] = report["mce"]
    if relative:
        last["relative CE"] = report["relative_mce"]
    return rows + [last]


def _summary(report: dict[str, Any]) -> list[str]:
    """The lines under the title: clean and mean accuracy, mCE and its baseline."""
    line = (
        f"Clean accuracy {report['clean_accuracy']:.4g}; mean accuracy over every corruption "
        f"and severity {report['mean_accuracy']:.4g}."
    )
    lines = [line]
    base = report.get("baseline")
    if base is not None:
        mce, rel = report.get("mce"), report.get("relative_mce")
        text = "undefined" if mce is None else f"{mce:.4g}"
        relative = "" if rel is None else f", relative mCE {rel:.4g}"
        clean = base.get("clean_accuracy")
        clean = "" if clean is None else f", clean accuracy {clean:.4g}"
        lines.append(f"mCE {text}{relative} (baseline: {base['source']}{clean}).")
    return lines + [""]


def corruption_markdown(report: dict[str, Any]) -> str:
    """The markdown of ``corruptions.md``: the accuracy table (rows corruptions, columns
    severities, mean and CE), the baseline's table, the monotonicity check and the notes.

    Args:
        report: the dict :func:`~mimir_fast.evaluation.corruptions.evaluate_corruptions`
            returns.
    """
    defense = f", defense {report['defense']}" if report.get("defense") else ""
    lines = [
        f"# Accuracy under common corruptions ({report['n_images']} images{defense})",
        "",
        *_summary(report),
        format_table(corruption_rows(report)),
        "",
    ]
    if report.get("baseline") is not None:
        lines += ["## Baseline accuracy", "", format_table(corruption_rows(report, "baseline")), ""]
    tol = report["tolerance"]
    lines += [
        "## Monotonicity in severity",
        "",
        f"Accuracy should not rise with severity by more than {tol:.4g}.",
        "",
    ]
    lines += [f"- {w}" for w in report["warnings"]] or ["No corruption breaks it."]
    lines.append("")
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def plot_corruption_heatmap(report: dict[str, Any], path: PathLike) -> Path:
    """Draw the accuracy of every corruption (rows) at every severity (columns) as a heatmap,
    each cell labelled with its value (blank where not evaluated). Needs matplotlib.

    Args:
        report: the dict :func:`~mimir_fast.evaluation.corruptions.evaluate_corruptions`
            returns.
        path: where to write the PNG.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, severities = report["corruptions"], report["severities"]
    values = [[_cell(report["accuracy"][c], s) for s in severities] for c in names]
    grid = [[math.nan if v is None else v for v in row] for row in values]
    fig = Figure(figsize=(1.2 + 0.8 * len(severities) + 1.6, 1.2 + 0.35 * len(names)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v is not None:
                color = "black" if v > 0.6 else "white"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("severity")
    ax.set_title(f"accuracy under corruptions (clean {report['clean_accuracy']:.2f})", fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def write_corruption_report(report: dict[str, Any], out_dir: PathLike) -> dict[str, Path]:
    """Write ``corruptions.json``, ``corruptions.md`` and ``corruption_accuracy.png``.

    Without matplotlib the heatmap is skipped; the JSON and the markdown then carry a note
    saying so. ``report`` itself is not changed.

    Args:
        report: the dict :func:`~mimir_fast.evaluation.corruptions.evaluate_corruptions`
            returns.
        out_dir: the folder to write into (created if missing).

    Returns:
        The written files by kind: "json", "md" and, when drawn, "png".
    """
    return write_report_files(
        report,
        out_dir,
        "corruptions",
        corruption_markdown,
        CORRUPTION_HEATMAP,
        plot_corruption_heatmap,
    )
