"""Every Triton kernel launch of the package, compiled ahead of time for real GPUs, without one.

tests/aot_helpers.py runs each host launcher on meta tensors at every preset's shapes (training
with mask ratio 0.75, evaluation on all tokens, MAE's decoder too) and at the tests' shapes, in
fp32, bf16 and fp16, records the launches the launchers' configuration functions chose, and
compiles each distinct one with Triton's compiler and ptxas for sm_80 (A100), sm_89 (L4, RTX 40)
and sm_90 (H100, H200). Checked here: every build compiles, fits the target's shared memory per
block, and spills at most MAX_SPILL_BYTES. A table of registers, spills and shared memory per
build is written to the terminal (the CI log), pass or fail.

    python -m pytest tests/test_aot_compile.py -q

needs about 5 minutes of CPU time with an empty Triton cache, spread over 2 worker processes
(measured: 13 minutes wall on 2 cores shared with other work), and ~30 s with a full one
(``~/.triton/cache``, or ``TRITON_CACHE_DIR``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from mimir_fast.kernels._shared import SHARED_MEMORY_BYTES

pytest.importorskip("triton")

# slow (minutes from an empty cache), and its own timeout: the compile runs in the first test
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "python" / "mimir_fast" / "kernels"
ARCHS = (80, 89, 90)
# Bytes a thread may spill to local memory (ptxas "spill stores"). Every configuration the
# launchers choose keeps its working set in registers, so none may spill: a spill means a
# configuration outgrew the register file and the kernel would crawl.
MAX_SPILL_BYTES = 0
# Compiling everything from an empty cache took 13 minutes on 2 busy cores; room for slower CI.
COMPILE_TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def report(tmp_path_factory, request):
    """The compile report (see tests/aot_helpers.py); its table goes to the terminal."""
    out = tmp_path_factory.mktemp("aot") / "builds.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(ROOT / "tests" / "aot_helpers.py"), "--out", str(out)]
    cmd += ["--arch", *map(str, ARCHS)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    # past pytest's output capture, so that the CI log shows the table whether tests pass or not
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in _table(result):
            if reporter is None:
                print(line, file=sys.__stdout__)
            else:
                reporter.write_line(line)
    return result


def _table(result: dict) -> list[str]:
    """A summary per kernel and arch, then one row per build with each arch's figures."""
    builds = result["builds"]
    lines = [
        "",
        f"ahead-of-time compile: {len(builds)} builds, Triton {result['triton']}, "
        f"{result['seconds']} s (regs per thread, spill bytes per thread, shared bytes per block)",
        f"{'kernel':34} {'arch':>5} {'builds':>6} {'max regs':>8} {'max spill':>9} "
        f"{'max shared':>10} {'limit':>7}",
    ]
    per_kernel = defaultdict(list)
    for b in builds:
        per_kernel[(b["kernel"], b["arch"])].append(b)
    for (kernel, arch), group in sorted(per_kernel.items()):
        ok = [b for b in group if "error" not in b]
        most = {k: max((b[k] for b in ok), default=-1) for k in ("regs", "spill_stores", "shared")}
        lines.append(
            f"{kernel:34} {'sm_' + str(arch):>5} {len(group):>6} {most['regs']:>8} "
            f"{most['spill_stores']:>9} {most['shared']:>10} {SHARED_MEMORY_BYTES[arch]:>7}"
        )
    lines += ["", f"{'kernel':30} {'dtype':9} {'config':62} " + " ".join(
        f"{'sm_' + str(a) + ' r/spill/smem':>20}" for a in result["archs"]
    ) + "  shapes"]  # fmt: skip
    rows = defaultdict(dict)
    for b in builds:
        rows[(b["kernel"], "/".join(b["dtypes"]), b["config"])][b["arch"]] = b
    for (kernel, dtypes, config), by_arch in sorted(rows.items()):
        cells = []
        for arch in result["archs"]:
            b = by_arch.get(arch)
            if b is None:
                cells.append(f"{'-':>20}")
            elif "error" in b:
                cells.append(f"{'ERROR':>20}")
            else:
                cells.append(f"{b['regs']:>5}/{b['spill_stores']}/{b['shared']:>7}".rjust(20))
        shapes = next(iter(by_arch.values()))["shapes"]
        more = f" (+{len(shapes) - 1})" if len(shapes) > 1 else ""
        lines.append(f"{kernel:30} {dtypes:9} {config:62} {' '.join(cells)}  {shapes[0]}{more}")
    return lines


def _kernel_names() -> set[str]:
    """Every ``@triton.jit`` kernel (not helper) defined in the package's kernel modules."""
    found = set()
    for path in KERNELS.glob("*.py"):
        found |= set(re.findall(r"@triton\.jit\s*\ndef (\w+_kernel)\(", path.read_text()))
    return found


def test_every_kernel_is_built_for_every_arch_and_dtype(report):
    built = {(b["kernel"], b["arch"]) for b in report["builds"]}
    assert _kernel_names(), "no kernel found: the source scan is broken"
    missing = {(k, a) for k in _kernel_names() for a in ARCHS} - built
    assert not missing, f"kernels never launched by the cases: {sorted(missing)}"
    for kernel in ("_attention_fwd_kernel", "_attention_bwd_dq_kernel"):
        dtypes = {d for b in report["builds"] if b["kernel"] == kernel for d in b["dtypes"]}
        assert dtypes == {"fp32", "bf16", "fp16"}, (kernel, dtypes)


def test_every_build_compiles(report):
    failed = [f"{b['kernel']} sm_{b['arch']} {b['config']}: {b['error']}" for b in report["builds"]
              if "error" in b]  # fmt: skip
    assert not failed, "\n".join(failed)


def test_every_build_fits_shared_memory(report):
    over = [
        f"{b['kernel']} sm_{b['arch']} {b['dtypes']} {b['config']}: {b['shared']} bytes"
        for b in report["builds"]
        if "error" not in b and b["shared"] > SHARED_MEMORY_BYTES[b["arch"]]
    ]
    assert not over, "\n".join(over)


def test_no_build_spills(report):
    spilled = [
        f"{b['kernel']} sm_{b['arch']} {b['dtypes']} {b['config']}: {b['spill_stores']} bytes"
        for b in report["builds"]
        if "error" not in b and b["spill_stores"] > MAX_SPILL_BYTES
    ]
    assert not spilled, "\n".join(spilled)


def test_launch_configs_are_what_the_launchers_pass(report):
    """The builds carry the launchers' choices: e.g. fp32 attention's TF32x3 dots and 16-row
    blocks, and one unpipelined step when the keys fit one block."""
    fwd = [b for b in report["builds"] if b["kernel"] == "_attention_fwd_kernel"]
    assert all("PRECISION=tf32x3" in b["config"] for b in fwd)
    fp32 = [b for b in fwd if b["dtypes"] == ["fp32"]]
    assert fp32 and all("BLOCK_M=16 " in b["config"] for b in fp32)
    single = [b for b in fwd if any(" T=17 " in s for s in b["shapes"])]
    assert single and all(b["config"].endswith(" s1") for b in single)
