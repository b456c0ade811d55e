"""The ``mimir-fast`` commands: each reads its parsed flags and calls the library."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import training
from ..training.config import TrainConfig
from .config_file import load_config_file
from .errors import CLIError
from .evaluate_command import cmd_evaluate
from .flags import normalise_argv
from .parser import DEFAULT_METHOD, PROG, build_parser
from .train_fields import train_flags

__all__ = ["info", "main", "resolve_config"]


# ---------------------------------------------------------------------- pretrain, finetune
def resolve_config(command: str, args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a ``pretrain``/``finetune`` invocation: defaults <- file <- flags."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.setdefault("method", DEFAULT_METHOD[command])
    values.setdefault("out_dir", f"runs/{values['method']}")
    _check_method(command, values["method"])
    _check_model_overrides(values.get("model_overrides") or {})
    return TrainConfig.from_dict(values)


def _check_model_overrides(overrides: dict[str, Any]) -> None:
    from ..models import MaskedViTConfig

    known = {f.name for f in dataclasses.fields(MaskedViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CLIError(
            f"unknown model_overrides keys {unknown}; MaskedViTConfig fields: "
            f"{', '.join(sorted(known))}"
        )


def _check_method(command: str, method: str) -> None:
    from ..methods import get_method

    task = getattr(get_method(method), "task", None)  # ValueError for an unknown method
    if task in DEFAULT_METHOD and task != command:
        raise CLIError(f"method {method!r} is a {task} method; run it with '{PROG} {task}'")


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("0", "")


def _cmd_train(args: argparse.Namespace) -> int:
    config = resolve_config(args.command, args)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    result = training.train(config)
    if _is_main_process():
        metrics = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in result.final_metrics.items()
        )
        print(f"{PROG} {args.command}: method {config.method}, {result.steps} steps")
        print(f"  held-out: {metrics or '(none)'}")
        print(f"  out_dir:  {Path(result.out_dir).resolve()}")
    return 0


# ---------------------------------------------------------------------- demo, info
def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .. import demo  # lazily: the demo pulls in plotting and both training stages
    except ModuleNotFoundError as e:
        if e.name != "mimir_fast.demo":
            raise
        raise CLIError("this build of mimir-fast has no demo module (mimir_fast.demo)") from None
    kwargs: dict[str, Any] = {}
    if args.progress is not None:
        if "progress" not in inspect.signature(demo.run_demo).parameters:
            raise CLIError("this demo has no progress option")
        kwargs["progress"] = args.progress
    demo.run_demo(out_dir=args.out, quick=args.quick, **kwargs)
    return 0


def info() -> dict[str, Any]:
    """Versions, build and device information (what ``mimir-fast info`` prints)."""
    import torch

    import mimir_fast

    from .. import _native

    out: dict[str, Any] = {"mimir_fast": mimir_fast.__version__, "python": sys.version.split()[0]}
    try:
        out["native build"] = dict(_native.build_info())
    except Exception as e:  # a stale extension without build_info
        out["native build"] = f"unavailable ({type(e).__name__}: {e})"
    out["torch"] = torch.__version__
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = "not installed"
    cuda = torch.cuda.is_available()
    out["cuda available"] = cuda
    out["torch cuda"] = torch.version.cuda or "none"
    out["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    if cuda:
        out["device count"] = torch.cuda.device_count()
    try:  # where kernels="auto" runs a Triton kernel (docs/gpu.md)
        from ..kernels.dispatch import describe_table

        out["kernel table"] = describe_table()
    except ValueError as e:  # a malformed MIMIR_FAST_VERIFIED_TABLE
        out["kernel table"] = f"unavailable ({e})"
    try:
        from ..methods import METHODS
        from ..models import list_models

        out["methods"] = ", ".join(sorted(METHODS))
        out["models"] = ", ".join(list_models())
    except Exception:  # pragma: no cover - info must never fail
        pass
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    for key, value in info().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key + ':':16s}{value}")
    return 0


# ---------------------------------------------------------------------- main
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "pretrain": _cmd_train,
    "finetune": _cmd_train,
    "evaluate": cmd_evaluate,
    "demo": _cmd_demo,
    "info": _cmd_info,
}


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mimir-fast`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Configuration and data problems (``ValueError``, ``FileNotFoundError``) are printed as
    ``mimir-fast: error: MESSAGE`` with status 2 and no traceback; set ``MIMIR_FAST_DEBUG=1``
    to get the traceback instead. Argparse's own errors (and ``--help``) also return their
    status instead of raising ``SystemExit``.

    Args:
        argv: the command line after the program's name.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(normalise_argv(argv, train_flags()))
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else _error(str(e.code)))
    debug = os.environ.get("MIMIR_FAST_DEBUG", "") not in ("", "0")
    try:
        return HANDLERS[args.command](args)
    except CLIError as e:
        return _error(str(e))
    except (ValueError, FileNotFoundError) as e:
        if debug:
            raise
        return _error(str(e))
    except FloatingPointError as e:  # the loss diverged: a training outcome, not a usage error
        if debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (a training run continues with --resume auto)", file=sys.stderr)
        return 130
