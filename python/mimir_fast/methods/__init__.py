"""Training methods, each plugged into :func:`mimir_fast.train` through :class:`Method`."""

from ..attacks import TRADESAttack
from .base import METHODS, Batch, Method, StepOutput, get_method, register_method
from .finetune import Finetuning, trades_loss
from .impure import ImpureTraining
from .mae import MAEPretraining
from .mimir import MIMIRPretraining, mimir_attack
from .nim import NIMPretraining

__all__ = [
    "METHODS",
    "Batch",
    "Finetuning",
    "ImpureTraining",
    "MAEPretraining",
    "MIMIRPretraining",
    "Method",
    "NIMPretraining",
    "StepOutput",
    "TRADESAttack",
    "get_method",
    "mimir_attack",
    "register_method",
    "trades_loss",
]
