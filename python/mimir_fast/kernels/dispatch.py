"""The one place that decides whether an op runs its Triton kernel or its PyTorch reference.

Two questions, each answered once:

- :func:`resolve_kernels`: which path does a user's ``kernels=`` choice name? "torch" and
  "triton" are taken as given ("triton" raises where Triton cannot run). "auto" is first
  replaced by the ``MIMIR_FAST_KERNELS`` environment variable when that is set, then picks
  Triton only where the evidence table says so (:func:`_auto_picks_triton`).
- :func:`triton_runs_on`: can Triton run on this tensor? A CUDA tensor, or any tensor under the
  CPU interpreter (``TRITON_INTERPRET=1``).

:func:`use_triton` combines them for one call of an op, where the dtype is known.

The evidence table (``kernels/verified.json``, shipped with the package; written by
``benchmarks/run_gpu_suite.py``) holds, per op, GPU architecture ("sm_90") and dtype
("bfloat16"), whether the kernel passed its correctness tests on that GPU and its measured speed
against the reference. "auto" runs a kernel only where its entry is verified and faster
(speed-up > 1); everywhere else the reference. The environment variable
``MIMIR_FAST_VERIFIED_TABLE`` names another table file. Each table file is read once per
process; a call then costs a few dictionary lookups and no host synchronisation.

Nothing here imports Triton's kernels, only whether Triton is installed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .._validate import check_choice, is_real

__all__ = [
    "KERNEL_CHOICES",
    "KERNELS_ENV",
    "SDPA_PREFERRED",
    "SHIPPED_TABLE",
    "TABLE_ENV",
    "TABLE_FORMAT",
    "TRITON_OPS",
    "clear_table_cache",
    "cuda_arch",
    "describe_table",
    "dtype_name",
    "entry_picks_triton",
    "load_table",
    "resolve_kernels",
    "sdpa_preferred",
    "table_path",
    "triton_available",
    "triton_runs_on",
    "use_triton",
    "verified_table",
]

KERNEL_CHOICES = ("auto", "torch", "triton")
# Replaces the default "auto" for the whole process; an explicit kernels= argument wins over it.
KERNELS_ENV = "MIMIR_FAST_KERNELS"

# Every op with a Triton kernel (kernels/<op>.py), as named in the evidence table.
TRITON_OPS = (
    "attention",
    "masked_patch_embed",
    "decoder_scatter",
    "norm_pix_loss",
    "gaussian_gram",
    "pgd_step",
)
# The evidence table shipped with the package, its format tag, and the variable naming another.
SHIPPED_TABLE = Path(__file__).with_name("verified.json")
TABLE_FORMAT = "mimir_fast.verified/1"
TABLE_ENV = "MIMIR_FAST_VERIFIED_TABLE"

# Ops whose kernel computes in the autocast dtype while its main input stays fp32 (the images).
_AUTOCAST_OPS = frozenset({"masked_patch_embed"})

# (tokens, head_dim) shapes at which a GPU benchmark (benchmarks/test_vit_kernels.py, group
# "attention") measured ``scaled_dot_product_attention`` faster than the attention kernel, per
# device name; attention keeps SDPA there. Empty until the suite has run on that GPU (see
# benchmarks/results/); the README quotes the numbers.
SDPA_PREFERRED: dict[str, frozenset[tuple[int, int]]] = {}

# table file -> (entries by (op, arch, dtype), keys that pick Triton: (op, arch, dtype) and
# (op, arch, None) for "some dtype"); device -> "sm_XY". Filled on first use.
_TABLES: dict[str, tuple[dict[tuple[str, str, str], dict[str, Any]], frozenset]] = {}
_ARCHS: dict[str, str] = {}


def triton_available() -> bool:
    """True when Triton can run here: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1)."""
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        # Checked before importing Triton: its own @jit helpers (tl.sum, ...) are built at
        # import, for the interpreter only if TRITON_INTERPRET=1 is set by then.
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_runs_on(tensor: torch.Tensor) -> bool:
    """True when a Triton kernel can take ``tensor``: on CUDA, or anywhere under the interpreter."""
    return tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


# ------------------------------------------------------------------------------ evidence table


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name of a dtype: ``torch.bfloat16`` -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def cuda_arch(device: str | torch.device | None = None) -> str:
    """The compute capability of a CUDA device as the table writes it, e.g. "sm_90".

    Args:
        device: a CUDA device ("cuda", "cuda:1", a ``torch.device``); None: the current one.
            Asked once per device name, then cached (no host synchronisation).
    """
    key = "cuda" if device is None else str(device)
    arch = _ARCHS.get(key)
    if arch is None:
        major, minor = torch.cuda.get_device_capability(device)
        arch = _ARCHS[key] = f"sm_{major}{minor}"
    return arch


def entry_picks_triton(entry: dict[str, Any]) -> bool:
    """True for an entry whose kernel passed its tests and beat the reference (speed-up > 1)."""
    speedup = entry.get("speedup")
    return entry.get("verified") is True and speedup is not None and speedup > 1


def _checked_entry(entry: Any, where: str) -> dict[str, Any]:
    """One table entry, its fields checked; raises ValueError naming ``where``."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: each entry must be an object, got {entry!r}")
    for field in ("op", "arch", "dtype"):
        if not isinstance(entry.get(field), str):
            raise ValueError(f"{where}: entry {entry!r} needs a string {field!r}")
    if not isinstance(entry.get("verified"), bool):
        raise ValueError(f"{where}: entry {entry!r} needs 'verified': true or false")
    speedup = entry.get("speedup")
    if speedup is not None and not (is_real(speedup) and math.isfinite(speedup)):
        raise ValueError(f"{where}: entry {entry!r} needs 'speedup': a finite number or null")
    return entry


