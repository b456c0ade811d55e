"""AutoAttack, APGD-T and Square: mimir_fast against torchattacks on a PGD-AT classifier.

Run: ``python -m pytest benchmarks/test_attacks.py --benchmark-only`` (pytest-benchmark's
table), or ``python benchmarks/attack_ratio.py`` for the ratios with both providers' timed runs
interleaved (fairer on a busy machine).

The classifier is the demo's small ViT (``mimir_fast.demo``: 16x16 digits, patch 4, width 64,
depth 4), trained here briefly: a clean finetuning from scratch, then PGD-AT (eps 8/255, three
steps of 3/255), as the demo's PGD-AT classifier is. It is trained once and cached in the pytest
cache (``.pytest_cache/d/mimir_fast_bench/``; delete it to retrain). 64 held-out digits, the
same images and device for both providers, eps 8/255 (L-inf):

- ``autoattack``: the standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5000 queries) at its
  official budgets, 100 iterations per gradient attack: mimir_fast's ``AutoAttack`` against
  torchattacks' four attacks at those budgets, chained by its ``MultiAttack`` as its
  ``AutoAttack`` chains them.
- ``autoattack-10``: torchattacks' ``AutoAttack(version="standard")`` as it ships (its APGD,
  APGD-T and FAB-T run their default 10 iterations) against mimir_fast's
  ``AutoAttack(steps=10)``, labelled "AutoAttack standard, APGD-CE/APGD-T/FAB-T 10 iterations".
  Both groups must give the same robust accuracy (within one image) before being timed.
- ``apgd-t``: APGD-T, 9 target classes, 100 steps, one restart.
- ``square``: Square, 1000 queries, p_init 0.8.

Robust accuracies of APGD-T and Square are checked to agree within two images (different
random draws), and every result to lie within eps and [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mimir_fast.attacks import APGDT, AutoAttack, Square
from mimir_fast.data import load_digits
from mimir_fast.demo import DEMO_MODEL, DEMO_MODEL_OVERRIDES
from mimir_fast.models import MaskedViT

try:
    import torchattacks
except ImportError:
    torchattacks = None

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
EPS = 8 / 255
N_IMAGES = 64
APGD_STEPS, N_TARGETS, SQUARE_QUERIES = 100, 9, 1000
CACHE_NAME = "mimir_fast_bench"
PROVIDERS = ("torchattacks", "mimir_fast")
# images of robust accuracy by which the providers may differ
TOLERANCE = {"autoattack": 1, "autoattack-10": 1, "apgd-t": 2, "square": 2}


def train_classifier(cache_dir: Path) -> Path:
    """The PGD-AT digits classifier, trained once into ``cache_dir`` (about two minutes on two
    idle CPU cores). Returns the model file."""
    from mimir_fast import train

    path = cache_dir / "pgd-at" / "model.safetensors"
    if path.exists():
        return path
    common = dict(
        data="digits",
        method="finetune",
        batch_size=64,
        weight_decay=0.05,
        augment="none",
        progress=False,
        eval_every=0,
        checkpoint_every=0,
        seed=0,
    )
    train(
        model=DEMO_MODEL,
        model_overrides=DEMO_MODEL_OVERRIDES,
        epochs=10,
        lr=2e-3,
        warmup_epochs=0.5,
        out_dir=str(cache_dir / "clean"),
        **common,
    )
    train(
        epochs=6,
        lr=1e-3,
        warmup_epochs=0.5,
        pretrained=str(cache_dir / "clean" / "model.safetensors"),
        adversarial="pgd",
        attack_eps=EPS,
        attack_step=3 / 255,
        attack_steps=3,
        out_dir=str(cache_dir / "pgd-at"),
        **common,
    )
    return path


def load_setup(cache_dir: Path) -> tuple[MaskedViT, torch.Tensor, torch.Tensor]:
    """(classifier in eval mode on DEVICE, 64 held-out digits, their labels)."""
    model = MaskedViT.load(train_classifier(cache_dir)).to(DEVICE).eval()
    model.check_inputs = False  # both providers attack the bare model
    test = load_digits("test", image_size=model.config.img_size)
    x = torch.stack([test[i][0] for i in range(N_IMAGES)]).to(DEVICE)
    y = torch.tensor([test[i][1] for i in range(N_IMAGES)]).to(DEVICE)
    return model, x, y


def default_cache_dir() -> Path:
    """Where pytest's cache keeps the classifier (for scripts outside pytest)."""
    return Path(__file__).resolve().parent.parent / ".pytest_cache" / "d" / CACHE_NAME


