"""The files of a robustness evaluation: ``evaluation.json``, ``evaluation.md`` and the plot
``robust_accuracy_vs_eps.png``, written from the report dict :func:`mimir_fast.evaluate`
returns.

matplotlib is needed for the plot only: without it the JSON and the markdown are still written,
and both record that the plot was skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_write
from .files import PathLike, write_report_files
from .tables import format_table

__all__ = [
    "PLOT_NAME",
    "WORST_CASE",
    "accuracy_by_eps",
    "attack_title",
    "evaluation_markdown",
    "plot_robust_accuracy",
    "robust_accuracy_series",
    "write_report",
]

PLOT_NAME = "robust_accuracy_vs_eps.png"
WORST_CASE = "worst case"  # the column (and plot line) of the per-sample worst case


def write_report(report: dict[str, Any], out_dir: PathLike) -> dict[str, Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and ``robust_accuracy_vs_eps.png``.

    Without matplotlib the plot is skipped; the JSON and the markdown then carry a "notes"
    entry saying so. ``report`` itself is not changed.

    Args:
        report: the dict :func:`mimir_fast.evaluate` returns.
        out_dir: the folder to write into (created if missing).

    Returns:
        The written files by kind: "json", "md" and, when drawn, "png".
    """
    return write_report_files(
        report, out_dir, "evaluation", evaluation_markdown, PLOT_NAME, plot_robust_accuracy
    )


def _eps_label(e: float, norm: str) -> str:
    return f"{e * 255:.3g}/255" if norm == "linf" else f"{e:.4g}"


def attack_title(report: dict[str, Any], label: str) -> str:
    """How tables and plots name attack ``label``: with its description where it has one,
    e.g. "autoattack (AutoAttack standard, Square 1000 queries)"."""
    description = report.get("descriptions", {}).get(label)
    return f"{label} ({description})" if description else label


def accuracy_by_eps(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per eps: the clean accuracy, each attack's robust accuracy (a column each, named
    by :func:`attack_title`) and the per-sample worst case over all of them (``WORST_CASE``).

    Args:
        report: the dict :func:`mimir_fast.evaluate` returns.
    """
    worst = {w["eps"]: w["robust_accuracy"] for w in report["worst_case"]}
    rows = []
    for e in sorted({*report["eps"], *(r["eps"] for r in report["results"])}):
        row: dict[str, Any] = {
            "eps": _eps_label(e, report["norm"]),
            "clean": report["clean_accuracy"],
        }
        for r in report["results"]:
            if abs(r["eps"] - e) < 1e-12:
                row[attack_title(report, r["attack"])] = r["robust_accuracy"]
        row[WORST_CASE] = worst.get(e)
        rows.append(row)
    return rows


def _accuracy_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The main table: clean accuracy, one row per attack and eps, the worst case per eps."""
    norm = report["norm"]
    rows: list[dict[str, Any]] = [
        {
            "attack": "clean",
            "eps": "0",
            "robust accuracy": report["clean_accuracy"],
            "attack success rate": None,
        }
    ]
    rows += [
        {
            "attack": attack_title(report, r["attack"]),
            "eps": _eps_label(r["eps"], norm),
            "robust accuracy": r["robust_accuracy"],
            "attack success rate": r["attack_success_rate"],
            "seconds": r["seconds"],
        }
        for r in report["results"]
    ]
    rows += [
        {
            "attack": "worst case (all attacks)",
            "eps": _eps_label(w["eps"], norm),
            "robust accuracy": w["robust_accuracy"],
        }
        for w in report["worst_case"]
    ]
    return rows


def _reconstruction_section(report: dict[str, Any]) -> list[str]:
    rows = [
        {
            k: (_eps_label(v, report["norm"]) if k == "eps" else v)
            for k, v in r.items()
            if k not in ("kind", "n_images")
        }
        for r in report["reconstruction"]
    ]
    return [
        "## Reconstruction attacks",
        "",
        "`*_input`: x vs x_adv; `*_recon`: reconstruction of x vs reconstruction of x_adv "
        "(same mask).",
        "",
        format_table(rows),
        "",
    ]


def _sanity_section(report: dict[str, Any]) -> list[str]:
    rows = [
        {
            "attack": r["attack"],
            "eps": _eps_label(r["eps"], report["norm"]),
            "robust accuracy": r["robust_accuracy"],
        }
        for r in report["sanity"] + report.get("more_steps", [])
    ]
    return ["## Sanity checks", "", format_table(rows), ""]


def evaluation_markdown(report: dict[str, Any]) -> str:
    """The markdown of ``evaluation.md``: the accuracy table, the reconstruction attacks, the
    sanity checks, the warnings and (when there are any) the notes.

    Args:
        report: the dict :func:`mimir_fast.evaluate` returns.
    """
    defense = f", defense {report['defense']}" if report["defense"] else ""
    eot = report.get("eot_samples")
    eot = f", EOT {eot}" if eot and (eot > 1 or report.get("random_pipeline")) else ""
    lines = [
        f"# Robustness evaluation ({report['n_images']} images, {report['norm']}, "
        f"{report['threat']}-box{defense}{eot})",
        "",
        format_table(_accuracy_rows(report)),
        "",
    ]
    if report["worst_case"]:
        lines += [
            "## Robust accuracy by eps",
            "",
            f"`{WORST_CASE}`: an image counts as robust only if it survived every attack.",
            "",
            format_table(accuracy_by_eps(report)),
            "",
        ]
    if report["reconstruction"]:
        lines += _reconstruction_section(report)
    if report["sanity"] or report.get("more_steps"):
        lines += _sanity_section(report)
    lines += ["## Warnings", ""] + ([f"- {w}" for w in report["warnings"]] or ["none"]) + [""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def robust_accuracy_series(report: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Line name -> (eps on the plot's axis, robust accuracy) sorted by eps; one line per
    attack (named by :func:`attack_title`), then the worst case (``WORST_CASE``)."""
    scale = 255 if report["norm"] == "linf" else 1
    series: dict[str, list[tuple[float, float]]] = {}
    for r in report["results"]:
        name = attack_title(report, r["attack"])
        series.setdefault(name, []).append((r["eps"] * scale, r["robust_accuracy"]))
    series[WORST_CASE] = [(w["eps"] * scale, w["robust_accuracy"]) for w in report["worst_case"]]
    return {name: sorted(points) for name, points in series.items()}


def plot_robust_accuracy(report: dict[str, Any], path: PathLike) -> Path:
    """Draw robust accuracy against eps, one line per attack plus the worst case (black,
    dashed, drawn on top).

    Every line starts at the clean accuracy at eps 0. Needs matplotlib.

    Args:
        report: the dict :func:`mimir_fast.evaluate` returns.
        path: where to write the PNG.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in robust_accuracy_series(report).items():
        worst = name == WORST_CASE
        ax.plot(
            [0.0] + [p[0] for p in points],
            [report["clean_accuracy"]] + [p[1] for p in points],
            marker="o",
            label=name,
            linestyle="--" if worst else "-",
            color="black" if worst else None,
            linewidth=2.2 if worst else 1.5,
            zorder=3 if worst else 2,
        )
    norm = report["norm"]
    ax.set_xlabel("eps (x 1/255)" if norm == "linf" else f"eps ({norm.upper()})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"robust accuracy vs eps ({report['threat']}-box)")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
