"""Command-line flags from a dataclass: one flag per field, typed by its annotation.

A field ``batch_size: int`` becomes ``--batch-size INT`` (also spelled ``--batch_size``), a
``bool`` a ``--flag`` / ``--no-flag`` pair, a ``tuple[float, float]`` a flag taking two
values. The help text is the field's ``metadata["help"]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from .._config_types import (
    NONE_WORDS,
    SCALARS,
    FieldType,
    item_base,
    parse_annotation,
    parse_json_object,
    parse_scalar,
)

__all__ = [
    "add_field_flags",
    "argparse_type",
    "flag_name",
    "flag_spellings",
    "format_default",
    "help_texts",
    "normalise_argv",
]

METAVARS = {"int": "INT", "float": "FLOAT", "str": "STR", "bool": "BOOL", "dict": "JSON"}


def flag_name(field_name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def flag_spellings(cls: type) -> set[str]:
    """Every declared flag of ``cls``'s fields, ``--no-`` forms included."""
    flags = set()
    for f in dataclasses.fields(cls):
        flags.add(flag_name(f.name))
        flags.add("--no-" + f.name.replace("_", "-"))
    return flags


def help_texts(cls: type) -> dict[str, str]:
    """``{field: help}`` from each field's ``metadata["help"]`` (fields without one left out)."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if f.metadata.get("help")}


def format_default(value: Any) -> str:
    """A default value as the help text shows it (``none``, ``true``, ``0.9 0.95``, JSON)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def argparse_type(ft: FieldType) -> Callable[[str], Any]:
    """The ``type=`` callable of one flag (one command-line word -> value)."""

    def convert(text: str) -> Any:
        if ft.optional and text.strip().lower() in NONE_WORDS:
            return None
        try:
            if ft.base in SCALARS:
                return parse_scalar(ft.base, text)
            if ft.base in ("tuple", "list"):
                return parse_scalar(item_base(ft), text)
            if ft.base == "dict":
                return parse_json_object(text)
            try:  # unknown annotation: JSON if it parses, else the plain string
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = ft.base  # argparse names it in "invalid int value" messages
    return convert


def _value_arguments(ft: FieldType) -> dict[str, Any]:
    """``add_argument`` keywords that read a value of type ``ft`` (or, for a bool, a switch)."""
    if ft.base == "bool" and not ft.optional:
        return {"action": argparse.BooleanOptionalAction}
    if ft.base == "tuple" and ft.items and "..." not in ft.items:
        metavar = tuple(item_base(ft).upper() for _ in ft.items)
        return {"type": argparse_type(ft), "nargs": len(ft.items), "metavar": metavar}
    if ft.base in ("tuple", "list"):
        return {"type": argparse_type(ft), "nargs": "+", "metavar": item_base(ft).upper()}
    none = "|none" if ft.optional else ""
    return {"type": argparse_type(ft), "metavar": METAVARS.get(ft.base, "VALUE") + none}


def add_field_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    shown_defaults: dict[str, str] | None = None,
) -> None:
    """One flag per field of the dataclass ``cls``; values default to SUPPRESS, so only the flags
    given on the command line show up in the parsed namespace.

    Args:
        parser: the parser to add the flags to, as a group of their own.
        cls: the dataclass.
        title: the heading of the group in the help.
        shown_defaults: the default to show in the help of some fields, instead of the
            field's own.
    """
    group = parser.add_argument_group(title)
    shown_defaults = shown_defaults or {}
    helps = help_texts(cls)
    for f in dataclasses.fields(cls):
        shown = shown_defaults.get(f.name, format_default(_field_default(f)))
        text = helps.get(f.name, f.name.replace("_", " "))
        group.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{text} (default: {shown})".replace("%", "%%"),
            **_value_arguments(parse_annotation(f.type)),
        )


def normalise_argv(argv: Sequence[str], flags: set[str]) -> list[str]:
    """Spell ``--batch_size`` (and ``--no-foo_bar``) as the declared ``--batch-size``."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        if arg.startswith("--") and "_" in arg:
            name, eq, value = arg.partition("=")
            candidate = name.replace("_", "-")
            if candidate in flags:
                arg = candidate + eq + value
        out.append(arg)
    return out
