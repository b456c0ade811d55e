"""TrainConfig's fields as the command line sees them: their types, help texts and flags."""

from __future__ import annotations

from .._config_types import FieldType
from .._config_types import field_types as dataclass_field_types
from ..training.config import TrainConfig
from .flags import flag_spellings, help_texts

__all__ = ["field_help", "field_types", "train_flags"]


def field_types() -> dict[str, FieldType]:
    """``{field: FieldType}`` of :class:`~mimir_fast.TrainConfig`."""
    return dataclass_field_types(TrainConfig)


def field_help() -> dict[str, str]:
    """``{field: help text}`` of :class:`~mimir_fast.TrainConfig` (its fields' metadata)."""
    return help_texts(TrainConfig)


def train_flags() -> set[str]:
    """Every flag of the training commands, ``--no-`` forms and ``--dry-run`` included."""
    return flag_spellings(TrainConfig) | {"--dry-run"}
