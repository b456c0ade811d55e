"""The one GPU check (benchmarks/run_gpu_suite.py), its evidence table and its roofline column.

What runs without a GPU: ``--help``, ``--dry-run`` (collection only, with the time estimate),
the refusal to run without CUDA, and the pieces that turn a run's outcomes into the table
``kernels="auto"`` reads (fed with synthetic outcomes here).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mimir_fast.kernels import dispatch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "run_gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    """benchmarks/run_gpu_suite.py, gpu_evidence.py and roofline.py, imported."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        modules = [importlib.import_module(m) for m in ("run_gpu_suite", "gpu_evidence")]
        yield (*modules, importlib.import_module("roofline"))


def _script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -------------------------------------------------------------------------- the command


def test_help_describes_the_one_command():
    proc = _script("--help")
    assert proc.returncode == 0, proc.stderr
    for words in ("--out DIR", "--dry-run", "requires_cuda", "verified.json", "installs nothing"):
        assert words in proc.stdout, words


def _marked_requires_cuda(path: Path) -> set[str]:
    """Names of the test functions of ``path`` carrying ``@pytest.mark.requires_cuda``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            if any("requires_cuda" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    return names


@pytest.mark.slow
def test_dry_run_lists_every_test_and_benchmark_within_the_budget():
    proc = _script("--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = set(re.findall(r"^\s+[\d.]+ s  (\S+?\.py::\w+)", proc.stdout, re.M))
    assert listed, proc.stdout
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for name in _marked_requires_cuda(path):
            assert f"tests/{path.name}::{name}" in listed, name
    left_out = set(re.findall(r"^left out: benchmarks/(\S+\.py): \S", proc.stdout, re.M))
    for path in sorted(BENCH.glob("test_*.py")):
        if path.name in left_out:  # listed with its reason
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                assert f"benchmarks/{path.name}::{node.name}" in listed, node.name
    minutes = float(re.search(r"estimate on an H100/H200: \d+ s \(([\d.]+) min", proc.stdout)[1])
    assert 0 < minutes < 8


def test_without_cuda_it_stops_at_once_naming_what_is_missing(suite, tmp_path, capsys):
    run_gpu_suite, _, _ = suite
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert run_gpu_suite.main(["--out", str(tmp_path / "out")]) == 2
    assert "a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was run


# ------------------------------------------------------------------ outcomes -> evidence

LOG = """\
tests/test_vit_kernels.py::test_attention_real_shapes[vits2-enc-fp32] PASSED  [ 10%]
tests/test_vit_kernels.py::test_attention_real_shapes[vits2-enc-bf16] PASSED  [ 20%]
tests/test_vit_kernels.py::test_attention_real_shapes[t300-d128-fp32] FAILED  [ 30%]
tests/test_vit_kernels.py::test_switch_real_shapes_bf16[vits2] PASSED  [ 40%]
tests/test_gram_kernel.py::test_kernel_matches_reference_real_sizes_on_gpu[512-3072] PASSED [ 50%]
tests/test_pgd_step_kernel.py::test_kernel_matches_reference_cuda[(7, 3, 33, 31)-bf16-l2] PASSED
tests/test_pgd_step_kernel.py::test_pgd_attack_same_with_kernel_and_reference_cuda[l2] ERROR
tests/test_mimir.py::test_step_makes_no_host_sync_on_cuda[nocca] SKIPPED (needs a GPU) [ 90%]
FAILED tests/test_vit_kernels.py::test_attention_real_shapes[t300-d128-fp32] - OutOfResources
"""
ABOUT = {"arch": "sm_90", "device": "NVIDIA H200", "date": "2026-01-01", "versions": {}}


def test_outcomes_are_read_from_the_verbose_log(suite):
    _, ev, _ = suite
    outcomes = ev.parse_outcomes(LOG)
    assert len(outcomes) == 8
    assert outcomes["tests/test_vit_kernels.py::test_attention_real_shapes[t300-d128-fp32]"] == (
        "failed"
    )
    pgd = "tests/test_pgd_step_kernel.py::test_kernel_matches_reference_cuda"
    assert outcomes[pgd + "[(7, 3, 33, 31)-bf16-l2]"] == "passed"
    assert outcomes["tests/test_mimir.py::test_step_makes_no_host_sync_on_cuda[nocca]"] == "skipped"


def test_each_test_counts_for_its_ops_and_dtype(suite):
    _, ev, _ = suite
    counts = ev.correctness_evidence(ev.parse_outcomes(LOG))
    assert counts[("attention", "float32")] == {"passed": 1, "failed": 1}
    assert counts[("attention", "bfloat16")] == {"passed": 2, "failed": 0}  # + the switch test
    assert counts[("norm_pix_loss", "bfloat16")] == {"passed": 1, "failed": 0}
    assert counts[("gaussian_gram", "float32")] == {"passed": 1, "failed": 0}
    assert counts[("pgd_step", "bfloat16")] == {"passed": 1, "failed": 0}
    assert counts[("pgd_step", "float32")] == {"passed": 0, "failed": 1}  # no dtype in the id
    assert not any(op == "mimir" for op, _ in counts)
    assert ev.ops_of("tests/test_mimir.py::test_step_makes_no_host_sync_on_cuda[nocca]") == ()


def _groups(**ratios):
    """Benchmark groups as run_gpu_suite.summarise gives them: {name: (op, dtype, ratio)}."""
    out = {}
    for name, (op, dtype, ratio) in ratios.items():
        info = {"median_s": 1e-3, "op": op, "dtype": dtype}
        out[name] = {"providers": {"torch": info, "mimir_fast": info}, "ratio": ratio}
    return out


def test_the_run_table_verifies_and_times_per_op_and_dtype(suite, tmp_path, monkeypatch):
    _, ev, _ = suite
    groups = _groups(
        **{
            "attention-enc-vits2": ("attention", "bfloat16", 1.8),
            "attention-dec-vits2": ("attention", "bfloat16", 1.2),
            "hsic-vits2": ("gaussian_gram", "float32", 0.7),
            "pgd-step-l2": ("pgd_step", "float32", 3.0),
        }
    )
    tests = ev.correctness_evidence(ev.parse_outcomes(LOG))
    table = ev.evidence_table(tests, ev.benchmark_evidence(groups, {}), ABOUT, True)
    entries = {(e["op"], e["dtype"]): e for e in table["entries"]}
    assert entries[("attention", "bfloat16")]["verified"] is True
    assert entries[("attention", "bfloat16")]["speedup"] == 1.2  # the smaller ratio
    assert entries[("attention", "float32")]["verified"] is False  # one failure
    assert entries[("gaussian_gram", "float32")]["verified"] is True
    assert entries[("pgd_step", "bfloat16")]["verified"] is True
    assert entries[("pgd_step", "float32")]["verified"] is False  # the attack test: fp32
    # what the dispatch makes of it, on a faked sm_90 GPU
    path = tmp_path / "verified.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(dispatch.TABLE_ENV, str(path))
    monkeypatch.delenv("MIMIR_FAST_KERNELS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    dispatch.clear_table_cache()
    try:
        picks = {
            (op, dt): dispatch.resolve_kernels("auto", (op,), "cuda", getattr(torch, dt))
            for op, dt in entries
        }
    finally:
        dispatch.clear_table_cache()
    assert picks.pop(("attention", "bfloat16")) == "triton"  # verified and faster
    assert set(picks.values()) == {"torch"}  # slower, unverified or untimed


def test_nothing_is_verified_when_the_tests_did_not_finish(suite):
    _, ev, _ = suite
    tests = ev.correctness_evidence(ev.parse_outcomes(LOG))
    table = ev.evidence_table(tests, {}, ABOUT, False)
    assert table["entries"] and not any(e["verified"] for e in table["entries"])


def test_a_failed_test_naming_no_dtype_unverifies_every_dtype_of_its_op(suite):
    _, ev, _ = suite
    log = LOG + "tests/test_vit_kernels.py::test_attention_on_gpu FAILED\n"
    table = ev.evidence_table(ev.correctness_evidence(ev.parse_outcomes(log)), {}, ABOUT, True)
    attention = [e for e in table["entries"] if e["op"] == "attention"]
    assert len(attention) == 2 and not any(e["verified"] for e in attention)


def test_a_failed_benchmark_leaves_its_op_without_speedup(suite):
    _, ev, _ = suite
    groups = _groups(**{"attention-enc-vits2": ("attention", "bfloat16", 1.8)})
    failed = {"benchmarks/test_vit_kernels.py::test_attention[mimir_fast-vits2-dec]": "failed"}
    assert ev.benchmark_evidence(groups, failed)[("attention", "bfloat16")]["speedup"] is None
    assert ev.benchmark_evidence(groups, {})[("attention", "bfloat16")]["speedup"] == 1.8


def test_merge_replaces_the_same_keys_and_keeps_the_others(suite, tmp_path):
    run_gpu_suite, _, _ = suite

    def entry(op, arch, speedup):
        return {"op": op, "arch": arch, "dtype": "bfloat16", "verified": True, "speedup": speedup}

    into, run = tmp_path / "into.json", tmp_path / "run.json"
    fmt = dispatch.TABLE_FORMAT
    into.write_text(json.dumps({"format": fmt, "entries": [entry("attention", "sm_80", 1.1)]}))
    entries = [entry("attention", "sm_90", 0.9), entry("attention", "sm_80", 1.3)]
    run.write_text(json.dumps({"format": fmt, "entries": entries}))
    assert run_gpu_suite.main(["--merge", str(run), "--into", str(into)]) == 0
    merged = dispatch.load_table(into)
    assert {k: e["speedup"] for k, e in merged.items()} == {
        ("attention", "sm_80", "bfloat16"): 1.3,
        ("attention", "sm_90", "bfloat16"): 0.9,
    }


# ------------------------------------------------------------------------------ roofline


def test_peak_bandwidth_by_device_name(suite):
    _, _, roofline = suite
    assert roofline.peak_bandwidth("NVIDIA H200") == 4.8e12
    assert roofline.peak_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert roofline.peak_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert roofline.peak_bandwidth("Some Future GPU") is None
    assert roofline.bandwidth_fraction(4.8e9, 1e-3, "NVIDIA H200") == pytest.approx(1.0)
    assert roofline.bandwidth_fraction(4.8e9, 1e-3, "cpu") is None


@pytest.mark.parametrize(
    "op,counts",
    [
        ("masked_patch_embed", ("vits2", (512, 3, 32, 2, 384, 64))),
        ("masked_patch_embed", ("vitb16", (128, 3, 224, 16, 768, 49))),
        ("decoder_scatter", ("vits2", (512, 64, 256, 512))),
        ("attention", ("enc", (512, 65, 6, 64))),
        ("attention", ("dec", (128, 197, 16, 32))),
        ("norm_pix_loss", ("vitb16", (128, 196, 768))),
        ("hsic", ("vitb16", (128, 3 * 224 * 224, 50 * 768))),
        ("pgd_step", ("linf", (128 * 3 * 224 * 224, "linf"))),
        ("pgd_step", ("l2", (128 * 3 * 224 * 224, "l2"))),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_each_fused_kernel_moves_fewer_bytes_than_its_reference(suite, op, counts):
    _, _, roofline = suite
    moved = getattr(roofline, f"{op}_bytes")(*counts[1])
    assert 0 < moved["kernel_bytes"] < moved["reference_bytes"], moved


def test_pgd_step_bytes_count_each_tensor_once(suite):
    _, _, roofline = suite
    assert roofline.pgd_step_bytes(1000, "linf") == {
        "kernel_bytes": 4 * 4000,  # x_adv, grad, x0 read, the result written
        "reference_bytes": 19 * 4000,
    }


def test_results_table_shows_the_bandwidth_reached(suite):
    run_gpu_suite, _, _ = suite
    bench = {
        "benchmarks": [
            {
                "group": "pgd-step-linf",
                "name": f"test_pgd_step[linf-{p}]",
                "params": {"provider": p},
                "stats": {"median": t, "min": t, "rounds": 50},
                "extra_info": {"kernel_bytes": 2.4e9, "reference_bytes": 9.6e9},
            }
            for p, t in (("torch", 4e-3), ("mimir_fast", 1e-3))
        ]
    }
    groups = run_gpu_suite.summarise(bench)
    assert groups["pgd-step-linf"]["ratio"] == 4.0
    row = run_gpu_suite.table([{"device": "NVIDIA H200", "groups": groups}]).splitlines()[2]
    assert "| 50% / 50% |" in row and "4.00x" in row
    row = run_gpu_suite.table([{"device": "mystery", "groups": groups}]).splitlines()[2]
    assert "| 4.00x |  |" in row  # unknown peak: blank


def test_results_keep_apart_what_a_group_name_leaves_out(suite):
    """benchmarks/test_pgd.py's two norms share the group "pgd-step"; PGD-10's reference is
    torchattacks."""
    run_gpu_suite, _, _ = suite

    def bench(group, provider, seconds, **params):
        stats = {"median": seconds, "min": seconds, "rounds": 5}
        name = f"test[{provider}]"
        return {"group": group, "name": name, "params": {**params, "provider": provider},
                "stats": stats, "extra_info": {}}  # fmt: skip

    groups = run_gpu_suite.summarise({"benchmarks": [
        bench("pgd-step", "torch", 4e-3, norm="linf"),
        bench("pgd-step", "mimir_fast", 1e-3, norm="linf"),
        bench("pgd-step", "torch", 2e-3, norm="l2"),
        bench("pgd-step", "mimir_fast", 4e-3, norm="l2"),
        bench("attention-enc-vitb16", "torch", 3e-3, preset="vitb16", part="enc"),
        bench("attention-enc-vitb16", "mimir_fast", 1e-3, preset="vitb16", part="enc"),
        bench("pgd10", "torchattacks", 1.5, n=64),
        bench("pgd10", "mimir_fast", 1.0, n=64),
    ]})  # fmt: skip
    assert set(groups) == {"pgd-step-linf", "pgd-step-l2", "attention-enc-vitb16", "pgd10-64"}
    assert groups["pgd-step-linf"]["ratio"] == 4.0 and groups["pgd-step-l2"]["ratio"] == 0.5
    assert groups["attention-enc-vitb16"]["ratio"] == 3.0 and groups["pgd10-64"]["ratio"] == 1.5
    rows = run_gpu_suite.table([{"device": "NVIDIA H200", "groups": groups}]).splitlines()
    assert any("| 1.50 s (torchattacks) | 1.00 s | 1.50x |" in row for row in rows)