def make_attack(group: str, provider: str, model: torch.nn.Module, **options) -> Callable:
    """The attack of ``group`` from ``provider``, at the budgets in the module docstring;
    ``options`` go to mimir_fast's attack (e.g. ``compile=``)."""
    ta = provider == "torchattacks"
    if group == "autoattack":  # both at AutoAttack's official budgets (100 iterations)
        if ta:
            return official_torchattacks(model)
        return AutoAttack(model, EPS, version="standard", seed=0, **options)
    if group == "autoattack-10":  # both at torchattacks' AutoAttack budgets (10 iterations)
        if ta:
            return torchattacks.AutoAttack(
                model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0
            )
        return AutoAttack(model, EPS, version="standard", steps=10, seed=0, **options)
    if group == "apgd-t":
        if ta:
            return torchattacks.APGDT(
                model, norm="Linf", eps=EPS, steps=APGD_STEPS, n_restarts=1, n_classes=10, seed=0
            )
        return APGDT(model, EPS, steps=APGD_STEPS, n_target_classes=N_TARGETS, seed=0, **options)
    if group == "square":
        if ta:
            return torchattacks.Square(
                model, norm="Linf", eps=EPS, n_queries=SQUARE_QUERIES, n_restarts=1, seed=0
            )
        return Square(model, EPS, n_queries=SQUARE_QUERIES, seed=0, **options)
    raise ValueError(f"unknown benchmark group {group!r}")


def official_torchattacks(model: torch.nn.Module) -> Callable:
    """torchattacks' standard AutoAttack at the official budgets: its own four attacks chained by
    its ``MultiAttack`` exactly as its ``AutoAttack(version="standard")`` chains them, but with
    100 iterations for APGD-CE, APGD-T and FAB-T (``torchattacks.AutoAttack`` leaves them at
    the classes' default of 10)."""
    common = dict(norm="Linf", eps=EPS, n_restarts=1, steps=APGD_STEPS)
    return torchattacks.MultiAttack(
        [
            torchattacks.APGD(model, seed=0, loss="ce", **common),
            torchattacks.APGDT(model, seed=1, n_classes=10, **common),
            torchattacks.FAB(model, seed=2, multi_targeted=True, n_classes=10, **common),
            torchattacks.Square(model, norm="Linf", eps=EPS, seed=3, n_queries=5000, n_restarts=1),
        ]
    )


def timed_run(atk: Callable, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The function to time: one attack call, synchronised on a GPU."""

    def run() -> torch.Tensor:
        out = atk(x, y)
        if CUDA:
            torch.cuda.synchronize()
        return out

    return run


@torch.no_grad()
def robust_count(model, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> int:
    """Images still classified correctly, after checking ``x_adv`` is in the threat model."""
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    return int((model(x_adv).argmax(1) == y).sum())


def seconds(run: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# --- pytest-benchmark -------------------------------------------------------------------------

ROBUST: dict[tuple[str, str], int] = {}


@pytest.fixture(scope="module")
def setup(request):
    if torchattacks is None:
        pytest.fail(
            "torchattacks is not installed: these benchmarks compare against it (it comes with "
            "pip install -e '.[dev]'; on a machine without network see docs/gpu.md)"
        )
    cache = request.config.cache
    cache_dir = Path(cache.mkdir(CACHE_NAME)) if cache is not None else default_cache_dir()
    return load_setup(cache_dir)


def _robust(group: str, provider: str, setup) -> int:
    """Robust images after ``provider``'s attack (each provider run once per session)."""
    if (group, provider) not in ROBUST:
        model, x, y = setup
        x_adv = timed_run(make_attack(group, provider, model), x, y)()
        ROBUST[group, provider] = robust_count(model, x_adv, x, y)
    return ROBUST[group, provider]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("group", ["autoattack", "autoattack-10", "apgd-t", "square"])
def test_attack(benchmark, setup, group, provider):
    model, x, y = setup
    ours, theirs = _robust(group, "mimir_fast", setup), _robust(group, "torchattacks", setup)
    assert abs(ours - theirs) <= TOLERANCE[group], (
        f"{group}: robust images {ours} (mimir_fast) vs {theirs} (torchattacks)"
    )
    benchmark.group = group
    benchmark.extra_info.update(robust_images=ROBUST[group, provider], images=N_IMAGES)
    run = timed_run(make_attack(group, provider, model), x, y)
    benchmark.pedantic(run, rounds=3, warmup_rounds=0, iterations=1)
