"""The ``mimir-fast`` command line (also ``python -m mimir_fast`` and ``torchrun -m mimir_fast``).

Subcommands:

- ``mimir-fast pretrain [--config FILE] [--flags...]``: self-supervised pretraining (method
  "mae" unless ``--method`` or the config file says otherwise).
- ``mimir-fast finetune [--config FILE] [--flags...]``: supervised finetuning (method
  "finetune" by default).
- ``mimir-fast evaluate MODEL [--attacks ...] [--eps ...]``: robust accuracy under attacks;
  under ``torchrun`` the processes split the images and rank 0 writes the report.
- ``mimir-fast demo [--out DIR] [--quick]``: the end-to-end demo.
- ``mimir-fast info``: versions, build and device.

Every :class:`~mimir_fast.TrainConfig` field is a flag (``batch_size`` -> ``--batch-size``,
also spelled ``--batch_size``), generated from the dataclass: its type comes from the field's
annotation and its help text from the field's trailing comment in ``train.py``. Values are
resolved as: TrainConfig defaults <- config file (TOML, JSON or YAML; flat keys or a
``[train]`` table) <- flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import json
import os
import sys
import textwrap
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROG = "mimir-fast"
CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")


class CLIError(Exception):
    """A problem with the command line or a config file: reported as ``mimir-fast: error: ...``."""


# ---------------------------------------------------------------------- TrainConfig introspection
def _train_config_cls() -> type:
    from .train import TrainConfig

    return TrainConfig


@functools.lru_cache(maxsize=None)
def field_comments(cls: type | None = None) -> dict[str, str]:
    """``{field: trailing comment}`` of a dataclass's ``name: type = default  # comment`` lines.

    Read from the class's source with :mod:`tokenize`; fields without a comment are left out,
    and an unavailable source (e.g. a frozen build) gives ``{}``.
    """
    cls = cls or _train_config_cls()
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    line_tokens: list[tokenize.TokenInfo] = []
    depth = 0  # bracket nesting: a field's default may span lines

    def finish(tokens: list[tokenize.TokenInfo]) -> None:
        significant = [
            t
            for t in tokens
            if t.type
            not in (
                tokenize.NL,
                tokenize.NEWLINE,
                tokenize.INDENT,
                tokenize.DEDENT,
                tokenize.COMMENT,
            )
        ]
        found = [t for t in tokens if t.type == tokenize.COMMENT]
        if (
            len(significant) >= 2
            and significant[0].type == tokenize.NAME
            and significant[0].string in names
            and significant[1].string == ":"
            and found
            and significant[0].start[1] > 0
        ):
            text = found[-1].string.lstrip("#").strip()
            if text:
                comments.setdefault(significant[0].string, text)

    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            line_tokens.append(tok)
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            elif tok.type in (tokenize.NEWLINE, tokenize.NL) and depth == 0:
                finish(line_tokens)
                line_tokens = []
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return comments


@dataclasses.dataclass
class _FlagType:
    """How one annotation string becomes an argparse argument and a checked value."""

    base: str  # "int", "float", "str", "bool", "tuple", "list", "dict", "any"
    optional: bool = False
    items: tuple[str, ...] = ()  # element types of tuple/list
    annotation: str = ""


def _split_top(text: str, sep: str) -> list[str]:
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


def parse_annotation(annotation: Any) -> _FlagType:
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
    parts = [p for p in _split_top(text, "|")]
    if "None" in parts:
        optional = True
        parts = [p for p in parts if p != "None"]
    if len(parts) != 1:
        return _FlagType("any", optional, annotation=str(annotation))
    core = parts[0]
    head, _, rest = core.partition("[")
    head = head.strip().lower()
    items = tuple(_split_top(rest[:-1], ",")) if rest.endswith("]") else ()
    if head in ("int", "float", "str", "bool"):
        return _FlagType(head, optional, annotation=str(annotation))
    if head in ("tuple", "list", "sequence"):
        return _FlagType("tuple" if head == "tuple" else "list", optional, items, str(annotation))
    if head in ("dict", "mapping"):
        return _FlagType("dict", optional, items, str(annotation))
    return _FlagType("any", optional, annotation=str(annotation))


_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def _scalar(base: str, text: str) -> Any:
    if base == "int":
        return int(text)
    if base == "float":
        return float(text)
    if base == "bool":
        low = text.strip().lower()
        if low in _TRUE_WORDS:
            return True
        if low in _FALSE_WORDS:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return text


def _parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object such as '{{\"depth\": 4}}', got {text!r}")
    return value


def _item_base(ft: _FlagType) -> str:
    bases = {i.strip() for i in ft.items if i.strip() != "..."}
    return (
        bases.pop()
        if len(bases) == 1 and next(iter(bases)) in ("int", "float", "str", "bool")
        else "str"
    )


def _argparse_type(ft: _FlagType) -> Callable[[str], Any]:
    """The ``type=`` callable of one flag (one command-line word -> value)."""

    def convert(text: str) -> Any:
        if ft.optional and text.strip().lower() in _NONE_WORDS:
            return None
        try:
            if ft.base in ("int", "float", "str", "bool"):
                return _scalar(ft.base, text)
            if ft.base in ("tuple", "list"):
                return _scalar(_item_base(ft), text)
            if ft.base == "dict":
                return _parse_json_object(text)
            try:  # unknown annotation: JSON if it parses, else the plain string
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = ft.base  # argparse names it in "invalid int value" messages
    return convert


def coerce_value(name: str, value: Any, ft: _FlagType) -> Any:
    """Check (and where unambiguous, convert) a config-file value for field ``name``.

    Raises:
        ValueError: the value cannot be a ``ft``.
    """

    def bad(expected: str) -> ValueError:
        return ValueError(f"{name} must be {expected}, got {value!r}")

    if value is None or (
        isinstance(value, str) and ft.optional and value.strip().lower() in _NONE_WORDS
    ):
        if ft.optional or ft.base == "any":
            return None
        raise bad(f"a{'n' if ft.base == 'int' else ''} {ft.base} (not null)")
    if ft.base == "int":
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad("an integer") from None
        raise bad("an integer")
    if ft.base == "float":
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        raise bad("a number")
    if ft.base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise bad("true or false")
    if ft.base == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if ft.base in ("tuple", "list"):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        item = _item_base(ft)
        fixed = [i for i in ft.items if i.strip() != "..."]
        if ft.base == "tuple" and "..." not in ft.items and fixed and len(value) != len(fixed):
            raise bad(f"a list of {len(fixed)} values")
        sub = _FlagType(item)
        out = [coerce_value(name, v, sub) for v in value]
        return tuple(out) if ft.base == "tuple" else out
    if ft.base == "dict":
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            return _parse_json_object(value)
        raise bad("a table/object")
    return value


def _flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _format_default(value: Any) -> str:
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
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def field_types() -> dict[str, _FlagType]:
    return {f.name: parse_annotation(f.type) for f in dataclasses.fields(_train_config_cls())}


def _add_field_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per TrainConfig field; values default to SUPPRESS so only given flags show up."""
    comments = field_comments()
    group = parser.add_argument_group(
        "training options (TrainConfig fields; also spelled with underscores, e.g. --batch_size)"
    )
    for f in dataclasses.fields(_train_config_cls()):
        ft = parse_annotation(f.type)
        default = _field_default(f)
        if f.name == "method":
            default = _DEFAULT_METHOD[command]
        comment = comments.get(f.name, f.name.replace("_", " "))
        if f.name == "out_dir":
            shown = "runs/METHOD"
        else:
            shown = _format_default(default)
        help_text = f"{comment} (default: {shown})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        none = "|none" if ft.optional else ""
        if ft.base == "bool" and not ft.optional:
            parser_args = [_flag_name(f.name)]
            kwargs["action"] = argparse.BooleanOptionalAction
        elif ft.base == "tuple" and ft.items and "..." not in ft.items:
            parser_args = [_flag_name(f.name)]
            kwargs.update(
                type=_argparse_type(ft),
                nargs=len(ft.items),
                metavar=tuple(_item_base(ft).upper() for _ in ft.items),
            )
        elif ft.base in ("tuple", "list"):
            parser_args = [_flag_name(f.name)]
            kwargs.update(type=_argparse_type(ft), nargs="+", metavar=_item_base(ft).upper())
        else:
            parser_args = [_flag_name(f.name)]
            metavar = {"int": "INT", "float": "FLOAT", "str": "STR", "bool": "BOOL", "dict": "JSON"}
            kwargs.update(type=_argparse_type(ft), metavar=metavar.get(ft.base, "VALUE") + none)
        group.add_argument(*parser_args, **kwargs)


