"""GitHub-markdown tables of result rows."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["format_table"]


def _cell(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif (
        hasattr(value, "item") and getattr(value, "size", None) == 1 and not isinstance(value, str)
    ):
        value = value.item()  # numpy scalars
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype == torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of ``rows`` (one dict per row).

    Args:
        rows: the table's rows; a missing key or ``None`` gives an empty cell.
        columns: the columns, in order; default: every key of ``rows`` in order of first
            appearance.

    Floats are written with 4 significant digits (``f"{x:.4g}"``; scale percentages
    yourself), integers in full. Columns are padded to a common width so that the table is
    also readable as plain text; numeric columns are right-aligned (``---:``). Returns the
    table without a trailing newline ("" when there are no columns).
    """
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    columns = [str(c) for c in columns]
    if not columns:
        return ""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(_is_number(row[c]) for row in rows if row.get(c) is not None)
        and any(row.get(c) is not None for row in rows)
        for c in columns
    ]
    headers = [c.replace("|", "\\|") for c in columns]
    widths = [max([3, len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    separator = (
        "| "
        + " | ".join("-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric))
        + " |"
    )
    return "\n".join([line(headers), separator] + [line(r) for r in cells])
