"""Figures of training runs: loss curves and masked-autoencoding grids.

Figures are drawn with matplotlib's Agg canvas on a private ``Figure`` (no pyplot, no global
backend switch, nothing is ever shown), and written atomically: a reader sees either the old
file or the complete new one. matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write
from .._validate import check_number
from .files import PathLike, Records, load_records

__all__ = ["plot_loss_curves", "save_image_grid", "save_reconstruction_grid"]


def _save_figure(fig: Any, out_png: PathLike, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to the figure
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


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
        mask_ratio: the fraction of patches removed, in [0, 1).
        seed: seeds the mask (and any randomness of the forward pass).
        max_images: how many images (columns) to draw at most.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    mask_ratio = check_number(mask_ratio, "mask_ratio", 0, 1, high_open=True)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = images[:max_images].detach().to(device=device, dtype=torch.float32)  # (n, C, H, W)
    loss, prediction, removed = _masked_autoencoding(model, x, mask_ratio, seed)
    original = x.cpu().clamp(0, 1)
    prediction = prediction.clamp(0, 1)
    masked = original * (1 - removed) + 0.5 * removed
    reconstruction = original * (1 - removed) + prediction * removed
    rows = [
        ("original", original),
        ("masked", masked),
        ("reconstruction", reconstruction),
        ("prediction", prediction),
    ]
    return save_image_grid(rows, out_png, title=f"mask ratio {mask_ratio:g}, loss {loss:.4g}")


@torch.no_grad()
def _masked_autoencoding(
    model: Any, x: torch.Tensor, mask_ratio: float, seed: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(loss, predicted image, removed-patch map) of ``model`` on ``x`` (N, C, H, W), in eval mode.

    The mask comes from ``seed`` on the CPU; torch's global RNG and the model's train/eval mode
    are left as they were. Both images are float32 on the CPU, (N, C, H, W); the map is 1 on
    the removed patches.
    """
    from ..ops import random_masking

    n, device = x.shape[0], x.device
    noise = torch.rand(n, model.num_patches, generator=torch.Generator().manual_seed(seed))
    ids_keep, _, _ = random_masking(n, model.num_patches, mask_ratio, torch.device("cpu"), noise)
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
            loss, pred, mask = model.forward_mae(x, mask_ratio, ids_keep=ids_keep.to(device))
            prediction = model.pred_to_image(pred.float(), reference=x).float()
    finally:
        model.train(was_training)
    patch_dim = pred.shape[-1]  # pred: (N, L, patch_dim), mask: (N, L)
    removed = model.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, patch_dim).contiguous())
    return float(loss), prediction.detach().float().cpu(), removed.detach().float().cpu()


def save_image_grid(
    rows: Sequence[tuple[str, torch.Tensor]], out_png: PathLike, title: str | None = None
) -> Path:
    """Draw named rows of images, ``[(name, (N, C, H, W) in [0, 1]), ...]``, one column per
    image.

    Args:
        rows: the rows, top to bottom; each shows its first ``n`` images, ``n`` the smallest
            batch of all rows.
        out_png: where to write the PNG (parent folders are created).
        title: optional figure title.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
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
