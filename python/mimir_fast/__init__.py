"""mimir-fast: robust masked image modeling on Vision Transformers."""

from ._native import __version__
from .attacks import (
    APGD,
    APGDT,
    CW,
    DIFGSM,
    DLR,
    EOT,
    FAB,
    FABT,
    FGSM,
    L1PGD,
    MIFGSM,
    PGD,
    AutoAttack,
    CallableObjective,
    CrossEntropy,
    Ensemble,
    FeatureDistance,
    Margin,
    MaskedReconstruction,
    MIAdaptive,
    Square,
    TargetedDLR,
    TRADESAttack,
    pgd_step,
)
from .data import (
    Loader,
)
from .defenses import (
    BPDA,
    Defended,
    IMPurePurifier,
    NIMDefense,
)
from .evaluate import (
    evaluate,
    evaluate_corruptions,
)
from .evaluation.threats import (
    evaluate_threats,
)
from .hsic import (
    HSIC,
    hsic,
)
from .methods import (
    Batch,
    Method,
    StepOutput,
    mimir_attack,
    register_method,
)
from .metrics import (
    psnr,
    ssim,
)
from .models import (
    MaskedViT,
    MaskedViTConfig,
    create_model,
    list_models,
)
from .training import (
    TrainConfig,
    TrainResult,
    train,
)

__all__ = [
    "APGD",
    "APGDT",
    "AutoAttack",
    "BPDA",
    "Batch",
    "CW",
    "CallableObjective",
    "CrossEntropy",
    "DIFGSM",
    "DLR",
    "Defended",
    "EOT",
    "Ensemble",
    "FAB",
    "FABT",
    "FGSM",
    "FeatureDistance",
    "HSIC",
    "IMPurePurifier",
    "L1PGD",
    "Loader",
    "MIAdaptive",
    "MIFGSM",
    "Margin",
    "MaskedReconstruction",
    "MaskedViT",
    "MaskedViTConfig",
    "Method",
    "NIMDefense",
    "PGD",
    "Square",
    "StepOutput",
    "TRADESAttack",
    "TargetedDLR",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "create_model",
    "evaluate",
    "evaluate_corruptions",
    "evaluate_threats",
    "hsic",
    "list_models",
    "mimir_attack",
    "pgd_step",
    "psnr",
    "register_method",
    "ssim",
    "train",
]
