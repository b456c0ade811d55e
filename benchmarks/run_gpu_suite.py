#!/usr/bin/env python
"""One GPU check: the CUDA correctness tests, then the benchmarks; results, evidence and logs.

    python benchmarks/run_gpu_suite.py --out DIR      # the check (sized for 10 minutes)
    python benchmarks/run_gpu_suite.py --dry-run      # what it would run, with a time estimate
    python benchmarks/run_gpu_suite.py --merge DIR/verified.json   # into kernels/verified.json
    python benchmarks/run_gpu_suite.py --table DIR/results.json ...  # README table from results

Run it from a checkout of the repository (it runs tests/ and benchmarks/ from there) with the
package installed. It installs nothing; in order:

1. Checks that CUDA, Triton, torchattacks, pytest-benchmark, pytest-timeout and an importable
   mimir_fast (with its native module) are there, and stops at once naming what is missing.
2. Correctness, under its own timeout: ``pytest -m requires_cuda`` over the test files that hold
   such tests (log: correctness.log); a phase cut short or a file that fails to import verifies
   nothing.
3. Benchmarks, under one timeout for the phase: ``pytest benchmarks/<file> --benchmark-only``
   per file, kernels first (logs and pytest-benchmark JSON: bench-<file>.log / .json); a file cut
   short by the timeout leaves the others' results.
4. Writes to DIR: results.json (device, versions, phases, each test's outcome, per benchmark
   group each provider's median time, the speed-up and the fraction of the memory bandwidth
   reached) and verified.json, the evidence table of this GPU (see benchmarks/gpu_evidence.py:
   verified = the op's requires_cuda tests at that dtype all passed; speedup = the smallest
   reference / kernel time ratio over the op's benchmarks). Prints the results table.

``--merge`` puts a run's verified.json into the package's table (kernels="auto" then follows it);
``MIMIR_FAST_VERIFIED_TABLE=DIR/verified.json`` tries it without merging. Exit status: 0 when
both phases passed, 1 otherwise, 2 when something needed is missing. See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gpu_evidence
import roofline

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAST, BASE = "mimir_fast", "torch"
# benchmark files in the order they run: the kernels first, the CPU loader last
BENCH_FILES = ("test_vit_kernels.py", "test_pgd.py", "test_loader.py")
# benchmark files the check leaves out, and why (the dry run lists them with the reason)
SEPARATE_BENCH_FILES = {
    "test_attacks.py": "its own GPU command, python benchmarks/attack_ratio.py (docs/gpu.md): "
    "it trains a classifier and runs each AutoAttack several times",
    "test_corruptions.py": "CPU only: the corruptions run on the Rust loader's threads",
}
CORRECTNESS_TIMEOUT_S, BENCHMARK_TIMEOUT_S = 240, 330
BUDGET_S = 8 * 60  # what the dry run's estimate must stay under

# The dry run's estimate, per test: (node-id pattern, seconds), the first match counts.
# Conservative constants for an H100/H200 host with a cold Triton cache: ~2 s per kernel
# specialisation compiled, model construction on the CPU, and for a benchmark its timed calls
# (warm-up + rounds + the checked and the peak-memory call, as set in the benchmark files)
# times a conservative seconds per call. Each pytest start adds SESSION_S.
ESTIMATES: tuple[tuple[str, float], ...] = (
    (r"tests/test_vit_kernels\.py::test_attention_real_shapes", 6),  # 3 kernels compiled
    (r"tests/test_vit_kernels\.py::test_switch_real_shapes", 15),  # 2 models, 4 ops compiled
    (r"tests/test_pgd_step_kernel\.py::test_kernel_matches", 2),
    (r"tests/test_pgd_step_kernel\.py::test_pgd_attack", 8),  # PGD + APGD, 5 steps each
    (r"tests/test_gram_kernel\.py::", 4),
    (r"tests/test_mimir\.py::", 8),
    (r"tests/", 10),  # any other requires_cuda test
    (r"benchmarks/test_vit_kernels\.py::test_mimir_step", 12 + 16 * 0.3),  # 2 models, 16 steps
    (r"benchmarks/test_vit_kernels\.py::.*\[torch-", 2 + 28 * 0.02),  # model config, 28 calls
    (r"benchmarks/test_vit_kernels\.py::.*\[mimir_fast-", 5 + 28 * 0.02),  # + Triton compiles
    (r"benchmarks/test_pgd\.py::test_pgd10", 8 + 7 * 0.5),  # ViT-S/2 model, 7 PGD-10 runs
    (r"benchmarks/test_pgd\.py::test_pgd_step", 2 + 57 * 0.01),
    (r"benchmarks/test_loader\.py::test_loader_cifar\[torch", 2 + 6 * 1.5),  # 6 epochs
    (r"benchmarks/test_loader\.py::test_loader_cifar", 2 + 5 * 0.4),
    (r"benchmarks/test_loader\.py::test_loader_imagefolder\[torch", 5 + 8 * 1.5),  # + JPEGs
    (r"benchmarks/test_loader\.py::test_loader_imagefolder", 6 * 0.5),
    (r"benchmarks/", 20),
)
SESSION_S = {"correctness": 15, "benchmarks": 8}  # collection of tests/ imports much more


# ------------------------------------------------------------------------------ what is needed


def missing_requirements(need_cuda: bool = True) -> list[str]:
    """What the check needs and this environment lacks, each with how to get it."""
    missing = []
    try:
        import torch
    except ImportError:
        return ["torch (install the CUDA build of PyTorch first)"]
    if need_cuda and not torch.cuda.is_available():
        missing.append("a CUDA device (torch.cuda.is_available() is False)")
    wheels = "install its wheel with pip install --no-deps --no-index (docs/gpu.md)"
    for module, name in (
        ("triton", "triton"),
        ("pytest", "pytest"),
        ("pytest_benchmark", "pytest-benchmark"),
        ("pytest_timeout", "pytest-timeout"),
    ):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{name}: {wheels}")
    try:
        import torchattacks  # noqa: F401  (imported in full: it needs scipy too)
    except ImportError as e:
        missing.append(f"torchattacks, importable ({e}): {wheels}")
    try:
        from mimir_fast import _native

        _native.build_info()
    except Exception as e:  # not installed, or a broken / stale native module
        missing.append(f"mimir_fast, importable with its native module ({type(e).__name__}: {e})")
    for folder in ("tests", "benchmarks"):
        if not (ROOT / folder).is_dir():
            missing.append(f"{ROOT / folder} (run the script from a checkout of the repository)")
    return missing


def versions() -> dict[str, str | None]:
    import torch

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for module in ("triton", "mimir_fast", "torchattacks"):
        try:
            out[module] = getattr(__import__(module), "__version__", None)
        except ImportError:
            out[module] = None
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


# ------------------------------------------------------------------------------------ phases


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def run_logged(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run ``cmd`` in the repository, its output both shown and written to ``log``.

    Returns {"command", "exit_code", "seconds", "timed_out"}; on timeout the whole process
    group is stopped.
    """
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # real kernels only
    print("+", shlex.join(cmd), f"(timeout {timeout:.0f} s, log {log})", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, stopped whole on timeout
        )

        def pump() -> None:
            for line in proc.stdout:
                out.write(line)
                sys.stdout.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=max(timeout, 1))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code, timed_out = proc.wait(), True
        reader.join(timeout=10)
    seconds = round(time.monotonic() - start, 1)
    if timed_out:
        print(f"run_gpu_suite: stopped after {seconds} s (timeout)", flush=True)
    return {"command": cmd, "exit_code": code, "seconds": seconds, "timed_out": timed_out}