def load_table(path: str | Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Read an evidence table file: its entries by (op, arch, dtype).

    Args:
        path: a JSON file ``{"format": "mimir_fast.verified/1", "entries": [...]}``; each entry
            holds "op", "arch", "dtype", "verified" (bool), "speedup" (reference time / kernel
            time, or null) and what was measured where ("device", "date", "versions", ...).

    Raises:
        ValueError: for a missing or malformed file, naming it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the kernel evidence table {path}: {e}") from e
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise ValueError(f"{path}: not a kernel evidence table (format {TABLE_FORMAT!r})")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'entries' must be a list")
    table = {}
    for raw in entries:
        entry = _checked_entry(raw, str(path))
        table[(entry["op"], entry["arch"], entry["dtype"])] = entry
    return table


def table_path() -> Path:
    """The evidence table in use: ``MIMIR_FAST_VERIFIED_TABLE`` when set, else the shipped one."""
    return Path(os.environ.get(TABLE_ENV) or SHIPPED_TABLE)


def _current_table() -> tuple[dict[tuple[str, str, str], dict[str, Any]], frozenset]:
    """The table in use and the keys at which it picks Triton, read once per file."""
    key = os.environ.get(TABLE_ENV) or ""
    cached = _TABLES.get(key)
    if cached is None:
        if key or SHIPPED_TABLE.exists():
            table = load_table(key or SHIPPED_TABLE)
        else:  # a package without its table: no evidence, so the reference everywhere
            table = {}
        picks = {k for k, e in table.items() if entry_picks_triton(e)}
        picks |= {(op, arch, None) for op, arch, _ in picks}
        cached = _TABLES[key] = (table, frozenset(picks))
    return cached


def verified_table() -> dict[tuple[str, str, str], dict[str, Any]]:
    """The entries of the table in use (see :func:`table_path`), by (op, arch, dtype)."""
    return _current_table()[0]


def clear_table_cache() -> None:
    """Forget the tables and device architectures read so far (after rewriting a table file)."""
    _TABLES.clear()
    _ARCHS.clear()


def describe_table() -> str:
    """The table in use as lines of text (``mimir-fast info`` prints them)."""
    table = verified_table()
    head = f"{table_path()} ({len(table)} entries)"
    if not table:
        return head + ": no kernel verified, kernels='auto' runs the PyTorch reference everywhere"
    lines = [head, f"{'op':20s}{'arch':8s}{'dtype':10s}{'verified':10s}{'speed-up':10s}auto device"]
    for (op, arch, dtype), e in sorted(table.items()):
        speedup = "-" if e.get("speedup") is None else f"{e['speedup']:.2f}x"
        auto = "triton" if entry_picks_triton(e) else "torch"
        verified = "yes" if e["verified"] else "no"
        lines.append(
            f"{op:20s}{arch:8s}{dtype:10s}{verified:10s}{speedup:10s}{auto:7s}"
            f"{e.get('device', '?')} {e.get('date', '')}".rstrip()
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ choice


def _auto_picks_triton(
    triton_ops: tuple[str, ...], device: str | torch.device | None, dtype: torch.dtype | None
) -> bool:
    """What "auto" chooses for ``triton_ops`` on ``device``: a kernel the table verified faster.

    Only on CUDA (the CPU interpreter is used only when asked for), and only for an op whose
    entry at this GPU's architecture and ``dtype`` (None: at any dtype) is verified and faster.
    """
    on_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if not (on_cuda and triton_available()):
        return False
    picks = _current_table()[1]
    if not picks:
        return False
    arch = cuda_arch(device)
    key = None if dtype is None else dtype_name(dtype)
    return any((op, arch, key) in picks for op in triton_ops)


def resolve_kernels(
    choice: str,
    triton_ops: tuple[str, ...],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """Turn a user's ``kernels=`` choice into the path actually used: "torch" or "triton".

    Args:
        choice: "auto", "torch" or "triton". Only "auto" reads the ``MIMIR_FAST_KERNELS``
            environment variable (when set, its value replaces "auto"); an explicit "torch" or
            "triton" wins over it.
        triton_ops: the ops of the calling module that have Triton kernels. "auto" gives
            "triton" when the evidence table picks the kernel of at least one of them.
        device: the device the op runs on ("cuda", "cuda:0", "cpu"); None: CUDA if available.
        dtype: the dtype the op computes in; None: "auto" asks whether any dtype is picked (a
            module resolving once before it sees its inputs; each call then decides per dtype).

    Raises:
        ValueError: for an unknown choice, or "triton" where no kernel exists or Triton cannot run.
    """
    check_choice(choice, "kernels", KERNEL_CHOICES)
    if choice == "auto":
        choice = check_choice(os.environ.get(KERNELS_ENV, "auto"), KERNELS_ENV, KERNEL_CHOICES)
    if choice == "triton":
        if not triton_ops:
            raise ValueError(
                "kernels='triton' is not available: this module has no Triton kernels in this "
                "version of mimir-fast; use kernels='auto' or 'torch'"
            )
        if not triton_available():
            raise ValueError(
                "kernels='triton' is not available: Triton needs a CUDA GPU or TRITON_INTERPRET=1; "
                "use kernels='auto' or 'torch'"
            )
        return "triton"
    if choice == "torch" or not triton_ops:
        return "torch"
    return "triton" if _auto_picks_triton(triton_ops, device, dtype) else "torch"


def _call_dtype(op: str, tensor: torch.Tensor) -> torch.dtype:
    """The dtype one call of ``op`` computes in: the autocast dtype for ops that follow it."""
    if op in _AUTOCAST_OPS and torch.is_autocast_enabled(tensor.device.type):
        return torch.get_autocast_dtype(tensor.device.type)
    return tensor.dtype


def use_triton(kernels: str, op: str, tensor: torch.Tensor) -> bool:
    """Whether one call of ``op`` on ``tensor`` runs the Triton kernel.

    Args:
        kernels: the caller's choice ("auto", "torch", "triton"). "auto" is decided here for
            this op, the tensor's device and the dtype of the call (the evidence table).
        op: the op's name, as its module ``kernels/<op>.py``.
        tensor: the op's main input; Triton runs only where :func:`triton_runs_on` allows
            (elsewhere the reference runs).
    """
    if kernels == "torch":
        return False
    dtype = _call_dtype(op, tensor) if kernels == "auto" else None
    path = resolve_kernels(kernels, (op,), tensor.device, dtype)
    return path == "triton" and triton_runs_on(tensor)


def sdpa_preferred(t: int, head_dim: int, device: torch.device) -> bool:
    """True where SDPA measured faster than the attention kernel on this device.

    Consulted whenever the attention kernel would run (see ``SDPA_PREFERRED``).
    """
    if device.type != "cuda" or not SDPA_PREFERRED:
        return False
    return (t, head_dim) in SDPA_PREFERRED.get(torch.cuda.get_device_name(device), frozenset())
