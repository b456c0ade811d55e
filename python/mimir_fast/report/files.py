"""Report files: pretty JSON written atomically, and metric records read back."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write

__all__ = ["PathLike", "Records", "load_records", "write_json", "write_report_files"]

PathLike = str | os.PathLike
Records = Sequence[Mapping[str, Any]]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON (plus a final newline) to ``path``, atomically.

    Paths, dataclasses, sets, tensors and numpy values are converted. The text goes to a
    temp file in the same folder, which then replaces ``path`` (``os.replace``), so a crash
    never leaves a half-written file. Returns ``path``.
    """
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"  # fails before touching the disk

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def load_records(source: Records | PathLike) -> list[dict[str, Any]]:
    """Metric records from a list of dicts, a ``metrics.jsonl`` file or a run directory.

    Lines that are not JSON objects (e.g. one cut short by a crash) are skipped.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no metrics file at {path}")
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records
    if isinstance(source, Mapping):
        raise TypeError("expected a list of records or a path, got a single dict")
    return [dict(r) for r in source]


def write_report_files(
    report: dict[str, Any],
    out_dir: PathLike,
    stem: str,
    markdown: Callable[[dict[str, Any]], str],
    plot_name: str,
    plot: Callable[[dict[str, Any], Path], Path],
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and the figure ``plot_name``, each atomically.

    Without matplotlib the figure is skipped and the JSON and markdown carry a "notes" entry
    saying so; ``report`` itself is not changed. Returns the written files by kind: "json",
    "md" and, when drawn, "png".
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    can_plot = _has_matplotlib()
    if not can_plot:
        note = (
            f"{plot_name} skipped: matplotlib is not installed "
            "(pip install 'mimir-fast[plot]', or matplotlib)"
        )
        report = {**report, "notes": [*report.get("notes", []), note]}
    paths = {"json": write_json(report, out / f"{stem}.json")}
    text = markdown(report)
    paths["md"] = atomic_write(out / f"{stem}.md", lambda tmp: Path(tmp).write_text(text))
    if can_plot:
        paths["png"] = plot(report, out / plot_name)
    return paths


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401 (only whether it imports)
    except ImportError:
        return False
    return True
