"""Field types of configuration dataclasses: read from their annotations, checked, coerced.

One home for what both the training config and the command line need: which kind of value a
field holds (from its annotation, a string under ``from __future__ import annotations``), the
conversion of a command-line word or a config-file value to that kind, and the check that a
built config holds values of its fields' types. Flag help lives in each field's
``metadata["help"]`` (see :func:`option`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

__all__ = [
    "FALSE_WORDS",
    "NONE_WORDS",
    "SCALARS",
    "TRUE_WORDS",
    "FieldType",
    "check_field_types",
    "coerce_value",
    "field_types",
    "item_base",
    "option",
    "parse_annotation",
    "parse_json_object",
    "parse_scalar",
]

NONE_WORDS = ("none", "null")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
SCALARS = ("int", "float", "str", "bool")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field whose ``metadata["help"]`` documents it (the command line shows it).

    Args:
        default: the field's default value.
        help: one line saying what the field does.
        **kwargs: more :func:`dataclasses.field` arguments (e.g. ``default_factory``).
    """
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


@dataclasses.dataclass
class FieldType:
    """How one annotation string becomes an argparse argument and a checked value."""

    base: str  # "int", "float", "str", "bool", "tuple", "list", "dict", "any"
    optional: bool = False
    items: tuple[str, ...] = ()  # element types of tuple/list
    annotation: str = ""


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def parse_annotation(annotation: Any) -> FieldType:
    """Classify a field annotation (a string under ``from __future__ import annotations``)."""
    text = (
        annotation
        if isinstance(annotation, str)
        else getattr(annotation, "__name__", str(annotation))
    )
    text = text.replace("typing.", "").strip()
    optional = False
    if text.startswith("Optional[") and text.endswith("]"):
        text, optional = text[len("Optional[") : -1].strip(), True
    parts = _split_top(text, "|")
    if "None" in parts:
        optional = True
        parts = [p for p in parts if p != "None"]
    if len(parts) != 1:
        return FieldType("any", optional, annotation=str(annotation))
    head, _, rest = parts[0].partition("[")
    head = head.strip().lower()
    items = tuple(_split_top(rest[:-1], ",")) if rest.endswith("]") else ()
    if head in SCALARS:
        return FieldType(head, optional, annotation=str(annotation))
    if head in ("tuple", "list", "sequence"):
        return FieldType("tuple" if head == "tuple" else "list", optional, items, str(annotation))
    if head in ("dict", "mapping"):
        return FieldType("dict", optional, items, str(annotation))
    return FieldType("any", optional, annotation=str(annotation))


def field_types(cls: type) -> dict[str, FieldType]:
    """``{field name: FieldType}`` of a dataclass."""
    return {f.name: parse_annotation(f.type) for f in dataclasses.fields(cls)}


def parse_scalar(base: str, text: str) -> Any:
    """One command-line word as an int, float, bool or str (``base``)."""
    if base == "int":
        return int(text)
    if base == "float":
        return float(text)
    if base == "bool":
        low = text.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return text


def parse_json_object(text: str) -> dict[str, Any]:
    """A JSON object such as ``'{"depth": 4}'`` as a dict."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object such as '{{\"depth\": 4}}', got {text!r}")
    return value


def item_base(ft: FieldType) -> str:
    """The scalar kind of a tuple's or list's items ("str" unless they all share one)."""
    bases = {i.strip() for i in ft.items if i.strip() != "..."}
    return bases.pop() if len(bases) == 1 and next(iter(bases)) in SCALARS else "str"


def _coerce_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value)
    raise ValueError


def _coerce_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float, str)):  # YAML 1.1 reads 1e-4 (no dot) as a string
        return float(value)
    raise ValueError


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError


def _coerce_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError


# each scalar kind: its converter and the words of the error when the value does not convert
_SCALAR_COERCIONS = {
    "int": (_coerce_int, "an integer"),
    "float": (_coerce_float, "a number"),
    "bool": (_coerce_bool, "true or false"),
    "str": (_coerce_str, "a string"),
}


def coerce_value(name: str, value: Any, ft: FieldType) -> Any:
    """Check (and where unambiguous, convert) a config-file value for field ``name``.

    Args:
        name: the field's name, for the error message.
        value: the value as the file gave it.
        ft: the field's type.

    Raises:
        ValueError: the value cannot be a ``ft``.
    """

    def bad(expected: str) -> ValueError:
        return ValueError(f"{name} must be {expected}, got {value!r}")

    if value is None or (
        isinstance(value, str) and ft.optional and value.strip().lower() in NONE_WORDS
    ):
        if ft.optional or ft.base == "any":
            return None
        raise bad(f"a{'n' if ft.base == 'int' else ''} {ft.base} (not null)")
    if ft.base in _SCALAR_COERCIONS:
        convert, expected = _SCALAR_COERCIONS[ft.base]
        try:
            return convert(value)
        except ValueError:
            raise bad(expected) from None
    if ft.base in ("tuple", "list"):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        fixed = [i for i in ft.items if i.strip() != "..."]
        if ft.base == "tuple" and "..." not in ft.items and fixed and len(value) != len(fixed):
            raise bad(f"a list of {len(fixed)} values")
        out = [coerce_value(name, v, FieldType(item_base(ft))) for v in value]
        return tuple(out) if ft.base == "tuple" else out
    if ft.base == "dict":
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            return parse_json_object(value)
        raise bad("a table/object")
    return value


# the Python types a field of each kind accepts (ints count as floats)
_ACCEPTED = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "dict": (dict,),
    "tuple": (tuple, list),
}


def _holds_its_type(value: Any, ft: FieldType) -> bool:
    if isinstance(value, bool) and ft.base != "bool":
        return False
    if not isinstance(value, _ACCEPTED[ft.base]):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if ft.base == "tuple":  # numbers, as many as the annotation names
        return len(value) == len(ft.items) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
    return True


def check_field_types(config: Any) -> None:
    """Every field of the dataclass ``config`` holds a value of its annotated type.

    Ints are accepted for floats, and lists for tuples (JSON and TOML give lists); NaN and
    infinities are refused.

    Raises:
        ValueError: "invalid CLASSNAME: FIELD must be TYPE, got VALUE; ..." for every bad field.
    """
    problems = []
    for f in dataclasses.fields(config):
        value, ft = getattr(config, f.name), parse_annotation(f.type)
        if ft.base not in _ACCEPTED or (value is None and ft.optional):
            continue
        if not _holds_its_type(value, ft):
            problems.append(f"{f.name} must be {str(f.type).replace('|', 'or')}, got {value!r}")
    if problems:
        raise ValueError(f"invalid {type(config).__name__}: " + "; ".join(problems))
