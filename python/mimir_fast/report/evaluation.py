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
from .files import PathLike, write_json
from .tables import format_table

__all__ = ["PLOT_NAME", "evaluation_markdown", "plot_robust_accuracy", "write_report"]

PLOT_NAME = "robust_accuracy_vs_eps.png"
NO_MATPLOTLIB = (
    f"{PLOT_NAME} skipped: matplotlib is not installed "
    "(pip install 'mimir-fast[plot]', or matplotlib)"
)


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    can_plot = _has_matplotlib()
    if not can_plot:
        report = {**report, "notes": [*report.get("notes", []), NO_MATPLOTLIB]}
    paths = {"json": write_json(report, out / "evaluation.json")}
    text = evaluation_markdown(report)
    paths["md"] = atomic_write(out / "evaluation.md", lambda tmp: Path(tmp).write_text(text))
    if can_plot:
        paths["png"] = plot_robust_accuracy(report, out / PLOT_NAME)
    return paths


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401 (only whether it imports)
    except ImportError:
        return False
    return True


def _eps_label(e: float, norm: str) -> str:
    return f"{e * 255:.3g}/255" if norm == "linf" else f"{e:.4g}"


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
            "attack": r["attack"],
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
        for r in report["sanity"]
    ]
    return ["## Sanity checks", "", format_table(rows), ""]


def evaluation_markdown(report: dict[str, Any]) -> str:
    """The markdown of ``evaluation.md``: the accuracy table, the reconstruction attacks, the
    sanity checks, the warnings and (when there are any) the notes.

    Args:
        report: the dict :func:`mimir_fast.evaluate` returns.
    """
    defense = f", defense {report['defense']}" if report["defense"] else ""
    lines = [
        f"# Robustness evaluation ({report['n_images']} images, {report['norm']}, "
        f"{report['threat']}-box{defense})",
        "",
        format_table(_accuracy_rows(report)),
        "",
    ]
    if report["reconstruction"]:
        lines += _reconstruction_section(report)
    if report["sanity"]:
        lines += _sanity_section(report)
    lines += ["## Warnings", ""] + ([f"- {w}" for w in report["warnings"]] or ["none"]) + [""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def plot_robust_accuracy(report: dict[str, Any], path: PathLike) -> Path:
    """Draw robust accuracy against eps, one line per attack plus the worst case (dashed).

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
    scale = 255 if report["norm"] == "linf" else 1
    series: dict[str, list[tuple[float, float]]] = {}
    for r in report["results"]:
        series.setdefault(r["attack"], []).append((r["eps"] * scale, r["robust_accuracy"]))
    series["worst case"] = [(w["eps"] * scale, w["robust_accuracy"]) for w in report["worst_case"]]
    for name, points in series.items():
        points = sorted(points)
        ax.plot(
            [0.0] + [p[0] for p in points],
            [report["clean_accuracy"]] + [p[1] for p in points],
            marker="o",
            label=name,
            linestyle="--" if name == "worst case" else "-",
        )
    ax.set_xlabel("eps (x 1/255)" if report["norm"] == "linf" else "eps (L2)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"robust accuracy vs eps ({report['threat']}-box)")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
