"""Long evaluations lose nothing: every finished batch is on disk, and a rerun resumes.

With ``out_dir``, :func:`mimir_fast.evaluate` keeps a journal in ``out_dir/batches/``:

- ``run.json``: the fingerprint of everything the results depend on (:func:`fingerprint`:
  the weights of the model and of the defense, the images and labels, every attack with its
  settings, the eps grid, norm, threat, seed, batch size, EOT, the versions and the device
  type);
- ``s{salt}-b{batch}.safetensors``: one finished batch of one attack run (salt 0: the clean
  predictions), its per-image results, each written atomically when the batch is done.

Running :func:`~mimir_fast.evaluate` again with the same arguments reads the finished batches
back instead of computing them again, so the report equals an uninterrupted run's, image by
image (every batch's random draws are seeded by its index alone); a finished run's folder just
gets its report rebuilt. A journal of other arguments is refused with :class:`ResumeMismatch`
naming what differs (never mixed in); ``resume=False`` deletes it and starts over.

Under a process group every rank journals its own batches into the same folder (the batch
index, not the rank, names a file), so a run may even resume with another number of ranks; a
mismatch found by any rank stops every rank.

``out_dir/samples.safetensors`` holds the final per-image results (:func:`write_samples`,
:func:`load_samples`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed
from .._io import atomic_save_tensors, load_tensors
from .._native import __version__
from ..attacks import Defended
from ..report.files import write_json

if TYPE_CHECKING:
    from .runner import AttackRun, AttackRunner

__all__ = [
    "JOURNAL_DIR",
    "SAMPLES_FILE",
    "Journal",
    "ResumeMismatch",
    "fingerprint",
    "load_samples",
    "open_journal",
    "write_samples",
]

JOURNAL_DIR = "batches"  # the journal's folder inside out_dir
HEADER_FILE = "run.json"
SAMPLES_FILE = "samples.safetensors"
FORMAT = 1  # the journal's layout; a journal of another layout is refused
SKIPPED = ("training", "model")  # attributes that are no setting (mode, the attacked model)


class ResumeMismatch(ValueError):
    """``out_dir`` holds the journal of an evaluation with other arguments."""


# ---------------------------------------------------------------------- the fingerprint
def _digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors: names, dtypes, shapes and bytes (on the CPU, in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)  # (numel,)
        h.update(f"{name}:{t.dtype}:{tuple(tensors[name].shape)};".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def _weights(module: Any) -> str | None:
    """Digest of a module's state dict (None for a plain callable)."""
    if not isinstance(module, torch.nn.Module):
        return None
    return _digest_tensors(module.state_dict())


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _settings(obj: Any, depth: int = 0) -> Any:
    """The JSON-able settings of an attack, objective or module: its type and public scalar
    attributes; the package's own objects inside (an ensemble's attacks, an objective) too."""
    if _scalar(obj):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_settings(v, depth) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _settings(v, depth) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _settings(dataclasses.asdict(obj), depth)
    own = type(obj).__module__.startswith("mimir_fast")
    if depth > 3 or not own or isinstance(obj, torch.nn.Module) or not hasattr(obj, "__dict__"):
        return type(obj).__name__
    out = {"type": type(obj).__name__}
    for key, value in sorted(vars(obj).items()):
        if key.startswith(("_", "last_")) or key in SKIPPED or torch.is_tensor(value):
            continue
        out[key] = _settings(value, depth + 1)
    return out


def _module_settings(module: Any) -> Any:
    """Type and scalar settings of every submodule (a plain callable: its qualified name)."""
    if not isinstance(module, torch.nn.Module):
        return getattr(module, "__qualname__", type(module).__name__)
    out = {}
    for name, sub in module.named_modules():
        values = {
            k: v for k, v in sorted(vars(sub).items()) if not k.startswith("_") and _scalar(v)
        }
        values.pop("training", None)
        config = getattr(sub, "config", None)
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            values["config"] = _settings(config)
        out[name or "."] = {"type": type(sub).__name__, **values}
    return out


def _runs(runs: list[AttackRun]) -> list[dict[str, Any]]:
    return [
        {"label": r.label, "eps": r.eps, "kind": r.kind, "settings": _settings(r.attack)}
        for r in runs
    ]


