"""Speed of mimir_fast's attacks against torchattacks', the two providers' runs interleaved.

Usage: ``python benchmarks/attack_ratio.py [--rounds 3] [--groups autoattack apgd-t ...]``.

Same classifier, images, device and budgets as ``benchmarks/test_attacks.py`` (the PGD-AT
digits classifier, 64 images, eps 8/255), plus ``pgd10`` (PGD, 10 steps of 2/255, random
start). Each group first runs both providers once, checks their robust accuracies agree and
prints them; then every round times one run of each provider, alternating which goes first,
so that a busy moment of the machine hits both alike. Printed per group: each provider's
fastest, median and slowest run, the ratio torchattacks / mimir_fast of the medians and of the
fastest runs, and the spread of the per-round ratios. The groups run are also written to
``benchmarks/results/attacks-<device>.json`` (``attacks-nvidia-h200.json``, ``attacks-cpu.json``;
replacing those groups, keeping the others), after each group.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torchattacks  # noqa: E402
from mimir_fast.attacks import PGD  # noqa: E402
from test_attacks import (  # noqa: E402
    CUDA,
    EPS,
    N_IMAGES,
    TOLERANCE,
    default_cache_dir,
    load_setup,
    make_attack,
    robust_count,
    seconds,
    timed_run,
)

GROUPS = ("autoattack", "autoattack-10", "apgd-t", "square", "pgd10")


def build(group: str, provider: str, model, compile_mode: str | None = None):
    """The attack; with ``compile_mode`` mimir_fast's runs the model through torch.compile."""
    if provider == "torchattacks":
        if group == "pgd10":
            return torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=10, random_start=True)
        return make_attack(group, provider, model)
    options = {} if compile_mode is None else {"compile": {"mode": compile_mode}}
    if group == "pgd10":
        return PGD(model, EPS, alpha=2 / 255, steps=10, random_start=True, **options)
    return make_attack(group, provider, model, **options)


def measure(group: str, setup, rounds: int, compile_mode: str | None = None) -> dict:
    """Check both providers agree, then time them interleaved; the numbers for one group."""
    model, x, y = setup
    runs = {
        p: timed_run(build(group, p, model, compile_mode), x, y)
        for p in ("torchattacks", "mimir_fast")
    }
    robust = {p: robust_count(model, run(), x, y) for p, run in runs.items()}
    limit = TOLERANCE.get(group, 2)
    if abs(robust["torchattacks"] - robust["mimir_fast"]) > limit:
        raise SystemExit(f"{group}: robust images differ by more than {limit}: {robust}")
    times: dict[str, list[float]] = {p: [] for p in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for p in order:
            times[p].append(seconds(runs[p]))
    per_round = [t / o for t, o in zip(times["torchattacks"], times["mimir_fast"])]
    med = {p: statistics.median(t) for p, t in times.items()}
    return {
        "robust_images": robust,
        "seconds": times,
        "ratio_of_medians": med["torchattacks"] / med["mimir_fast"],
        "ratio_of_fastest": min(times["torchattacks"]) / min(times["mimir_fast"]),
        "per_round_ratios": per_round,
    }


def line(group: str, m: dict) -> str:
    t = m["seconds"]
    cells = [f"{p} {min(v):6.2f}/{statistics.median(v):6.2f}/{max(v):6.2f} s" for p, v in t.items()]
    spread = f"{min(m['per_round_ratios']):.2f}-{max(m['per_round_ratios']):.2f}"
    robust = m["robust_images"]
    return (
        f"{group:10s} robust {robust['torchattacks']}/{robust['mimir_fast']} of {N_IMAGES}  "
        f"{'  '.join(cells)}  ratio {m['ratio_of_medians']:.2f}x median, "
        f"{m['ratio_of_fastest']:.2f}x fastest, rounds {spread}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each provider")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument(
        "--compile",
        metavar="MODE",
        help="mimir_fast's attacks run the model through torch.compile in this mode (e.g. "
        "reduce-overhead: CUDA graphs); the first, untimed run compiles. Results go to "
        "attacks-<device>-compile-<MODE>.json",
    )
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu"
    print(
        f"{device}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, torchattacks {torchattacks.__version__}"
    )
    print("times: fastest/median/slowest; ratio: torchattacks time / mimir_fast time")
    setup = load_setup(default_cache_dir())
    suffix = "" if args.compile is None else f"-compile-{args.compile}"
    name = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") if CUDA else "cpu"
    out = Path(__file__).parent / "results" / f"attacks-{name}{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"device": device, "torch": torch.__version__, "torchattacks": torchattacks.__version__}
    earlier = json.loads(out.read_text()) if out.exists() else {}
    if any(earlier.get(k) != v for k, v in meta.items()):
        earlier = {}  # another device or versions: start a fresh table
    groups = earlier.get("groups", {})
    for group in args.groups:
        groups[group] = measure(group, setup, args.rounds, args.compile)  # replaces the earlier
        print(line(group, groups[group]), flush=True)
        # written after each group (atomically), so a run cut short keeps the groups it finished
        partial = out.with_suffix(".json.tmp")
        partial.write_text(json.dumps({**meta, "groups": groups}, indent=2) + "\n")
        os.replace(partial, out)


if __name__ == "__main__":
    main()
