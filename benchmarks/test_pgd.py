"""PGD-10 throughput: mimir_fast.PGD against torchattacks.PGD on the same model, batch and device.

Run: ``python -m pytest benchmarks/test_pgd.py --benchmark-only -s``. The side-by-side ratio is
printed at the end of the module and written to ``benchmarks/results/pgd10-<device>.json``.

Same model (a MaskedViT classifier: the demo size on the CPU, ViT-S/2 on 32x32 on a GPU),
same batch, same eps/alpha/steps, both with a random start. Both attack the model with its
per-forward input checks off (``check_inputs = False``), so the ratio measures the attack loop
only. Each result is checked to lie within eps and [0, 1] before it is timed. Ratios use the
fastest round of each provider (the one least disturbed by other processes on a shared machine).

On a GPU, a missing torchattacks fails the PGD-10 comparison at once, naming it (bring its wheel:
``pip download torchattacks --no-deps -d wheels/``); the ``pgd-step`` groups, which need no
torchattacks, still run. Without a GPU those cases skip.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import roofline
import torch
from mimir_fast.attacks import PGD
from mimir_fast.models import create_model

try:
    import torchattacks
except ImportError:  # a GPU run fails on it, naming it (test_pgd10); the CPU skips
    torchattacks = None

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10
RESULTS: dict[str, dict[str, float]] = {}


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    if CUDA:
        model = create_model("vit_small_patch2_32", num_classes=10)
        batch, chans = 128, 3
    else:
        model = create_model(
            "vit_tiny_patch4_32", embed_dim=128, depth=4, num_heads=4, num_classes=10, in_chans=1
        )
        batch, chans = 32, 1
    model = model.to(DEVICE).eval()
    model.check_inputs = False
    x = torch.rand(batch, chans, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    return model, x, y


@pytest.fixture(scope="module", autouse=True)
def report_ratios():
    yield
    print_ratios()


def print_ratios() -> None:
    """Print (and save) torchattacks / mimir_fast time ratios for each group measured."""
    for group, times in RESULTS.items():
        if {"torchattacks", "mimir_fast"} <= times.keys() or {
            "torch",
            "mimir_fast",
        } <= times.keys():
            base_name = "torchattacks" if "torchattacks" in times else "torch"
            base, ours = times[base_name], times["mimir_fast"]
            line = (
                f"[{group}] {DEVICE}: {base_name} {base * 1e3:.1f} ms, "
                f"mimir_fast {ours * 1e3:.1f} ms -> {base / ours:.2f}x"
            )
            print("\n" + line)
            out = Path(__file__).parent / "results" / f"{group}-{DEVICE}.json"
            out.parent.mkdir(exist_ok=True)
            out.write_text(
                json.dumps(
                    {
                        "group": group,
                        "device": torch.cuda.get_device_name()
                        if CUDA
                        else platform.processor() or "cpu",
                        "torch": torch.__version__,
                        "torchattacks": getattr(torchattacks, "__version__", None),
                        "min_seconds": times,
                        "speedup": base / ours,
                        "summary": line,
                    },
                    indent=2,
                )
                + "\n"
            )


def _make(provider: str, model):
    if provider == "torchattacks":
        return torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
    return PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)


@pytest.mark.benchmark(group="pgd10")
@pytest.mark.parametrize("provider", ["torchattacks", "mimir_fast"])
def test_pgd10(benchmark, request, provider):
    if torchattacks is None:
        message = (
            "torchattacks is not installed: the PGD-10 benchmark compares against it; install "
            "its wheel with pip install --no-deps (see docs/gpu.md)"
        )
        if CUDA:
            pytest.fail(message)
        pytest.skip(message)
    model, x, y = request.getfixturevalue("setup")  # after the check: no model built in vain
    atk = _make(provider, model)

    def run():
        out = atk(x, y)
        _sync()
        return out

    x_adv = run()  # warm-up, and the correctness check before timing
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_adv - x).abs().flatten(1).amax(1).max()) <= EPS + 1e-6
    assert float((x_adv - x).abs().max()) > EPS / 2
    benchmark.pedantic(run, rounds=5 if CUDA else 4, warmup_rounds=1, iterations=1)
    RESULTS.setdefault("pgd10", {})[provider] = benchmark.stats.stats.min
    benchmark.extra_info["images_per_second"] = x.shape[0] / benchmark.stats.stats.min


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the interpreter is no meaningful timing")
@pytest.mark.benchmark(group="pgd-step")
@pytest.mark.parametrize("provider", ["torch", "mimir_fast"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step(benchmark, provider, norm):
    from mimir_fast.kernels.pgd_step import pgd_step_triton
    from mimir_fast.ops.pgd_step import pgd_step_reference as pgd_step

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (128, 3, 224, 224)
    x0 = torch.rand(shape, device="cuda", generator=g)
    x_adv = (x0 + 0.01 * torch.randn(shape, device="cuda", generator=g)).clamp(0, 1)
    grad = torch.randn(shape, device="cuda", generator=g)
    fn = pgd_step_triton if provider == "mimir_fast" else pgd_step
    eps = 8 / 255 if norm == "linf" else 3.0
    benchmark.extra_info.update(
        op="pgd_step", dtype="float32", **roofline.pgd_step_bytes(x0.numel(), norm)
    )

    def run():
        out = fn(x_adv, grad, x0, 2 / 255 if norm == "linf" else 0.5, eps, norm)
        torch.cuda.synchronize()
        return out

    torch.testing.assert_close(
        run(),
        pgd_step(x_adv, grad, x0, 2 / 255 if norm == "linf" else 0.5, eps, norm),
        rtol=1e-5,
        atol=1e-6,
    )
    benchmark.pedantic(run, rounds=50, warmup_rounds=5, iterations=1)
    RESULTS.setdefault(f"pgd-step-{norm}", {})[provider] = benchmark.stats.stats.min
