"""Turn a pytest-benchmark JSON of ``test_corruptions.py`` into ``results/corruptions-cpu.json``.

Per group (image size) and corruption: the median epoch time of the numpy/PIL reference and of
the native loader, and their ratio; then the ratio over all corruptions in turn (total time
against total time), the median, the smallest and the largest ratio. Run::

    python -m pytest benchmarks/test_corruptions.py --benchmark-only \\
        --benchmark-json=/tmp/corruptions.json
    python benchmarks/summarise_corruptions.py /tmp/corruptions.json \\
        benchmarks/results/corruptions-cpu.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

__all__ = ["summarise"]


def summarise(raw: dict) -> dict:
    """The results document of one pytest-benchmark run (see the module docstring)."""
    groups: dict[str, dict] = {}
    for bench in raw["benchmarks"]:
        name, provider = bench["params"]["name"], bench["params"]["provider"]
        row = groups.setdefault(bench["group"], {}).setdefault(name, {})
        row[f"{provider}_s"] = bench["stats"]["median"]
        row["images"] = bench["extra_info"]["images"]
        if provider == "numpy":
            row["numpy_workers"] = bench["extra_info"]["num_workers"]
    out = {}
    for group, rows in sorted(groups.items()):
        missing = [n for n, r in rows.items() if "numpy_s" not in r or "mimir_fast_s" not in r]
        if missing:
            raise ValueError(f"{group}: no pair of timings for {', '.join(missing)}")
        for r in rows.values():
            r["ratio"] = r["numpy_s"] / r["mimir_fast_s"]
        # Per image, so corruptions timed on fewer images weigh the same as the others.
        per_image = [
            (r["numpy_s"] / r["images"], r["mimir_fast_s"] / r["images"]) for r in rows.values()
        ]
        ratios = [r["ratio"] for r in rows.values()]
        out[group] = {
            "per_corruption": rows,
            "all_in_turn_ratio": sum(a for a, _ in per_image) / sum(b for _, b in per_image),
            "median_ratio": statistics.median(ratios),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
        }
    info = raw.get("machine_info", {})
    return {
        "device": "cpu",
        "cores": os.cpu_count(),
        "cpu": info.get("cpu", {}).get("brand_raw"),
        "torch": __import__("torch").__version__,
        "benchmark": "benchmarks/test_corruptions.py --benchmark-only (median of 3 epochs after "
        "a warm-up; numpy provider: faster of num_workers 0 and 2)",
        "severity": 3,
        "groups": out,
    }


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: summarise_corruptions.py BENCHMARK_JSON OUT_JSON")
    doc = summarise(json.loads(Path(argv[0]).read_text()))
    out = Path(argv[1])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    for group, g in doc["groups"].items():
        turn, median = g["all_in_turn_ratio"], g["median_ratio"]
        print(f"{group}: all in turn {turn:.1f}x, median {median:.1f}x")
        for name, r in g["per_corruption"].items():
            print(f"  {name:18s} {r['ratio']:7.1f}x  (numpy workers {r['numpy_workers']})")


if __name__ == "__main__":
    main(sys.argv[1:])
