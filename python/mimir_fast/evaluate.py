"""Robustness evaluation that cannot flatter a defense.

:func:`evaluate` measures clean accuracy, robust accuracy and attack success rate per attack
and per eps, the per-sample worst case over all attacks, PSNR/SSIM for reconstruction attacks,
and runs gradient-masking sanity checks (Carlini et al. 2019, "On Evaluating Adversarial
Robustness") whose failures are listed under ``warnings`` in the report:

- robust accuracy rises with eps for some attack, or does not fall below 10% under PGD at a
  large eps (``large_eps``);
- single-step FGSM is stronger than an iterative gradient attack at the same eps;
- black-box Square is stronger than every white-box attack at the same eps.

A difference counts when it exceeds ``max(0.02, 2 / n_images)``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .attacks import (
    APGD,
    APGDT,
    FGSM,
    MIFGSM,
    PGD,
    AutoAttack,
    Defended,
    MaskedReconstruction,
    Square,
)
from .attacks.base import Attack, attack_mode, check_images, check_labels, num_classes_of
from .attacks.defended import check_threat, gray_box_target
from .attacks.ensemble import Ensemble
from .metrics import psnr, ssim
from .report import format_table, write_json

__all__ = ["ATTACK_NAMES", "build_attack", "evaluate"]

ATTACK_NAMES = (
    "fgsm",
    "pgd",
    "mifgsm",
    "apgd",
    "apgd-ce",
    "apgd-dlr",
    "apgd-t",
    "square",
    "autoattack",
    "mim",
)
GRADIENT_FREE = ("square",)
SINGLE_STEP = ("fgsm",)
SANITY_ACCURACY = 0.10  # robust accuracy at large_eps above this is reported
RECON_KEYS = ("psnr_input", "ssim_input", "psnr_recon", "ssim_recon", "loss_clean", "loss_adv")


def build_attack(
    name: str,
    model: Any,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    kernels: str = "auto",
    **kwargs: Any,
) -> Attack | Ensemble:
    """An attack from its name and the threat model; ``kwargs`` override the defaults.

    Defaults: PGD-20 with ``alpha = 2.5 eps / steps`` and a random start; MI-FGSM-10;
    APGD/APGD-T 100 steps; Square 5000 queries; AutoAttack (APGD-CE, APGD-T, Square) standard
    budgets; "mim": PGD-20 on the masked-reconstruction loss of a MaskedViT (mask ratio 0.75).
    """
    key = name.lower()
    common = {"norm": norm, "seed": seed, "kernels": kernels}
    if key == "fgsm":
        return FGSM(model, eps, **{**common, **kwargs})
    if key in ("pgd", "mim"):
        steps = kwargs.pop("steps", 20)
        alpha = kwargs.pop("alpha", 2.5 * eps / steps)
        if key == "mim":
            kwargs.setdefault(
                "loss", MaskedReconstruction(kwargs.pop("mask_ratio", 0.75), seed=seed)
            )
        return PGD(model, eps, alpha=alpha, steps=steps, **{**common, **kwargs})
    if key == "mifgsm":
        return MIFGSM(model, eps, **{**common, **kwargs})
    if key in ("apgd", "apgd-ce", "apgd-dlr"):
        loss = "dlr" if key == "apgd-dlr" else kwargs.pop("loss", "ce")
        return APGD(model, eps, loss=loss, **{**common, **kwargs})
    if key == "apgd-t":
        return APGDT(model, eps, **{**common, **kwargs})
    if key == "square":
        return Square(model, eps, seed=seed, **kwargs)
    if key in ("autoattack", "ensemble"):
        return AutoAttack(model, eps, **{**common, **kwargs})
    raise ValueError(
        f"unknown attack {name!r}; use one of {ATTACK_NAMES}, a spec dict, a factory "
        "(model, eps) -> attack, or an attack instance"
    )


# ---------------------------------------------------------------------- inputs
def _load_data(data: Any, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1
    ):
        raise ValueError(f"max_images must be an integer >= 1 or None, got {max_images!r}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader):
        xs, ys = [], []
        count = 0
        for xb, yb in data:
            xs.append(xb)
            ys.append(torch.as_tensor(yb))
            count += xb.shape[0]
            if max_images is not None and count >= max_images:
                break
        x, y = torch.cat(xs), torch.cat(ys)
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data) if max_images is None else min(len(data), max_images)
        items = [data[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(im) for im, _ in items])
        y = torch.as_tensor([int(lbl) for _, lbl in items])
    else:
        raise ValueError(
            "data must be a dataset of (image, label), an (x, y) tensor pair or a DataLoader"
        )
    if max_images is not None:
        x, y = x[:max_images], y[:max_images]
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"mismatched batch sizes: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def _as_specs(attacks: Any) -> list[tuple[str, Any]]:
    if isinstance(attacks, (str, Mapping, Attack, Ensemble)) or (
        callable(attacks) and not isinstance(attacks, (list, tuple))
    ):
        attacks = [attacks]
    specs = []
    for a in attacks:
        if isinstance(a, str):
            if a.lower() not in ATTACK_NAMES + ("ensemble",):
                raise ValueError(f"unknown attack {a!r}; use one of {ATTACK_NAMES}")
            specs.append((a.lower(), a.lower()))
        elif isinstance(a, Mapping):
            if "name" not in a:
                raise ValueError(f"an attack spec dict needs a 'name': {dict(a)}")
            label = a.get("label", a["name"])
            specs.append((str(label), dict(a)))
        elif isinstance(a, (Attack, Ensemble)):
            specs.append((getattr(a, "name", type(a).__name__.lower()), a))
        elif callable(a):
            specs.append((getattr(a, "__name__", "custom"), a))
        else:
            raise ValueError(f"cannot use {a!r} as an attack")  # noqa: TRY004 (bad input is a ValueError throughout)
    if not specs:
        raise ValueError("attacks must name at least one attack")
    labels = [s[0] for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack labels must be unique (give dict specs a 'label'), got {labels}")
    return specs


def _make(spec: Any, model: Any, eps: float, norm: str, seed: int, kernels: str):
    """(attack, eps it runs at) for one spec and one eps of the grid."""
    if isinstance(spec, (Attack, Ensemble)):
        return spec, spec.eps
    if isinstance(spec, str):
        return build_attack(spec, model, eps, norm, seed, kernels), eps
    if isinstance(spec, dict):
        kw = {k: v for k, v in spec.items() if k not in ("name", "label")}
        return build_attack(spec["name"], model, eps, norm, seed, kernels, **kw), eps
    return spec(model, eps), eps


def _kind(spec: Any, atk: Any) -> str:
    name = (
        spec["name"]
        if isinstance(spec, dict)
        else spec
        if isinstance(spec, str)
        else getattr(atk, "name", "")
    ).lower()
    if name == "mim" or (isinstance(atk, Attack) and not atk.objective.classification):
        return "reconstruction"
    if name in GRADIENT_FREE or getattr(atk, "uses_gradients", True) is False:
        return "black"
    if name in SINGLE_STEP:
        return "single"
    return "iterative"


def _distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv.float() - x.float()).flatten(1)
    return d.abs().amax(1) if norm == "linf" else torch.linalg.vector_norm(d, dim=1)


def _check_threat_model(
    name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str
) -> None:
    slack = 1e-5 + (2**-7 if x_adv.dtype == torch.bfloat16 else 0.0)
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
    with attack_mode(model):
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)]
        )


# ---------------------------------------------------------------------- the evaluation
def evaluate(
    model: Any,
    data: Any,
    attacks: Any = ("pgd",),
    eps: float | Sequence[float] = (2 / 255, 4 / 255, 8 / 255),
    defense: Any = None,
    threat: str = "white",
    batch_size: int = 128,
    max_images: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    norm: str = "linf",
    sanity_checks: bool = True,
    large_eps: float | None = None,
    kernels: str = "auto",
    device: str | torch.device | None = None,
    shard: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` (optionally behind ``defense``) against ``attacks`` at every ``eps``.

    Args:
        model: a classifier ``model(x) -> logits`` on images in [0, 1]; a MaskedViT for "mim".
        data: a dataset of ``(image, label)``, an ``(x, y)`` tensor pair, or a DataLoader.
        attacks: names (see :data:`ATTACK_NAMES`), spec dicts (``{"name": "pgd", "steps": 50,
            "label": "pgd-50"}``), factories ``(model, eps) -> attack``, or attack instances
            (run once, at their own eps).
        eps: the radii to evaluate.
        defense: a :class:`~mimir_fast.attacks.Defended` pipeline, or a purifier callable
            (wrapped as ``Defended(model, defense)``).
        threat: "white" (attacks differentiate the whole pipeline, with its EOT setting),
            "gray" (attacks see the classifier alone; the pipeline is evaluated) or "black"
            (only gradient-free attacks, querying the pipeline).
        batch_size, max_images: batching and the number of images used.
        out_dir: where to write ``evaluation.json``, ``evaluation.md`` and
            ``robust_accuracy_vs_eps.png`` (nothing written when None).
        seed: seeds every attack and every evaluation of a random pipeline.
        progress: show a progress bar.
        norm: "linf" or "l2".
        sanity_checks: run FGSM and a large-eps PGD for the gradient-masking checks.
        large_eps: eps of the "falls toward 0" check; default 0.5 (L-inf) or ``0.5 sqrt(C H W)`` (L2).
        kernels: projected-step path for the gradient attacks.
        device: where to run; default the model's device.
        shard: inside an initialised process group (e.g. under ``torchrun``), split the images
            over the ranks: every rank must call ``evaluate`` with the same data and arguments;
            each attacks whole batches in turn (batch ``b`` on rank ``b % world_size``), the
            per-image results are gathered, and every rank returns the same report, equal to
            one process's on the same data; rank 0 alone writes ``out_dir``. False: this process
            evaluates every image by itself.

    Every random draw (attack starts, random purifiers, masks) is seeded by ``seed``, the
    attack and the index of the batch, so the report depends on ``batch_size`` but not on the
    number of processes.

    Returns:
        The report dict (also written as JSON): ``clean_accuracy``, ``results`` (one row per
        attack and eps: ``robust_accuracy``, ``attack_success_rate`` = fraction of clean-correct
        points flipped, ``seconds``), ``robust_accuracy`` (attack -> eps -> value),
        ``worst_case`` (per eps, a point counts as robust only if every attack failed),
        ``reconstruction`` (for "mim": PSNR/SSIM between x and x_adv, and between the
        reconstructions of x and of x_adv under the same mask), ``sanity`` and ``warnings``.
    """
    check_threat(threat)
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not eps_list:
        raise ValueError("eps must hold at least one radius")
    for e in eps_list:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0:
            raise ValueError(f"every eps must be a finite number > 0, got {e!r}")
    eps_list = sorted(float(e) for e in eps_list)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    specs = _as_specs(attacks)

    x_all, y_all = _load_data(data, max_images)
    check_images(x_all)
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    x_all = x_all.to(device)
    pipeline = model
    if defense is not None:
        pipeline = defense if isinstance(defense, Defended) else Defended(model, defense)
    y_all = check_labels(y_all, x_all.shape[0], num_classes_of(pipeline)).to(device)
    attacked = gray_box_target(pipeline) if threat == "gray" else pipeline
    n = x_all.shape[0]
    tol = max(0.02, 2.0 / n)
    ctx = distributed.current() if shard else distributed.DistContext()
    if ctx.enabled:
        _check_same_images(ctx, x_all, y_all)
    # whole batches go to the ranks in turn: an attack draws its randomness per batch, and every
    # random draw below is seeded by (seed, salt, batch index), so no result depends on the ranks
    mine = list(range(0, n, batch_size))[ctx.rank :: ctx.world_size]

    @contextlib.contextmanager
    def seeded(salt: int, start: int, stream: int) -> Iterator[None]:
        """The global RNG (random pipelines draw from it) forked and seeded for one batch."""
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(_draw_seed(seed, salt, start // batch_size, stream))
            yield

    def seeded_predict(x: torch.Tensor, salt: int, start: int) -> torch.Tensor:
        with seeded(salt, start, 0):
            return _predict(pipeline, x, batch_size)

    started = time.perf_counter()
    clean_correct = torch.zeros(n, dtype=torch.bool, device=device)
    for i in mine:
        clean_correct[i : i + batch_size] = (
            seeded_predict(x_all[i : i + batch_size], 0, i) == y_all[i : i + batch_size]
        )
    clean_correct = _union(ctx, clean_correct)
    clean_acc = clean_correct.float().mean().item()

    runs: list[tuple[str, Any, float, Attack | Ensemble, str]] = []
    for label, spec in specs:
        fixed = isinstance(spec, (Attack, Ensemble))
        for e in [None] if fixed else eps_list:
            atk, e_run = _make(spec, attacked, e, norm, seed, kernels)
            kind = _kind(spec, atk)
            if threat == "black" and kind != "black":
                raise ValueError(
                    f"threat='black' allows only gradient-free attacks (e.g. 'square'), got {label!r}"
                )
            runs.append((label, spec, e_run, atk, kind))
    extra: list[tuple[str, Any, float, Attack | Ensemble, str]] = []
    if sanity_checks and threat != "black" and any(r[4] != "reconstruction" for r in runs):
        d = x_all[0].numel()
        big = (
            large_eps if large_eps is not None else (0.5 if norm == "linf" else 0.5 * math.sqrt(d))
        )
        extra.append(
            (
                "pgd@large_eps",
                "pgd",
                big,
                build_attack("pgd", attacked, big, norm, seed, kernels),
                "iterative",
            )
        )
        if not any(r[4] == "single" for r in runs):
            for e in eps_list:
                extra.append(
                    (
                        "fgsm",
                        "fgsm",
                        e,
                        build_attack("fgsm", attacked, e, norm, seed, kernels),
                        "single",
                    )
                )

    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=(len(runs) + len(extra)) * len(mine), desc="evaluate", unit="batch")

    def run_one(label, atk, e, kind, salt):
        t0 = time.perf_counter()
        robust = torch.zeros(n, dtype=torch.bool, device=device)
        objective = getattr(atk, "objective", None)
        keys = RECON_KEYS if isinstance(objective, MaskedReconstruction) else RECON_KEYS[:2]
        recon = {k: torch.zeros(n, dtype=torch.float32, device=device) for k in keys}
        for i in mine:
            xb, yb = x_all[i : i + batch_size], y_all[i : i + batch_size]
            with seeded(salt, i, 1):
                x_adv = atk(xb, yb)
            _check_threat_model(label, x_adv, xb, e, norm)
            if kind == "reconstruction":
                for k, v in _reconstruction_metrics(attacked, atk, xb, x_adv).items():
                    recon[k][i : i + batch_size] = v.float()
            else:
                robust[i : i + batch_size] = seeded_predict(x_adv, salt, i) == yb
            if bar is not None:
                bar.set_postfix_str(f"{label} eps={e:.4g}")
                bar.update(1)
        seconds = _slowest(ctx, time.perf_counter() - t0)
        row: dict[str, Any] = {
            "attack": label,
            "eps": e,
            "kind": kind,
            "n_images": n,
            "seconds": round(seconds, 3),
        }
        if kind == "reconstruction":
            row.update({k: float(_union(ctx, v).mean()) for k, v in recon.items()})
            return row, None
        robust = _union(ctx, robust) & clean_correct
        n_correct = int(clean_correct.sum())
        row["robust_accuracy"] = robust.float().mean().item()
        row["attack_success_rate"] = (
            (1 - robust.sum().item() / n_correct) if n_correct else float("nan")
        )
        return row, robust

    results, rec_rows, flags = [], [], {}
    for j, (label, _, e, atk, kind) in enumerate(runs):
        row, robust = run_one(label, atk, e, kind, 1 + j)
        (rec_rows if kind == "reconstruction" else results).append(row)
        if robust is not None:
            flags[(label, e)] = robust
    sanity_rows = []
    for j, (label, _, e, atk, kind) in enumerate(extra):
        row, _ = run_one(label, atk, e, kind, 10_000 + j)
        sanity_rows.append(row)
    if bar is not None:
        bar.close()

    robust_acc: dict[str, dict[str, float]] = {}
    for r in results:
        robust_acc.setdefault(r["attack"], {})[_eps_key(r["eps"])] = r["robust_accuracy"]
    worst = []
    for e in sorted({k[1] for k in flags}):
        all_robust = clean_correct.clone()
        for (lbl, e2), f in flags.items():
            if e2 == e:
                all_robust &= f
        worst.append(
            {
                "eps": e,
                "robust_accuracy": all_robust.float().mean().item(),
                "attacks": sorted(lbl for (lbl, e2) in flags if e2 == e),
            }
        )

    warnings = _masking_warnings(results, sanity_rows, tol, threat)
    report = {
        "clean_accuracy": clean_acc,
        "n_images": n,
        "norm": norm,
        "eps": eps_list,
        "threat": threat,
        "defense": None
        if defense is None
        else repr(pipeline.purifier if isinstance(pipeline, Defended) else defense),
        "seed": seed,
        "results": results,
        "robust_accuracy": robust_acc,
        "worst_case": worst,
        "reconstruction": rec_rows,
        "sanity": sanity_rows,
        "warnings": warnings,
        "tolerance": tol,
        "seconds": round(_slowest(ctx, time.perf_counter() - started), 2),
        "attacks": [f"{label}: {atk!r}" for label, _, _, atk, _ in runs],
    }
    if out_dir is not None and ctx.is_main:
        write_report(report, out_dir)
    distributed.barrier(ctx)  # the files exist when any rank returns
    return report


def _draw_seed(seed: int, salt: int, batch: int, stream: int) -> int:
    """The seed of one batch's random draws: ``stream`` 0 for predictions, 1 for the attack."""
    return (((seed * 7919 + salt) * 1_000_003 + batch) * 2 + stream) % (2**63 - 1)


def _union(ctx: distributed.DistContext, t: torch.Tensor) -> torch.Tensor:
    """Per-image values each rank filled for its own images (zeros elsewhere), from all ranks."""
    if not ctx.enabled:
        return t
    return distributed.all_reduce(ctx, t.to(torch.int32) if t.dtype == torch.bool else t, "sum").to(
        t.dtype
    )


def _slowest(ctx: distributed.DistContext, seconds: float) -> float:
    if not ctx.enabled:
        return seconds
    return float(distributed.all_reduce(ctx, torch.tensor([seconds], dtype=torch.float64), "max"))


def _check_same_images(ctx: distributed.DistContext, x: torch.Tensor, y: torch.Tensor) -> None:
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


def _eps_key(e: float) -> str:
    return f"{e:.6g}"


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


def _masking_warnings(
    results: list[dict], sanity: list[dict], tol: float, threat: str
) -> list[str]:
    out = []
    by_attack: dict[str, list[dict]] = {}
    for r in results:
        by_attack.setdefault(r["attack"], []).append(r)
    for name, rows in by_attack.items():
        rows = sorted(rows, key=lambda r: r["eps"])
        for a, b in itertools.pairwise(rows):
            if b["robust_accuracy"] > a["robust_accuracy"] + tol:
                out.append(
                    f"gradient masking? {name}: robust accuracy rises from {a['robust_accuracy']:.3f} at eps "
                    f"{a['eps']:.4g} to {b['robust_accuracy']:.3f} at eps {b['eps']:.4g}"
                )
    for r in sanity:
        if r["attack"] == "pgd@large_eps" and r["robust_accuracy"] > SANITY_ACCURACY:
            out.append(
                f"gradient masking? robust accuracy under PGD at the large eps {r['eps']:.4g} is "
                f"{r['robust_accuracy']:.3f}, not near 0"
            )
    singles = [r for r in results + sanity if r["kind"] == "single"]
    iters = [r for r in results if r["kind"] == "iterative"]
    for s in singles:
        for it in iters:
            if (
                abs(it["eps"] - s["eps"]) < 1e-12
                and s["robust_accuracy"] < it["robust_accuracy"] - tol
            ):
                out.append(
                    f"gradient masking? single-step {s['attack']} ({s['robust_accuracy']:.3f}) is stronger "
                    f"than iterative {it['attack']} ({it['robust_accuracy']:.3f}) at eps {s['eps']:.4g}"
                )
    if threat == "white":
        for b in (r for r in results if r["kind"] == "black"):
            white = [
                r["robust_accuracy"]
                for r in results
                if r["kind"] in ("iterative", "single") and abs(r["eps"] - b["eps"]) < 1e-12
            ]
            if white and b["robust_accuracy"] < min(white) - tol:
                out.append(
                    f"gradient masking? black-box {b['attack']} ({b['robust_accuracy']:.3f}) is stronger than "
                    f"every white-box attack ({min(white):.3f}) at eps {b['eps']:.4g}"
                )
    return out


def _eps_label(e: float, norm: str) -> str:
    return f"{e * 255:.3g}/255" if norm == "linf" else f"{e:.4g}"


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and ``robust_accuracy_vs_eps.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(report, out / "evaluation.json")}
    norm = report["norm"]
    rows = [
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
    lines = [
        f"# Robustness evaluation ({report['n_images']} images, {norm}, {report['threat']}-box"
        + (f", defense {report['defense']}" if report["defense"] else "")
        + ")",
        "",
        format_table(rows),
        "",
    ]
    if report["reconstruction"]:
        lines += [
            "## Reconstruction attacks",
            "",
            "`*_input`: x vs x_adv; `*_recon`: reconstruction of x vs reconstruction of x_adv (same mask).",
            "",
            format_table(
                [
                    {
                        k: (_eps_label(v, norm) if k == "eps" else v)
                        for k, v in r.items()
                        if k not in ("kind", "n_images")
                    }
                    for r in report["reconstruction"]
                ]
            ),
            "",
        ]
    if report["sanity"]:
        lines += [
            "## Sanity checks",
            "",
            format_table(
                [
                    {
                        "attack": r["attack"],
                        "eps": _eps_label(r["eps"], norm),
                        "robust accuracy": r["robust_accuracy"],
                    }
                    for r in report["sanity"]
                ]
            ),
            "",
        ]
    lines += ["## Warnings", ""] + ([f"- {w}" for w in report["warnings"]] or ["none"]) + [""]
    (out / "evaluation.md").write_text("\n".join(lines))
    paths["md"] = out / "evaluation.md"
    paths["png"] = _plot(report, out / "robust_accuracy_vs_eps.png")
    return paths


def _plot(report: dict[str, Any], path: Path) -> Path:
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
    for name, pts in series.items():
        pts = sorted(pts)
        ax.plot(
            [0.0] + [p[0] for p in pts],
            [report["clean_accuracy"]] + [p[1] for p in pts],
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
    fig.savefig(path, format="png", dpi=110)
    return path
