"""``mimir_fast.report``: pictures and tables of training runs.

- :func:`plot_loss_curves`: train/test loss (and accuracy) against the step, for one run or
  several side by side (e.g. pretraining and finetuning).
- :func:`save_reconstruction_grid`: original / masked / reconstruction / prediction rows of a
  MaskedViT's masked autoencoding, as in the MAE papers.
- :func:`format_table`: a GitHub-markdown table of result rows.
- :func:`write_json`: pretty JSON, written atomically.

Figures are drawn with matplotlib's Agg canvas on a private ``Figure`` (no pyplot, no global
backend switch, nothing is ever shown), and written atomically: a reader sees either the old
file or the complete new one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write

__all__ = [
    "format_table",
    "load_records",
    "plot_loss_curves",
    "save_reconstruction_grid",
    "write_json",
]

PathLike = str | os.PathLike
Records = Sequence[Mapping[str, Any]]


# ---------------------------------------------------------------------- files
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


def _save_figure(fig: Any, out_png: PathLike, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to the figure
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


# ---------------------------------------------------------------------- tables
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


# ---------------------------------------------------------------------- loss curves
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


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        if r.get("split", "train") != split or key not in r:
            continue
        try:
            y = float(r[key])
        except (TypeError, ValueError):
            continue
        if math.isfinite(y):
            xs.append(float(r.get("step", i)))
            ys.append(y)
    return xs, ys


def _plot_metric(ax: Any, records: list[dict[str, Any]], key: str) -> bool:
    drew = False
    for split, style in (
        ("train", {"linewidth": 1.2}),
        ("test", {"marker": "o", "linewidth": 1.5}),
    ):
        xs, ys = _series(records, split, key)
        if xs:
            ax.plot(xs, ys, label=f"{split} {key}", **style)
            drew = True
    if drew:
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return drew


def plot_loss_curves(
    records: Records | PathLike | Mapping[str, Records | PathLike],
    out_png: PathLike,
    title: str | None = None,
) -> Path:
    """Plot train and test loss against the step (and accuracy when the records have it).

    Args:
        records: metric records as written to ``metrics.jsonl`` (dicts with "step", "split"
            ("train" or "test") and metrics such as "loss" and "accuracy"), the path of such a
            file or of a run directory holding one; or ``{label: records-or-path}`` to draw
            several runs side by side, one column each (e.g. pretraining and finetuning).
        out_png: where to write the PNG (parent folders are created).
        title: optional figure title.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.figure import Figure

    if isinstance(records, Mapping):
        runs = {str(label): load_records(src) for label, src in records.items()}
        if not runs:
            raise ValueError("plot_loss_curves got an empty dict of runs")
    else:
        runs = {"": load_records(records)}
    with_accuracy = any(
        _series(r, s, "accuracy")[0] for r in runs.values() for s in ("train", "test")
    )
    nrows, ncols = (2 if with_accuracy else 1), len(runs)
    fig = Figure(figsize=(4.8 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for col, (label, recs) in enumerate(runs.items()):
        ax = axes[0][col]
        if not _plot_metric(ax, recs, "loss"):
            ax.text(0.5, 0.5, "no loss records", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        if label:
            ax.set_title(label)
        if with_accuracy:
            ax = axes[1][col]
            if not _plot_metric(ax, recs, "accuracy"):
                ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save_figure(fig, out_png, dpi=100)


# ---------------------------------------------------------------------- reconstructions
def _to_display(img: torch.Tensor) -> tuple[Any, str | None]:
    """(C, H, W) in [0, 1] -> an array for imshow and its colormap."""
    if img.shape[0] == 3:
        return img.permute(1, 2, 0).numpy(), None
    return img[0].numpy(), "gray"


@torch.no_grad()
def save_reconstruction_grid(
    model: Any,
    images: torch.Tensor,
    out_png: PathLike,
    mask_ratio: float = 0.75,
    seed: int = 0,
    max_images: int = 8,
) -> Path:
    """Draw a MaskedViT's masked autoencoding of ``images``, one column per image.

    Rows: the original; the masked input (removed patches grey, 0.5); the reconstruction
    (predicted pixels pasted into the removed patches, visible patches from the original, as
    in the MAE papers); the full prediction of every patch. The model runs in eval mode without
    gradients and its previous train/eval mode is restored. Masks come from ``seed`` (the same
    grid on every call and on every device) and torch's global RNG is left untouched.

    Args:
        model: a :class:`~mimir_fast.MaskedViT` (anything with ``forward_mae``,
            ``pred_to_image``, ``unpatchify`` and ``num_patches``).
        images: (N, C, H, W) (or one (C, H, W)) float images in [0, 1]; the first
            ``max_images`` are drawn. One channel is drawn in grey, three as RGB, other
            counts show the first channel.
        out_png: where to write the PNG (parent folders are created).

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """

    from .ops import random_masking

    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    if not (isinstance(mask_ratio, (int, float)) and 0.0 <= mask_ratio < 1.0):
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = images[:max_images].detach().to(device=device, dtype=torch.float32)
    n = x.shape[0]

    noise = torch.rand(n, model.num_patches, generator=torch.Generator().manual_seed(seed))
    ids_keep, _, _ = random_masking(
        n, model.num_patches, float(mask_ratio), torch.device("cpu"), noise
    )
    was_training = model.training
    fork_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        model.eval()
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            loss, pred, mask = model.forward_mae(x, float(mask_ratio), ids_keep=ids_keep.to(device))
            prediction = model.pred_to_image(pred.float(), reference=x).float()
    finally:
        model.train(was_training)

    patch_dim = pred.shape[-1]
    removed = model.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, patch_dim).contiguous())
    x, prediction, removed = (t.detach().float().cpu() for t in (x, prediction, removed))
    original = x.clamp(0, 1)
    prediction = prediction.clamp(0, 1)
    masked = original * (1 - removed) + 0.5 * removed
    reconstruction = original * (1 - removed) + prediction * removed
    rows = [
        ("original", original),
        ("masked", masked),
        ("reconstruction", reconstruction),
        ("prediction", prediction),
    ]

    return save_image_grid(
        rows, out_png, title=f"mask ratio {mask_ratio:g}, loss {float(loss):.4g}"
    )


def save_image_grid(
    rows: Sequence[tuple[str, torch.Tensor]], out_png: PathLike, title: str | None = None
) -> Path:
    """Draw named rows of images, ``[(name, (N, C, H, W) in [0, 1]), ...]``, one column per image."""
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("save_image_grid needs at least one row")
    n = min(r[1].shape[0] for r in rows)
    # a fixed layout: constrained layout costs seconds on a grid of 32 images
    cell, left, top = 1.2, 1.0, 0.4
    width, height = left + cell * n + 0.1, top + cell * len(rows) + 0.1
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width,
        right=1 - 0.1 / width,
        bottom=0.1 / height,
        top=1 - top / height,
        wspace=0.06,
        hspace=0.06,
    )
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (name, batch) in enumerate(rows):
        batch = batch.detach().float().cpu().clamp(0, 1)
        for c in range(n):
            ax = axes[r][c]
            array, cmap = _to_display(batch[c])
            ax.imshow(array, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize="small")
    if title:
        fig.suptitle(title, fontsize="small")
    return _save_figure(fig, out_png, dpi=100)