_DEFAULT_METHOD = {"pretrain": "mae", "finetune": "finetune"}


# ---------------------------------------------------------------------- config files
def _read_config_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise CLIError(
            f"config file {path}: unsupported format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(CONFIG_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on Python 3.10 only
            import tomli as tomllib
        try:
            with open(path, "rb") as f:
                return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise CLIError(f"config file {path} is not valid TOML: {e}") from None
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"config file {path} is not valid JSON: {e}") from None
    try:
        import yaml
    except ImportError:
        raise CLIError(
            f"config file {path}: reading YAML needs PyYAML; pip install pyyaml "
            "(or use a .toml or .json config)"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CLIError(f"config file {path} is not valid YAML: {e}") from None
    return {} if data is None else data


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """TrainConfig values from a ``.toml``, ``.json`` or ``.yaml``/``.yml`` file.

    The file holds either TrainConfig fields as top-level keys, or the same keys under a
    ``train`` table (``[train]`` in TOML). Keys may use ``-`` or ``_``. Values are checked
    against the fields' types (strings such as YAML's ``1e-4`` are converted).

    Raises:
        FileNotFoundError: no file at ``path``.
        CLIError: unreadable file, unknown keys or values of the wrong type.
    """
    path = Path(path)
    data = _read_config_file(path)
    if not isinstance(data, dict):
        raise CLIError(
            f"config file {path} must hold a table/mapping of TrainConfig fields, "
            f"got {type(data).__name__}"
        )
    types = field_types()
    if "train" in data and "train" not in types:
        rest = sorted(str(k) for k in data if k != "train")
        if rest:
            raise CLIError(
                f"config file {path}: unknown top-level keys {rest}; with a [train] table "
                "every setting goes inside it"
            )
        data = data["train"]
        if not isinstance(data, dict):
            raise CLIError(f"config file {path}: 'train' must be a table/mapping")
    values: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in types:
            unknown.append(str(key))
            continue
        try:
            values[name] = coerce_value(name, value, types[name])
        except ValueError as e:
            raise CLIError(f"config file {path}: {e}") from None
    if unknown:
        raise CLIError(
            f"config file {path}: unknown keys {sorted(unknown)}; known TrainConfig fields: "
            f"{', '.join(sorted(types))}"
        )
    return values


# ---------------------------------------------------------------------- parser
def _normalise_argv(argv: Sequence[str], flags: set[str]) -> list[str]:
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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    """The ``mimir-fast`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        description="mimir-fast: robust masked image modeling on Vision Transformers.",
        epilog="Run 'mimir-fast COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command, summary in (
        ("pretrain", "self-supervised pretraining (MAE by default)"),
        ("finetune", "supervised finetuning of a (pretrained) MaskedViT"),
    ):
        p = sub.add_parser(
            command,
            help=summary,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,
            description=f"{summary[0].upper()}{summary[1:]}.\n\nSettings are resolved as TrainConfig "
            "defaults <- --config FILE <- the flags given here.",
            epilog="Config files (.toml, .json, .yaml) hold TrainConfig fields as top-level keys or "
            "under a [train] table, e.g.\n  [train]\n  epochs = 20\n  batch_size = 128\n"
            "  model_overrides = { depth = 6 }",
        )
        p.add_argument(
            "--config",
            metavar="FILE",
            help="TOML, JSON or YAML file of TrainConfig values (flags given here override it)",
        )
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="print the resolved TrainConfig as JSON and exit without training",
        )
        _add_field_flags(p, command)
        p.set_defaults(handler=_cmd_train)
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo (pretrain, finetune, report)",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        description="Run the end-to-end demo: pretrain, finetune and write a report.",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="mimir-fast-demo",
        help="folder for the demo's runs, figures and report (default: mimir-fast-demo)",
    )
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo (for a smoke test)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: the demo's own choice)",
    )
    p.set_defaults(handler=_cmd_demo)
    p = sub.add_parser(
        "evaluate",
        help="robust accuracy of a trained classifier under attacks",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        description="Evaluate a MaskedViT classifier: clean and robust accuracy per attack and eps, "
        "with gradient-masking checks; writes evaluation.json, evaluation.md and "
        "robust_accuracy_vs_eps.png.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="a MaskedViT file (model.safetensors) or a run's checkpoint"
    )
    p.add_argument(
        "--data", default="digits", help="dataset spec, as for training (default: digits)"
    )
    p.add_argument("--split", default="test", help="which split to evaluate (default: test)")
    p.add_argument(
        "--attacks",
        default="pgd,autoattack",
        help="comma-separated: fgsm, pgd, mifgsm, apgd, apgd-dlr, apgd-t, square, autoattack, mim",
    )
    p.add_argument(
        "--eps",
        default="2/255,4/255,8/255",
        help="comma-separated radii; fractions like 8/255 allowed",
    )
    p.add_argument(
        "--norm", choices=("linf", "l2"), default="linf", help="threat model (default: linf)"
    )
    p.add_argument("--steps", type=int, default=None, help="override the attacks' iteration counts")
    p.add_argument(
        "--n-queries", type=int, default=None, help="Square's query budget (default 5000)"
    )
    p.add_argument(
        "--threat",
        choices=("white", "gray", "black"),
        default="white",
        help="white-box, gray-box (classifier only) or black-box (default: white)",
    )
    p.add_argument(
        "--batch-size", type=int, default=128, help="images per attack batch (default: 128)"
    )
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument(
        "--kernels",
        choices=("auto", "torch", "triton"),
        default="auto",
        help="projected-step fast path (default: auto = Triton on CUDA)",
    )
    p.add_argument(
        "--no-sanity-checks",
        dest="sanity_checks",
        action="store_false",
        help="skip the gradient-masking checks",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="mimir-fast-eval",
        help="report folder (default: mimir-fast-eval)",
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars"
    )
    p.set_defaults(handler=_cmd_evaluate)
    p = sub.add_parser(
        "info",
        help="print versions, build and device information",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        description="Print versions, build and device information.",
    )
    p.set_defaults(handler=_cmd_info)
    return parser


def _train_flags() -> set[str]:
    flags = set()
    for f in dataclasses.fields(_train_config_cls()):
        flags.add(_flag_name(f.name))
        flags.add("--no-" + f.name.replace("_", "-"))
    return flags | {"--dry-run"}


def resolve_config(command: str, args: argparse.Namespace) -> Any:
    """The TrainConfig of a ``pretrain``/``finetune`` invocation: defaults <- file <- flags."""
    TrainConfig = _train_config_cls()
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.setdefault("method", _DEFAULT_METHOD[command])
    values.setdefault("out_dir", f"runs/{values['method']}")
    _check_method(command, values["method"])
    _check_model_overrides(values.get("model_overrides") or {})
    return TrainConfig.from_dict(values)


def _check_model_overrides(overrides: dict[str, Any]) -> None:
    from .models import MaskedViTConfig

    known = {f.name for f in dataclasses.fields(MaskedViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CLIError(
            f"unknown model_overrides keys {unknown}; MaskedViTConfig fields: {', '.join(sorted(known))}"
        )


def _check_method(command: str, method: str) -> None:
    from .methods import get_method

    task = getattr(get_method(method), "task", None)  # ValueError for an unknown method
    if task in _DEFAULT_METHOD and task != command:
        raise CLIError(f"method {method!r} is a {task} method; run it with '{PROG} {task}'")


# ---------------------------------------------------------------------- commands
def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("0", "")


def _cmd_train(args: argparse.Namespace) -> int:
    config = resolve_config(args.command, args)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from .train import train

    result = train(config)
    if _is_main_process():
        metrics = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in result.final_metrics.items()
        )
        print(f"{PROG} {args.command}: method {config.method}, {result.steps} steps")
        print(f"  held-out: {metrics or '(none)'}")
        print(f"  out_dir:  {Path(result.out_dir).resolve()}")
    return 0


def _parse_eps(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        num, _, den = part.strip().partition("/")
        try:
            values.append(float(num) / (float(den) if den else 1.0))
        except (ValueError, ZeroDivisionError):
            raise CLIError(
                f"--eps: cannot read {part!r}; use numbers or fractions like 8/255"
            ) from None
    return values


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import distributed
    from .train import _resolve_device

    # under torchrun every process evaluates its share of the images; rank 0 writes the report
    ctx, device = distributed.setup(_resolve_device(args.device))
    try:
        _evaluate_on(args, device)
    finally:
        distributed.teardown(ctx)
    if ctx.is_main:
        print((Path(args.out) / "evaluation.md").read_text())
    return 0  # gradient-masking warnings are part of the printed report


def _evaluate_on(args: argparse.Namespace, device: Any) -> None:
    from .data import build_dataset
    from .evaluate import evaluate
    from .models import MaskedViT

    model = MaskedViT.load(args.model, map_location=device)
    data = build_dataset(args.data, args.split, image_size=model.config.img_size)
    specs = []
    for name in (a.strip() for a in args.attacks.split(",") if a.strip()):
        spec: dict[str, Any] = {"name": name}
        if args.steps is not None and name not in ("fgsm", "square"):
            spec["steps"] = args.steps
        if args.n_queries is not None and name in ("square", "autoattack"):
            spec["n_queries"] = args.n_queries
        specs.append(spec)
    evaluate(
        model,
        data,
        attacks=specs,
        eps=_parse_eps(args.eps),
        threat=args.threat,
        batch_size=args.batch_size,
        max_images=args.max_images,
        out_dir=args.out,
        seed=args.seed,
        progress=args.progress,
        norm=args.norm,
        sanity_checks=args.sanity_checks,
        kernels=args.kernels,
        device=device,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from . import demo  # lazily: the demo pulls in plotting and both training stages
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.demo":
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

    from . import _native

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
    try:
        from .methods import METHODS
        from .models import list_models

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


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mimir-fast`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Configuration and data problems (``ValueError``, ``FileNotFoundError``) are printed as
    ``mimir-fast: error: MESSAGE`` with status 2 and no traceback; set ``MIMIR_FAST_DEBUG=1``
    to get the traceback instead. Argparse's own errors (and ``--help``) also return their
    status instead of raising ``SystemExit``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(_normalise_argv(argv, _train_flags()))
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else _error(str(e.code)))
    debug = os.environ.get("MIMIR_FAST_DEBUG", "") not in ("", "0")
    try:
        return args.handler(args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
