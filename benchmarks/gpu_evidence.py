"""From one GPU run's test outcomes and benchmark groups to the kernel evidence table.

``run_gpu_suite.py`` calls these; the table format is the one
:func:`mimir_fast.kernels.dispatch.load_table` reads (``kernels/verified.json``):

- **verified** (per op, architecture, dtype): the op's ``requires_cuda`` correctness tests at
  that dtype ran on this GPU, at least one of them, and every one passed, as did those of the
  op that name no dtype. A test belongs to the ops its name names (else its file's name:
  :data:`TEST_OPS`); its dtype is the one its id names ("fp32", "bf16", ...), else the op's only
  kernel dtype (:data:`DEFAULT_DTYPES`). A correctness phase cut short verifies nothing.
- **speedup**: the smallest reference / kernel time ratio over the op's benchmark groups at
  that dtype (each kernel benchmark records its ``op`` and ``dtype``), so a kernel counts as
  faster only where it won at every measured shape; null when a benchmark of the op failed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DTYPES",
    "OUTCOME_LINE",
    "TEST_OPS",
    "benchmark_evidence",
    "evidence_table",
    "merge_tables",
    "ops_of",
    "parse_outcomes",
    "correctness_evidence",
]

FORMAT = "mimir_fast.verified/1"
MASKED_VIT_OPS = ("masked_patch_embed", "decoder_scatter", "attention", "norm_pix_loss")
# (pattern searched in a test's name, then in its file's name) -> the ops it checks
TEST_OPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"attention", ("attention",)),
    (r"gram|hsic", ("gaussian_gram",)),
    (r"pgd_step", ("pgd_step",)),
    (r"patch_embed", ("masked_patch_embed",)),
    (r"decoder_scatter", ("decoder_scatter",)),
    (r"norm_pix", ("norm_pix_loss",)),
    (r"switch|masked_vit", MASKED_VIT_OPS),
)
# ops whose kernel computes in one dtype only, for tests whose id names none
DEFAULT_DTYPES = {"gaussian_gram": "float32", "pgd_step": "float32"}
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_DTYPE = re.compile(r"(?<![a-z0-9])(fp32|float32|bf16|bfloat16|fp16|float16)(?![a-z0-9])")
# one line of ``pytest -v``: "tests/test_x.py::test_y[id] PASSED [ 10%]"
OUTCOME_LINE = re.compile(r"^(\S+\.py::.+?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_outcomes(log: str) -> dict[str, str]:
    """{node id: "passed" | "failed" | "skipped"} from a ``pytest -v`` log (an xfail counts as
    skipped; an error or an unexpected pass as failed)."""
    outcomes: dict[str, str] = {}
    for line in log.splitlines():
        match = OUTCOME_LINE.match(line.strip())
        if match:
            node, word = match.groups()
            if word in ("PASSED",):
                outcome = "passed"
            elif word in ("SKIPPED", "XFAIL"):
                outcome = "skipped"
            else:
                outcome = "failed"
            if outcomes.get(node) != "failed":  # a teardown error after a pass still fails
                outcomes[node] = outcome
    return outcomes


def ops_of(node: str) -> tuple[str, ...]:
    """The ops a test or benchmark checks: those its function name names, else its file's."""
    path, _, rest = node.partition("::")
    name = rest.split("[", 1)[0]
    for text in (name, Path(path).stem):
        for pattern, ops in TEST_OPS:
            if re.search(pattern, text):
                return ops
    return ()


def _dtype_of(node: str) -> str | None:
    match = _DTYPE.search(node.partition("::")[2].lower())
    return None if match is None else _DTYPES.get(match.group(1), match.group(1))


def correctness_evidence(outcomes: dict[str, str]) -> dict[tuple[str, str | None], dict[str, int]]:
    """{(op, dtype or None): {"passed": n, "failed": n}} over the tests that ran (not skipped)."""
    counts: dict[tuple[str, str | None], dict[str, int]] = {}
    for node, outcome in outcomes.items():
        if outcome == "skipped":
            continue
        for op in ops_of(node):
            key = (op, _dtype_of(node) or DEFAULT_DTYPES.get(op))
            counts.setdefault(key, {"passed": 0, "failed": 0})[outcome] += 1
    return counts


def benchmark_evidence(
    groups: dict[str, dict], outcomes: dict[str, str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """{(op, dtype): {"speedup": min ratio or None, "benchmarks": {group: ratio}}}.

    Args:
        groups: ``run_gpu_suite.summarise`` output (per group: providers' extra_info, "ratio").
        outcomes: the benchmark phase's outcomes; an op with a failed benchmark gets no speedup.
    """
    failed_ops = {op for node, o in outcomes.items() if o == "failed" for op in ops_of(node)}
    evidence: dict[tuple[str, str], dict[str, Any]] = {}
    for name, group in groups.items():
        info = next(iter(group["providers"].values()), {})
        if "op" not in info or "dtype" not in info:
            continue
        entry = evidence.setdefault((info["op"], info["dtype"]), {"benchmarks": {}})
        entry["benchmarks"][name] = group.get("ratio")
    for (op, _), entry in evidence.items():
        ratios = list(entry["benchmarks"].values())
        ok = op not in failed_ops and ratios and None not in ratios
        entry["speedup"] = min(ratios) if ok else None
    return evidence


def evidence_table(
    tests: dict[tuple[str, str | None], dict[str, int]],
    benchmarks: dict[tuple[str, str], dict[str, Any]],
    about_run: dict[str, Any],
    tests_complete: bool,
) -> dict[str, Any]:
    """The evidence table of one run: an entry per (op, dtype) with a test or a benchmark.

    Args:
        tests: :func:`correctness_evidence`. benchmarks: :func:`benchmark_evidence`.
        about_run: "arch", "device", "date", "versions" of the run (copied into each entry).
        tests_complete: whether the correctness phase ran to its end (else nothing is verified).
    """
    keys = {k for k in tests if k[1] is not None} | set(benchmarks)
    entries = []
    for op, dtype in sorted(keys):
        here = tests.get((op, dtype), {"passed": 0, "failed": 0})
        undated = tests.get((op, None), {"passed": 0, "failed": 0})
        verified = tests_complete and here["passed"] > 0 and here["failed"] + undated["failed"] == 0
        bench = benchmarks.get((op, dtype), {"speedup": None, "benchmarks": {}})
        entries.append(
            {
                "op": op,
                "arch": about_run["arch"],
                "dtype": dtype,
                "verified": verified,
                "speedup": bench["speedup"],
                "device": about_run["device"],
                "date": about_run["date"],
                "versions": about_run["versions"],
                "tests": {"passed": here["passed"], "failed": here["failed"] + undated["failed"]},
                "benchmarks": bench["benchmarks"],
            }
        )
    return {"format": FORMAT, "entries": entries}


def merge_tables(run_table: Path, into: Path) -> int:
    """Put a run's entries into a table file, replacing those of the same (op, arch, dtype).

    Returns the number of entries written from ``run_table``.
    """
    run = json.loads(run_table.read_text())
    target = json.loads(into.read_text()) if into.exists() else {"format": FORMAT, "entries": []}
    for table, path in ((run, run_table), (target, into)):
        if table.get("format") != FORMAT:
            raise ValueError(f"{path}: not a kernel evidence table (format {FORMAT!r})")
    merged = {(e["op"], e["arch"], e["dtype"]): e for e in target["entries"]}
    merged.update({(e["op"], e["arch"], e["dtype"]): e for e in run["entries"]})
    target["entries"] = [merged[k] for k in sorted(merged)]
    into.write_text(json.dumps(target, indent=2) + "\n")
    return len(run["entries"])