def fingerprint(
    model: Any,
    runner: AttackRunner,
    runs: list[AttackRun],
    checks: list[AttackRun],
    threat: str,
) -> dict[str, Any]:
    """Everything an evaluation's per-image results depend on, field by field (JSON-able).

    Args:
        model: the classifier passed to :func:`~mimir_fast.evaluate`.
        runner: the evaluation's runner (pipeline, what the attacks see, images, seed, ...).
        runs, checks: the requested attack runs and the sanity-check runs, in order (their
            positions give their seeds).
        threat: "white", "gray" or "black".
    """
    pipeline = runner.pipeline
    purifier = pipeline.purifier if isinstance(pipeline, Defended) else None
    defense = None
    if pipeline is not model:
        named = getattr(purifier, "__qualname__", type(purifier).__name__)  # a function's name
        defense = {"pipeline": _module_settings(pipeline), "purifier": named}
    return {
        "format": FORMAT,
        "versions": {"mimir_fast": __version__, "torch": torch.__version__},
        "device": runner.x.device.type,
        "model weights": _weights(model),
        "model": _module_settings(model),
        "defense": defense,
        "defense weights": None if purifier is None else _weights(purifier),
        "data": _digest_tensors({"images": runner.x, "labels": runner.y}),
        "threat": threat,
        "attacked": _module_settings(runner.attacked) if runner.attacked is not pipeline else None,
        "norm": runner.norm,
        "eps": sorted({r.eps for r in runs}),
        "seed": runner.seed,
        "batch_size": runner.batch_size,
        "attacks": _runs(runs),
        "sanity checks": _runs(checks),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields whose values differ (compared as canonical JSON)."""

    def text(v: Any) -> str:
        return json.dumps(v, sort_keys=True, default=str)

    return [k for k in {**old, **new} if text(old.get(k)) != text(new.get(k))]


# ---------------------------------------------------------------------- the journal
class Journal:
    """The finished batches of one evaluation in ``folder``: read back, or written as done.

    Args:
        folder: ``out_dir/batches``.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.read_back = 0  # batches found finished
        self.written = 0  # batches written by this process

    def _path(self, salt: int, start: int, batch_size: int) -> Path:
        return self.folder / f"s{salt:05d}-b{start // batch_size:06d}.safetensors"

    def read(self, salt: int, start: int, batch_size: int) -> dict[str, torch.Tensor] | None:
        """The results of the batch starting at ``start`` of the run seeded by ``salt``, or
        None when that batch is not finished (or its file unreadable: it is computed again)."""
        path = self._path(salt, start, batch_size)
        if not path.is_file():
            return None
        try:
            tensors, meta = load_tensors(path)
        except ValueError:
            return None
        if meta.get("start") != start or meta.get("salt") != salt:
            return None
        self.read_back += 1
        return tensors

    def write(
        self, salt: int, start: int, batch_size: int, results: dict[str, torch.Tensor]
    ) -> None:
        """Record one finished batch atomically (per-image tensors (B,) each)."""
        meta = {"salt": salt, "start": start}
        atomic_save_tensors(results, self._path(salt, start, batch_size), metadata=meta)
        self.written += 1

    def batch(
        self,
        salt: int,
        start: int,
        batch_size: int,
        compute: Callable[[], dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """One batch's per-image results: read back when finished, else computed and recorded."""
        found = self.read(salt, start, batch_size)
        if found is None:
            found = compute()
            self.write(salt, start, batch_size, found)
        return found


def open_journal(
    out_dir: str | Path,
    resume: bool,
    model: Any,
    runner: AttackRunner,
    runs: list[AttackRun],
    checks: list[AttackRun],
    threat: str,
) -> Journal:
    """The journal of this evaluation in ``out_dir/batches`` (made, checked or started over).

    Every rank calls it: a journal of other arguments raises :class:`ResumeMismatch` on every
    rank (naming the fields that differ); ``resume=False`` first deletes any journal there.

    Args:
        out_dir: the evaluation's report folder.
        resume: read back an earlier run's finished batches (False: start over).
        model, runner, runs, checks, threat: see :func:`fingerprint`.
    """
    folder = Path(out_dir) / JOURNAL_DIR
    ctx = runner.ctx
    if not resume:  # every rank: its folder may not be shared with the others
        shutil.rmtree(folder, ignore_errors=True)
        distributed.barrier(ctx)  # no rank reads the old journal
    prints = fingerprint(model, runner, runs, checks, threat)
    header = folder / HEADER_FILE
    problem = None
    if header.is_file():
        try:
            old = json.loads(header.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            problem = f"its {HEADER_FILE} cannot be read ({e})"
        else:
            differ = _differences(old if isinstance(old, dict) else {}, prints)
            problem = f"{', '.join(differ)} differ" if differ else None
    found = torch.tensor([0.0 if problem is None else 1.0], dtype=torch.float64)
    if float(distributed.all_reduce(ctx, found, "max")) > 0:
        raise ResumeMismatch(
            f"{folder} holds the finished batches of an evaluation with other arguments ("
            f"{problem or 'another rank found a different journal'}); pass the same arguments "
            "to resume it, another out_dir, or resume=False to delete it and start over"
        )
    if not header.is_file():  # every rank checked: write it (the same text on every rank)
        write_json(prints, header)
    distributed.barrier(ctx)
    return Journal(folder)


# ---------------------------------------------------------------------- per-image results
def write_samples(
    out_dir: str | Path,
    clean_correct: torch.Tensor,
    robust: dict[tuple[str, float], torch.Tensor],
) -> Path:
    """Write the final per-image results to ``out_dir/samples.safetensors`` atomically.

    Args:
        out_dir: the report folder.
        clean_correct: which images (N,) the pipeline classifies correctly.
        robust: (attack label, eps) -> which images (N,) stayed correct under that attack.
    """
    tensors = {"clean_correct": clean_correct.bool()}
    index = []
    for k, ((label, eps), values) in enumerate(robust.items()):
        tensors[f"robust_{k}"] = values.bool()
        index.append({"key": f"robust_{k}", "attack": label, "eps": eps})
    return atomic_save_tensors(tensors, Path(out_dir) / SAMPLES_FILE, metadata={"robust": index})


def load_samples(out_dir: str | Path) -> dict[str, Any]:
    """Read :func:`write_samples`' file: ``{"clean_correct": (N,), "robust": {(label, eps):
    (N,)}}`` (bool tensors).

    Args:
        out_dir: the report folder (or the file itself).
    """
    path = Path(out_dir)
    tensors, meta = load_tensors(path / SAMPLES_FILE if path.is_dir() else path)
    robust = {(r["attack"], r["eps"]): tensors[r["key"]] for r in meta.get("robust", [])}
    return {"clean_correct": tensors["clean_correct"], "robust": robust}
