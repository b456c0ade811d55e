"""``mimir-fast evaluate``'s corruption options: ``--corruptions``, ``--severities`` and
``--baseline``, their flags built from :class:`CorruptionOptions`' fields (help from each
field's metadata), and the corruption-only run.

``--corruptions all`` (or ``fog:3,snow``) evaluates the model under common corruptions; without
``--attacks`` only the corruptions run (:func:`mimir_fast.evaluate_corruptions`), with it both
(:func:`mimir_fast.evaluate` with ``corruptions=``). ``--baseline`` is the baseline classifier
(a ``model.safetensors``) or the ``corruptions.json`` of its evaluation, for CE and mCE.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._config_types import option
from .errors import CLIError
from .flags import add_field_flags

__all__ = [
    "CORRUPTION_FLAGS_TITLE",
    "CorruptionOptions",
    "add_corruption_options",
    "corruption_options",
    "load_baseline",
    "option_errors",
]

CORRUPTION_FLAGS_TITLE = "corruption options (accuracy under common corruptions, CE and mCE)"
_OPTIONS = ("corruptions", "severities", "baseline")  # library errors naming these get "--"


@dataclasses.dataclass
class CorruptionOptions:
    """What ``--corruptions``, ``--severities`` and ``--baseline`` ask for."""

    corruptions: str | None = option(
        None,
        help="evaluate under common corruptions: all, or comma-separated names and "
        "name:severity (e.g. fog:3,snow); without --attacks only these run",
    )
    severities: tuple[int, ...] = option(
        (1, 2, 3, 4, 5), help="severities (1..5) of the corruptions named without one"
    )
    baseline: str | None = option(
        None,
        help="for CE and mCE: the baseline classifier (model.safetensors) or the "
        "corruptions.json of its evaluation",
    )


def add_corruption_options(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`CorruptionOptions`, as a group of their own."""
    add_field_flags(p, CorruptionOptions, CORRUPTION_FLAGS_TITLE)


def corruption_options(args: argparse.Namespace) -> CorruptionOptions:
    """The options given (flags not given keep their defaults), checked: ``--severities`` and
    ``--baseline`` need ``--corruptions``."""
    names = [f.name for f in dataclasses.fields(CorruptionOptions)]
    options = CorruptionOptions(**{k: getattr(args, k) for k in names if hasattr(args, k)})
    if options.corruptions is None:
        for name in ("severities", "baseline"):
            if hasattr(args, name):
                raise CLIError(f"--{name} applies to --corruptions: give the corruptions too")
    return options


@contextlib.contextmanager
def option_errors() -> Iterator[None]:
    """Library errors about the corruption arguments reported under their flags."""
    try:
        yield
    except ValueError as e:
        text = str(e)
        if text.startswith(_OPTIONS):
            raise CLIError(f"--{text}") from None
        raise


def load_baseline(path: str | None, device: Any) -> Any:
    """``--baseline``: None, a results file's path (``.json``) or the loaded classifier."""
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"--baseline: no file at {path!r}")
    if file.suffix.lower() == ".json":
        return file
    from ..models import MaskedViT

    try:
        return MaskedViT.load(file, map_location=device).eval()
    except ValueError as e:
        raise CLIError(f"--baseline: {e}") from None
