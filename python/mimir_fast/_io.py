"""Atomic, code-free file writing and reading of tensors (safetensors + JSON metadata)."""

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["atomic_save_tensors", "atomic_write", "load_tensors"]


def _temp_prefix(path: Path) -> str:
    """``.NAME.HOST.PID.``: temp files name their writer, so a dead writer's can be removed."""
    return f".{path.name}.{socket.gethostname()}.{os.getpid()}."


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files of ``path`` left by writers on this host that no longer run (a process
    killed while writing); other hosts' files and live writers' files are left alone."""
    head, host = f".{path.name}.", socket.gethostname()
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        writer_host, _, rest = name[len(head) : -len(".tmp")].rpartition(".")[0].rpartition(".")
        if writer_host != host or not rest.isdigit() or int(rest) == os.getpid():
            continue
        try:
            os.kill(int(rest), 0)
        except ProcessLookupError:  # the writer is gone: its file can never be completed
            (path.parent / name).unlink(missing_ok=True)
        except OSError:  # alive but not ours (PermissionError), or unknown: keep it
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it onto ``path``.

    A reader never sees a half-written file: either the old file or the complete new one.
    Temp files of ``path`` left by a writer that was killed are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` to a safetensors file atomically; ``metadata`` values stored as JSON."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_tensors(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by :func:`atomic_save_tensors`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable safetensors file, or its metadata is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers/data
        raise ValueError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e})"
        ) from e
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} has corrupt metadata: {e}") from e
    return tensors, meta
