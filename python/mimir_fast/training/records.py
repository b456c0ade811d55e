"""The run's metric records: ``metrics.jsonl`` as they come, ``metrics.csv`` at epoch ends."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .._io import atomic_write

__all__ = ["MetricLog", "read_log", "write_csv"]


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    """``records`` as a CSV table (one column per key seen), written atomically."""
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)

    atomic_write(path, write)


def read_log(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Records of an earlier run up to ``up_to_step`` (later ones are redone after a resume)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record.get("step", 0) <= up_to_step:
            records.append(record)
    return records


class MetricLog:
    """Every record of a run, in memory on each process and in ``OUT_DIR`` on the main one.

    A resumed run keeps the earlier run's records up to the step it resumes from and drops the
    later ones (they are redone).

    Args:
        out_dir: the run's folder.
        start_step: the step the run starts from (0: a fresh run).
        is_main: this process writes the files.
    """

    def __init__(self, out_dir: Path, start_step: int, is_main: bool):
        self.path = out_dir / "metrics.jsonl"
        self.csv_path = out_dir / "metrics.csv"
        self.is_main = is_main
        self.records: list[dict[str, Any]] = read_log(self.path, start_step) if start_step else []
        if is_main:
            with open(self.path, "w") as f:  # rewrite: drop records past the resumed checkpoint
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    def append(self, record: dict[str, Any]) -> None:
        """Keep ``record`` and add it to ``metrics.jsonl``."""
        self.records.append(record)
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def write_csv(self) -> None:
        """Write every record so far to ``metrics.csv`` (main process only)."""
        if self.is_main:
            write_csv(self.records, self.csv_path)
