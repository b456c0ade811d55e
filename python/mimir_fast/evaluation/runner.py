"""Running attacks over the evaluated images, batch by batch, seeded and sharded over ranks.

:class:`AttackRunner` attacks this process's share of the images (whole batches go to the
ranks in turn), checks every adversarial batch against the threat model, and gathers the
per-image results from every rank. Every random draw of a batch is seeded by
``(seed, salt, batch index, stream)``, so no result depends on the number of processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .. import distributed
from ..attacks import MaskedReconstruction
from ..attacks.base import Attack, attack_mode
from ..attacks.ensemble import Ensemble
from ..metrics import psnr, ssim

if TYPE_CHECKING:
    from .resume import Journal

__all__ = [
    "PROBE_IMAGES",
    "RECON_KEYS",
    "AttackRun",
    "AttackRunner",
    "check_same_images",
    "slowest",
]

RECON_KEYS = ("psnr_input", "ssim_input", "psnr_recon", "ssim_recon", "loss_clean", "loss_adv")
PROBE_IMAGES = 4  # images of the random-pipeline probe
PROBE_SALT = -1  # the probe's draws: a salt no prediction or attack uses


class AttackRun(NamedTuple):
    """One attack at one eps: its report label, its spec, the attack and its kind."""

    label: str
    spec: Any
    eps: float
    attack: Attack | Ensemble
    kind: str


class AttackRunner:
    """Runs predictions and attacks on this process's share of the images, batch by batch.

    Whole batches go to the ranks in turn (batch ``b`` on rank ``b % world_size``); every
    random draw of a batch is seeded by ``(seed, salt, batch index, stream)``, so no result
    depends on the number of ranks. Per-image results are gathered from all ranks.

    Args:
        pipeline: what is evaluated (the model, or the defended pipeline).
        attacked: what the attacks differentiate (the pipeline, or its classifier: gray-box).
        x, y: every image (N, C, H, W) and label (N,), on the evaluation's device.
        batch_size, seed, norm: see :func:`evaluate`.
        ctx: the process group (disabled: this process evaluates every image).

    Attributes:
        journal: where finished batches are recorded and read back from
            (:mod:`~mimir_fast.evaluation.resume`); None: nothing is recorded.
    """

    def __init__(
        self,
        pipeline: Any,
        attacked: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        seed: int,
        norm: str,
        ctx: distributed.DistContext,
    ):
        self.pipeline, self.attacked = pipeline, attacked
        self.x, self.y, self.n = x, y, x.shape[0]
        self.batch_size, self.seed, self.norm, self.ctx = batch_size, seed, norm, ctx
        self.starts = list(range(0, self.n, batch_size))[ctx.rank :: ctx.world_size]
        self.bar: Any = None
        self.journal: Journal | None = None

    @contextlib.contextmanager
    def seeded(self, salt: int, start: int, stream: int) -> Iterator[None]:
        """The global RNG (random pipelines draw from it) forked and seeded for one batch."""
        device = self.x.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_draw_seed(self.seed, salt, start // self.batch_size, stream))
            yield

    def predict(self, x: torch.Tensor, salt: int, start: int) -> torch.Tensor:
        """The pipeline's predicted classes (N,) for the batch starting at ``start``."""
        with self.seeded(salt, start, 0):
            return _predict(self.pipeline, x, self.batch_size)

    @torch.no_grad()
    def probe(self) -> tuple[bool, int | None]:
        """Whether the pipeline is random, and its class count (None unless it returns logits
        (N, K)).

        Random means two forward passes on the same first :data:`PROBE_IMAGES` images differ.
        The passes draw from a seed of their own inside a forked RNG, so no seeded draw the
        results depend on changes; every rank probes the same images and agrees.
        """
        x = self.x[:PROBE_IMAGES]
        with self.seeded(PROBE_SALT, 0, 0), attack_mode(self.pipeline):
            first, second = self.pipeline(x), self.pipeline(x)  # (n, K) each
        classes = int(first.shape[1]) if first.ndim == 2 else None
        same = torch.allclose(first.float(), second.float(), rtol=1e-4, atol=1e-5)
        return not same, classes

    def batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(start, images, labels) of this process's batches."""
        for i in self.starts:
            yield i, self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]

    def clean_correct(self) -> torch.Tensor:
        """Which images (N,) the pipeline classifies correctly, gathered from every rank."""
        correct = torch.zeros(self.n, dtype=torch.bool, device=self.x.device)
        for i, xb, yb in self.batches():
            found = self._recorded(0, i, lambda: {"robust": self.predict(xb, 0, i) == yb})
            correct[i : i + self.batch_size] = found["robust"]
        return _union(self.ctx, correct)

    def _recorded(
        self, salt: int, start: int, compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """One batch's per-image results (B,) each: read back from the journal when it holds
        them, else computed (and recorded when there is a journal)."""
        if self.journal is None:
            return compute()
        return self.journal.batch(salt, start, self.batch_size, compute)

    @contextlib.contextmanager
    def progress(self, show: bool, runs: int) -> Iterator[None]:
        """A progress bar over ``runs`` attack runs of this process's batches (main rank only)."""
        if show and self.ctx.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=runs * len(self.starts), desc="evaluate", unit="batch")
        try:
            yield
        finally:
            if self.bar is not None:
                self.bar.close()
            self.bar = None

    def _attack_batches(
        self, run: AttackRun, salt: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Attack this process's batches: which images (N,) stay correctly classified, and the
        per-image reconstruction metrics (N,) of a reconstruction attack (zeros elsewhere)."""
        device = self.x.device
        robust = torch.zeros(self.n, dtype=torch.bool, device=device)
        objective = getattr(run.attack, "objective", None)
        keys = RECON_KEYS if isinstance(objective, MaskedReconstruction) else RECON_KEYS[:2]
        recon = {k: torch.zeros(self.n, dtype=torch.float32, device=device) for k in keys}
        for i, xb, yb in self.batches():
            found = self._recorded(salt, i, lambda: self._attack_batch(run, salt, i, xb, yb))
            for key, values in found.items():
                (robust if key == "robust" else recon[key])[i : i + self.batch_size] = values
            if self.bar is not None:
                self.bar.set_postfix_str(f"{run.label} eps={run.eps:.4g}")
                self.bar.update(1)
        return robust, recon

    def _attack_batch(
        self, run: AttackRun, salt: int, start: int, xb: torch.Tensor, yb: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Attack one batch: ``{"robust": (B,)}``, or a reconstruction attack's metrics (B,)."""
        with self.seeded(salt, start, 1):
            x_adv = run.attack(xb, yb)  # (B, C, H, W)
        _check_threat_model(run.label, x_adv, xb, run.eps, self.norm)
        if run.kind == "reconstruction":
            metrics = _reconstruction_metrics(self.attacked, run.attack, xb, x_adv)
            return {k: v.float() for k, v in metrics.items()}
        return {"robust": self.predict(x_adv, salt, start) == yb}

    def run(
        self, run: AttackRun, salt: int, clean_correct: torch.Tensor
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The report row of one attack at one eps, and which images (N,) stayed robust
        (None for a reconstruction attack)."""
        t0 = time.perf_counter()
        robust, recon = self._attack_batches(run, salt)
        seconds = slowest(self.ctx, time.perf_counter() - t0)
        row: dict[str, Any] = {
            "attack": run.label,
            "eps": run.eps,
            "kind": run.kind,
            "n_images": self.n,
            "seconds": round(seconds, 3),
        }
        if run.kind == "reconstruction":
            row.update({k: float(_union(self.ctx, v).mean()) for k, v in recon.items()})
            return row, None
        robust = _union(self.ctx, robust) & clean_correct
        n_correct = int(clean_correct.sum())
        row["robust_accuracy"] = robust.float().mean().item()
        row["attack_success_rate"] = (
            (1 - robust.sum().item() / n_correct) if n_correct else float("nan")
        )
        return row, robust


def _distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per image (N,), the L-inf, L2 or L1 distance between ``x_adv`` and ``x``."""
    d = (x_adv.float() - x.float()).flatten(1)  # (N, C*H*W)
    if norm == "linf":
        return d.abs().amax(1)
    return torch.linalg.vector_norm(d, dim=1) if norm == "l2" else d.abs().sum(1)


def _check_threat_model(
    name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str
) -> None:
    """Raise if attack ``name`` left the eps-ball around ``x`` or the [0, 1] box (a bug)."""
    slack = 1e-5 + (2**-7 if x_adv.dtype == torch.bfloat16 else 0.0)
    if norm == "l1" and x_adv.is_floating_point():  # the rounding of every pixel adds up
        slack += torch.finfo(x_adv.dtype).eps * x_adv[0].numel()
    dist = _distance(x_adv, x, norm)
    if (
        bool((dist > eps * (1 + 1e-5) + slack).any())
        or float(x_adv.min()) < 0
        or float(x_adv.max()) > 1
    ):
        raise RuntimeError(
            f"attack {name} returned points outside the threat model (max distance "
            f"{float(dist.max()):.6g} > eps {eps:.6g}, or outside [0, 1]); this is a bug"
        )


@torch.no_grad()
def _predict(model: Any, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The predicted classes (N,) of ``model`` on ``x``, in attack mode, ``batch_size`` at once."""
    with attack_mode(model):
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)]
        )


def _draw_seed(seed: int, salt: int, batch: int, stream: int) -> int:
    """The seed of one batch's random draws: ``stream`` 0 for predictions, 1 for the attack."""
    return (((seed * 7919 + salt) * 1_000_003 + batch) * 2 + stream) % (2**63 - 1)


def _union(ctx: distributed.DistContext, t: torch.Tensor) -> torch.Tensor:
    """Per-image values each rank filled for its own images (zeros elsewhere), from all ranks."""
    if not ctx.enabled:
        return t
    summable = t.to(torch.int32) if t.dtype == torch.bool else t
    return distributed.all_reduce(ctx, summable, "sum").to(t.dtype)


def slowest(ctx: distributed.DistContext, seconds: float) -> float:
    """The largest of every rank's ``seconds`` (this process's alone when not sharded)."""
    if not ctx.enabled:
        return seconds
    return float(distributed.all_reduce(ctx, torch.tensor([seconds], dtype=torch.float64), "max"))


def check_same_images(ctx: distributed.DistContext, x: torch.Tensor, y: torch.Tensor) -> None:
    """Every rank must hold the same images and labels (each evaluates its share of them)."""
    order = torch.arange(1, x.shape[0] + 1, dtype=torch.float64, device=x.device)
    pixels = x.double().flatten(1).sum(1)
    prints = torch.stack(
        [
            torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device),
            pixels.sum(),
            (pixels * order).sum(),
            (y.double() * order).sum(),
        ]
    )
    high, low = (
        distributed.all_reduce(ctx, prints, "max"),
        -distributed.all_reduce(ctx, -prints, "max"),
    )
    if not torch.equal(high, low):
        raise ValueError(
            f"the {ctx.world_size} processes were given different images or labels to evaluate; "
            "pass every process the same data in the same order (no shuffling): each evaluates "
            "its share of them"
        )


@torch.no_grad()
def _reconstruction_metrics(
    model: Any, atk: Attack, x: torch.Tensor, x_adv: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per image: PSNR/SSIM x vs x_adv ("input"), and for a masked-reconstruction attack the
    reconstruction of x vs of x_adv under the same mask ("recon") and both losses."""
    out = {"psnr_input": psnr(x_adv, x), "ssim_input": ssim(x_adv, x)}
    objective = atk.objective
    if not isinstance(objective, MaskedReconstruction):
        return out
    with attack_mode(model):
        ids = objective.ids_keep(model, x)
        loss_c, pred_c, _ = objective.per_sample_loss(model, x, x, ids)
        loss_a, pred_a, _ = objective.per_sample_loss(model, x_adv, x, ids)
        ref = x if model.config.norm_pix_loss else None  # the clean patch statistics for both
        rc = model.pred_to_image(pred_c, reference=ref).clamp(0, 1)
        ra = model.pred_to_image(pred_a, reference=ref).clamp(0, 1)
    out.update(psnr_recon=psnr(ra, rc), ssim_recon=ssim(ra, rc), loss_clean=loss_c, loss_adv=loss_a)
    return out
