#!/usr/bin/env python
"""Run the whole benchmark suite on a GPU and record it in ``benchmarks/results/<device>.json``.

    python benchmarks/run_gpu_suite.py                  # run everything, write results, print the table
    python benchmarks/run_gpu_suite.py -k attention     # a subset (passed to pytest -k)
    python benchmarks/run_gpu_suite.py --table benchmarks/results/*.json   # README table from files

The results file holds the device name, the torch / Triton / CUDA / Python versions, and per
benchmark group the median seconds of each provider, the torch / mimir_fast ratio (> 1: the
fast path is faster) and each provider's ``extra_info`` (peak memory, SDPA backend, images/s,
model FLOP utilisation). The README's benchmark table is the ``--table`` output of those files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAST, BASE = "mimir_fast", "torch"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def versions() -> dict[str, str | None]:
    import torch

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "triton": None,
        "mimir_fast": None,
    }
    if torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import mimir_fast

        out["mimir_fast"] = getattr(mimir_fast, "__version__", None)
    except ImportError:
        pass
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def summarise(bench_json: dict) -> dict[str, dict]:
    """pytest-benchmark's JSON -> {group: {"providers": {p: {median_s, ...extra}}, "ratio": torch/mimir_fast}}."""
    groups: dict[str, dict] = {}
    for b in bench_json.get("benchmarks", []):
        group = b.get("group") or b["name"]
        provider = (b.get("params") or {}).get("provider", b["name"])
        entry = {
            "median_s": b["stats"]["median"],
            "min_s": b["stats"]["min"],
            "rounds": b["stats"]["rounds"],
            **(b.get("extra_info") or {}),
        }
        groups.setdefault(group, {"providers": {}})["providers"][provider] = entry
    for g in groups.values():
        p = g["providers"]
        if BASE in p and FAST in p and p[FAST]["median_s"] > 0:
            g["ratio"] = round(p[BASE]["median_s"] / p[FAST]["median_s"], 3)
    return dict(sorted(groups.items()))


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def table(results: list[dict]) -> str:
    """A markdown table: one row per (device, group)."""
    lines = [
        "| device | group | torch | mimir_fast | speed-up | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for group, g in r["groups"].items():
            p = g["providers"]
            t = _fmt_s(p[BASE]["median_s"]) if BASE in p else "-"
            f = _fmt_s(p[FAST]["median_s"]) if FAST in p else "-"
            ratio = f"{g['ratio']:.2f}x" if "ratio" in g else "-"
            notes = []
            for name, e in p.items():
                if "images_per_s" in e:
                    notes.append(
                        f"{name}: {e['images_per_s']:.0f} img/s"
                        + (f", MFU {e['mfu']:.1%}" if "mfu" in e else "")
                    )
                if "peak_mem_mib" in e:
                    notes.append(f"{name} peak {e['peak_mem_mib']:.0f} MiB")
                if "sdpa_backend" in e:
                    notes.append(f"SDPA {e['sdpa_backend']}")
            lines.append(f"| {r['device']} | {group} | {t} | {f} | {ratio} | {'; '.join(notes)} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "run_gpu_suite: no CUDA device; the suite's timed cases need a GPU "
            "(pass --allow-cpu to run what runs anyway)",
            file=sys.stderr,
        )
        return 2
    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{platform.machine()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "benchmark.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(HERE),
            "--benchmark-only",
            f"--benchmark-json={raw}",
            "-p",
            "no:cacheprovider",
            "-q",
            "-o",
            "testpaths=benchmarks",
        ]
        if args.k:
            cmd += ["-k", args.k]
        cmd += args.pytest_args
        print("+", " ".join(cmd), flush=True)
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        rc = subprocess.run(cmd, check=False, cwd=ROOT, env=env).returncode
        if not raw.exists():
            print(f"run_gpu_suite: pytest wrote no benchmark JSON (exit {rc})", file=sys.stderr)
            return rc or 1
        bench = json.loads(raw.read_text())
    result = {
        "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "pytest_exit_code": rc,
        "groups": summarise(bench),
        "machine_info": bench.get("machine_info", {}),
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug(device)}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    print(f"\nwrote {path}\n")
    print(table([result]))
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--out-dir", default=str(HERE / "results"), help="where <device-slug>.json goes"
    )
    parser.add_argument("-k", default=None, help="pytest -k expression selecting benchmarks")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run even without CUDA (timed GPU cases skip)"
    )
    parser.add_argument(
        "--table",
        nargs="+",
        metavar="RESULTS_JSON",
        help="print the markdown table of existing results files and exit",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = parser.parse_args(argv)
    if args.table:
        loaded = [json.loads(Path(p).read_text()) for p in args.table if p.endswith(".json")]
        print(table([r for r in loaded if isinstance(r, dict) and "groups" in r and "device" in r]))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