def cuda_test_files() -> list[str]:
    """The test files with ``requires_cuda`` tests: only those are collected, so the check
    needs none of the other test files' extra packages (hypothesis, timm, ...)."""
    files = sorted((ROOT / "tests").glob("test_*.py"))
    return [f"tests/{f.name}" for f in files if "requires_cuda" in f.read_text()]


def run_correctness(out: Path, k: str | None, timeout: float) -> tuple[dict, dict[str, str]]:
    """The requires_cuda tests; "complete" when they all ran (collected, not cut short)."""
    cmd = _pytest("-v", "-m", "requires_cuda", *cuda_test_files(), *(("-k", k) if k else ()))
    phase = run_logged(cmd, out / "correctness.log", timeout)
    log = (out / "correctness.log").read_text()
    phase["complete"] = (
        phase["exit_code"] in (0, 1) and not phase["timed_out"] and "ERROR collecting" not in log
    )
    return phase, gpu_evidence.parse_outcomes(log)


def run_benchmarks(out: Path, k: str | None, timeout: float) -> tuple[dict, dict, dict[str, str]]:
    """Each benchmark file in its own pytest run, all within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    runs, merged, outcomes = {}, {"benchmarks": [], "machine_info": {}}, {}
    for name in BENCH_FILES:
        left = deadline - time.monotonic()
        stem = Path(name).stem
        if left < 5:
            runs[stem] = {"skipped": "no time left in the benchmark phase"}
            continue
        raw = out / f"bench-{stem}.json"
        cmd = _pytest("-v", f"benchmarks/{name}", "--benchmark-only", f"--benchmark-json={raw}")
        runs[stem] = run_logged(cmd + (["-k", k] if k else []), out / f"bench-{stem}.log", left)
        outcomes.update(gpu_evidence.parse_outcomes((out / f"bench-{stem}.log").read_text()))
        if raw.exists():
            data = json.loads(raw.read_text())
            merged["benchmarks"] += data.get("benchmarks", [])
            merged["machine_info"] = data.get("machine_info", {})
    return runs, merged, outcomes


# ----------------------------------------------------------------------------------- results


def summarise(bench_json: dict) -> dict[str, dict]:
    """pytest-benchmark's JSON -> {group: {"providers": {p: {median_s, ...extra}}, "ratio"}}.

    A benchmark's parameters other than its provider that its group name leaves out (the norm
    of ``pgd-step``) are appended to it, so that each group compares like with like. ``ratio``
    is the reference's / mimir_fast's median time (> 1: the fast path is faster); the
    reference is torch, or the other provider (torchattacks).
    """
    groups: dict[str, dict] = {}
    for b in bench_json.get("benchmarks", []):
        params = dict(b.get("params") or {})
        provider = params.pop("provider", b["name"])
        group = b.get("group") or b["name"]
        for value in map(str, params.values()):
            if value not in group.split("-"):
                group += f"-{value}"
        entry = {
            "median_s": b["stats"]["median"],
            "min_s": b["stats"]["min"],
            "rounds": b["stats"]["rounds"],
            **(b.get("extra_info") or {}),
        }
        groups.setdefault(group, {"providers": {}})["providers"][provider] = entry
    for g in groups.values():
        p, base = g["providers"], reference_of(g["providers"])
        if base is not None and FAST in p and p[FAST]["median_s"] > 0:
            g["ratio"] = round(p[base]["median_s"] / p[FAST]["median_s"], 3)
    return dict(sorted(groups.items()))


def reference_of(providers: dict) -> str | None:
    """The provider a group compares mimir_fast with: torch, else the one other provider."""
    others = [name for name in providers if name != FAST]
    return BASE if BASE in providers else (others[0] if len(others) == 1 else None)


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def _bandwidth(entry: dict, provider: str, device: str) -> str:
    """This provider's bytes / median time as a fraction of the device's peak; blank if unknown."""
    key = "kernel_bytes" if provider == FAST else "reference_bytes"
    if key not in entry:
        return ""
    fraction = roofline.bandwidth_fraction(entry[key], entry["median_s"], device)
    return "" if fraction is None else f"{fraction:.0%}"


def _notes(providers: dict) -> str:
    notes = []
    for name, e in providers.items():
        if "images_per_s" in e:
            mfu = f", MFU {e['mfu']:.1%}" if "mfu" in e else ""
            notes.append(f"{name}: {e['images_per_s']:.0f} img/s{mfu}")
        if "peak_mem_mib" in e:
            notes.append(f"{name} peak {e['peak_mem_mib']:.0f} MiB")
        if "sdpa_backend" in e:
            notes.append(f"SDPA {e['sdpa_backend']}")
    return "; ".join(notes)


def table(results: list[dict]) -> str:
    """A markdown table: one row per (device, group); the memory-bandwidth column gives each
    provider's bytes moved (benchmarks/roofline.py) / time as a fraction of the device's peak."""
    lines = [
        "| device | group | reference | mimir_fast | speed-up | memory BW reference / mimir_fast "
        "| notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for group, g in r["groups"].items():
            p, base = g["providers"], reference_of(g["providers"])
            t = "-" if base is None else _fmt_s(p[base]["median_s"])
            t += f" ({base})" if base not in (None, BASE) else ""
            f = _fmt_s(p[FAST]["median_s"]) if FAST in p else "-"
            ratio = f"{g['ratio']:.2f}x" if "ratio" in g else "-"
            bw = [_bandwidth(p[n], n, r["device"]) if n in p else "" for n in (base, FAST)]
            bw_cell = " / ".join(bw) if any(bw) else ""
            row = [r["device"], group, t, f, ratio, bw_cell, _notes(p)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _about_run() -> dict:
    import torch

    major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "arch": f"sm_{major}{minor}" if torch.cuda.is_available() else "cpu",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def run(args: argparse.Namespace) -> int:
    """The check itself: requirements, correctness, benchmarks, results."""
    missing = missing_requirements(need_cuda=not args.allow_cpu)
    if missing:
        print("run_gpu_suite: missing, nothing was run:", file=sys.stderr)
        print("\n".join(f"  - {m}" for m in missing), file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    about = _about_run()
    correctness, test_outcomes = run_correctness(out, args.k, args.correctness_timeout)
    bench_runs, bench, bench_outcomes = run_benchmarks(out, args.k, args.benchmark_timeout)
    groups = summarise(bench)
    evidence = gpu_evidence.evidence_table(
        gpu_evidence.correctness_evidence(test_outcomes),
        gpu_evidence.benchmark_evidence(groups, bench_outcomes),
        about,
        correctness["complete"],
    )
    result = {
        **about,
        "phases": {"correctness": correctness, "benchmarks": bench_runs},
        "tests": test_outcomes,
        "benchmark_outcomes": bench_outcomes,
        "groups": groups,
        "machine_info": bench.get("machine_info", {}),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "verified.json").write_text(json.dumps(evidence, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'verified.json'}\n")
    print(table([result]))
    phases = [correctness, *(r for r in bench_runs.values() if "exit_code" in r)]
    ok = all(p["exit_code"] == 0 and not p["timed_out"] for p in phases)
    return 0 if ok and len(phases) == 1 + len(BENCH_FILES) else 1


# ----------------------------------------------------------------------------------- dry run


def estimate_s(node: str) -> float:
    return next(s for pattern, s in ESTIMATES if re.match(pattern, node))


def _collect(args: list[str]) -> list[str]:
    cmd = _pytest("--collect-only", "-q", *args)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    nodes = [line for line in proc.stdout.splitlines() if "::" in line]
    if proc.returncode not in (0, 5) or not nodes:  # 5: nothing collected
        raise SystemExit(f"run_gpu_suite: collection failed:\n{proc.stdout}\n{proc.stderr}")
    return nodes


def dry_run(args: argparse.Namespace) -> int:
    """List every test and benchmark the check would run, with the time estimate."""
    k = ["-k", args.k] if args.k else []
    phases = {
        "correctness": _collect(["-m", "requires_cuda", *cuda_test_files(), *k]),
        "benchmarks": _collect([f"benchmarks/{name}" for name in BENCH_FILES] + k),
    }
    total = 0.0
    for phase, nodes in phases.items():
        sessions = 1 if phase == "correctness" else len({n.split("::")[0] for n in nodes})
        seconds = sessions * SESSION_S[phase] + sum(estimate_s(n) for n in nodes)
        total += seconds
        print(f"{phase}: {len(nodes)} items, estimate {seconds:.0f} s")
        for node in nodes:
            print(f"  {estimate_s(node):6.1f} s  {node}")
    for name, why in SEPARATE_BENCH_FILES.items():
        print(f"left out: benchmarks/{name}: {why}")
    print(
        f"\nestimate on an H100/H200: {total:.0f} s ({total / 60:.1f} min; budget "
        f"{BUDGET_S / 60:.0f} min), from per-test constants (benchmarks/run_gpu_suite.py "
        "ESTIMATES: Triton compiles, model construction, and each benchmark's timed calls "
        "times a conservative time per call) plus the start of each pytest run"
    )
    return 0 if total < BUDGET_S else 1


# -------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", "--out-dir", metavar="DIR", help="folder for results and logs")
    parser.add_argument("--dry-run", action="store_true", help="list what would run, estimate")
    parser.add_argument("-k", default=None, help="pytest -k expression selecting a subset")
    timeouts = (("correctness", CORRECTNESS_TIMEOUT_S), ("benchmark", BENCHMARK_TIMEOUT_S))
    for phase, default in timeouts:
        parser.add_argument(
            f"--{phase}-timeout",
            type=float,
            default=default,
            metavar="S",
            help=f"seconds for the {phase} phase (default {default})",
        )
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run without CUDA (the GPU cases skip)"
    )
    parser.add_argument(
        "--merge", metavar="RUN_TABLE", help="merge a run's verified.json into --into and exit"
    )
    parser.add_argument(
        "--into",
        default=str(ROOT / "python" / "mimir_fast" / "kernels" / "verified.json"),
        help="the table --merge updates (default: the package's)",
    )
    parser.add_argument(
        "--table",
        nargs="+",
        metavar="RESULTS_JSON",
        help="print the markdown table of existing results files and exit",
    )
    args = parser.parse_args(argv)
    if args.table:
        loaded = [json.loads(Path(p).read_text()) for p in args.table if p.endswith(".json")]
        print(table([r for r in loaded if isinstance(r, dict) and "groups" in r and "device" in r]))
        return 0
    if args.merge:
        count = gpu_evidence.merge_tables(Path(args.merge), Path(args.into))
        print(f"merged {count} entries of {args.merge} into {args.into}")
        return 0
    if args.dry_run:
        return dry_run(args)
    if not args.out:
        parser.error("--out DIR is needed: the folder for results, evidence table and logs")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
