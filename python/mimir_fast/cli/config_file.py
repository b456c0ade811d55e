"""Training settings from a TOML, JSON or YAML file (``mimir-fast pretrain --config FILE``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .._config_types import FieldType, coerce_value
from .errors import CLIError
from .train_fields import field_types

__all__ = ["CONFIG_SUFFIXES", "load_config_file", "read_config_file"]

CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")


def _read_toml(path: Path) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CLIError(f"config file {path} is not valid TOML: {e}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CLIError(f"config file {path} is not valid JSON: {e}") from None


def _read_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise CLIError(
            f"config file {path}: reading YAML needs PyYAML; pip install pyyaml "
            "(or use a .toml or .json config)"
        ) from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CLIError(f"config file {path} is not valid YAML: {e}") from None
    return {} if data is None else data


def read_config_file(path: Path) -> Any:
    """The parsed content of a ``.toml``, ``.json`` or ``.yaml``/``.yml`` file.

    Raises:
        FileNotFoundError: no file at ``path``.
        CLIError: another format, or a file that does not parse.
    """
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise CLIError(
            f"config file {path}: unsupported format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(CONFIG_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if suffix == ".toml":
        return _read_toml(path)
    if suffix == ".json":
        return _read_json(path)
    return _read_yaml(path)


def _settings_table(path: Path, data: Any, known: dict[str, FieldType]) -> dict[Any, Any]:
    """The file's mapping of settings: the whole file, or its ``train`` table."""
    if not isinstance(data, dict):
        raise CLIError(
            f"config file {path} must hold a table/mapping of TrainConfig fields, "
            f"got {type(data).__name__}"
        )
    if "train" in data and "train" not in known:
        rest = sorted(str(k) for k in data if k != "train")
        if rest:
            raise CLIError(
                f"config file {path}: unknown top-level keys {rest}; with a [train] table "
                "every setting goes inside it"
            )
        data = data["train"]
        if not isinstance(data, dict):
            raise CLIError(f"config file {path}: 'train' must be a table/mapping")
    return data


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """TrainConfig values from a ``.toml``, ``.json`` or ``.yaml``/``.yml`` file.

    The file holds either TrainConfig fields as top-level keys, or the same keys under a
    ``train`` table (``[train]`` in TOML). Keys may use ``-`` or ``_``. Values are checked
    against the fields' types (strings such as YAML's ``1e-4`` are converted).

    Args:
        path: the file.

    Raises:
        FileNotFoundError: no file at ``path``.
        CLIError: unreadable file, unknown keys or values of the wrong type.
    """
    path = Path(path)
    types = field_types()
    data = _settings_table(path, read_config_file(path), types)
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
