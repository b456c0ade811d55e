"""The ``mimir-fast`` command line (also ``python -m mimir_fast`` and ``torchrun -m mimir_fast``).

Subcommands:

- ``mimir-fast pretrain [--config FILE] [--flags...]``: self-supervised pretraining (method
  "mae" unless ``--method`` or the config file says otherwise).
- ``mimir-fast finetune [--config FILE] [--flags...]``: supervised finetuning (method
  "finetune" by default).
- ``mimir-fast evaluate MODEL [--attacks ...] [--eps ...] [--defense nim:PATH ...]``: robust
  accuracy under attacks, of the model alone or behind a defense; under ``torchrun`` the
  processes split the images and rank 0 writes the report; rerun after a crash to resume.
  ``--corruptions all --baseline PATH``: accuracy under common corruptions, CE and mCE.
- ``mimir-fast demo [--out DIR] [--quick]``: the end-to-end demo.
- ``mimir-fast info``: versions, build and device.

Every :class:`~mimir_fast.TrainConfig` field is a flag (``batch_size`` -> ``--batch-size``,
also spelled ``--batch_size``), generated from the dataclass: its type comes from the field's
annotation and its help text from the field's ``metadata["help"]``. Values are resolved as:
TrainConfig defaults <- config file (TOML, JSON or YAML; flat keys or a ``[train]`` table) <-
flags given on the command line.
"""

from .commands import info, main, resolve_config
from .config_file import load_config_file
from .errors import CLIError
from .parser import PROG, build_parser

__all__ = [
    "PROG",
    "CLIError",
    "build_parser",
    "info",
    "load_config_file",
    "main",
    "resolve_config",
]
