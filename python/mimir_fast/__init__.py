"""mimir-fast: robust masked image modeling on Vision Transformers."""

from ._native import __version__
from .attacks import (
    APGD,
    APGDT,
    BPDA,
    DLR,
    EOT,
    FGSM,
    MIFGSM,
    PGD,
    AutoAttack,
    CallableObjective,
    CrossEntropy,
    Defended,
    Ensemble,
    FeatureDistance,
    Margin,
    MaskedReconstruction,
    Square,
    TargetedDLR,
    pgd_step,
)
from .data import Loader
from .defenses import IMPurePurifier, NIMDefense
from .evaluate import evaluate
from .hsic import HSIC, hsic
from .methods import Batch, Method, StepOutput, mimir_attack, register_method
from .metrics import psnr, ssim
from .models import MaskedViT, MaskedViTConfig, create_model, list_models
from .training import TrainConfig, TrainResult, train

__all__ = [
    "mimir_attack",
    "APGD",
    "APGDT",
    "AutoAttack",
    "BPDA",
    "Batch",
    "CallableObjective",
    "CrossEntropy",
    "DLR",
    "Defended",
    "EOT",
    "Ensemble",
    "FGSM",
    "FeatureDistance",
    "HSIC",
    "IMPurePurifier",
    "Loader",
    "MIFGSM",
    "Margin",
    "MaskedReconstruction",
    "NIMDefense",
    "PGD",
    "Square",
    "TargetedDLR",
    "MaskedViT",
    "MaskedViTConfig",
    "Method",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "create_model",
    "evaluate",
    "hsic",
    "list_models",
    "pgd_step",
    "psnr",
    "register_method",
    "ssim",
    "train",
]
