"""IMPure: train a masked autoencoder to purify adversarial examples of a target classifier."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import PGD
from ..defenses import IMPurePurifier, impure_loss
from ..metrics import psnr
from ..models import MaskedViT
from .base import Batch, Method, StepOutput, register_method

__all__ = ["ImpureTraining"]


@register_method
class ImpureTraining(Method):
    """IMPure (information masking purification): the trained model is the purifier's autoencoder.

    Each step attacks a frozen target classifier (``config.classifier``, a MaskedViT file) with
    L-inf PGD on cross-entropy: ``config.attack_eps`` (default 8/255), step ``config.attack_step``
    (default 2/255) for ``config.attack_steps`` iterations (default 10). The paper trains at
    16/255: pass ``attack_eps=16/255, attack_step=4/255``. Then

    1. ``purified = P(x_adv)`` with :class:`~mimir_fast.defenses.IMPurePurifier` (``k =
       config.impure_groups``): every patch is rebuilt from the other patches only;
    2. random combination: a random region of ``purified`` is pasted into ``x_adv`` and the result
       is purified again, ``purified2 = P(combined)``, so the autoencoder also learns to clean an
       input whose perturbation is partly gone. ``purified`` is detached before pasting: the
       combined image stands for a new input, and the first pass is already trained by its own
       loss term rather than to make the second pass easy;
    3. the loss is the mean over both passes of :func:`~mimir_fast.defenses.impure_loss`: pixel L1
       to the clean image plus L1 between the frozen classifier's ``forward_features`` of the
       purified and the clean image (the paper uses VGG19 features; here the target classifier's,
       or any ``features`` callable given to the constructor).

    The autoencoder predicts raw pixels (``norm_pix_loss`` is switched off, as for NIM). Start from
    a pretrained autoencoder with ``pretrained=``.

    Args:
        config: the run's :class:`~mimir_fast.TrainConfig`.
        classifier: a classifier module to use instead of loading ``config.classifier``.
        features: the perceptual feature network (default: ``classifier.forward_features``).
        pixel_weight, feature_weight: weights of the two loss terms.
    """

    name = "impure"
    task = "pretrain"
    headline = ("accuracy_purified_adv", True)

    def __init__(
        self,
        config,
        classifier: nn.Module | None = None,
        features: Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]] | None = None,
        pixel_weight: float = 1.0,
        feature_weight: float = 1.0,
    ):
        super().__init__(config)
        if classifier is None:
            if not config.classifier:
                raise ValueError(
                    "method 'impure' needs a target classifier: set classifier= to a MaskedViT "
                    "classifier file (e.g. the model.safetensors of a finetune run)"
                )
            classifier = MaskedViT.load(config.classifier, kernels=config.kernels)
        if not isinstance(classifier, nn.Module):
            raise ValueError(f"classifier must be an nn.Module, got {type(classifier).__name__}")  # noqa: TRY004 (bad input is a ValueError throughout)
        if isinstance(classifier, MaskedViT) and classifier.num_classes < 1:
            raise ValueError(
                "the classifier has no classification head (num_classes=0); give a finetuned "
                "classifier, not a pretrained autoencoder"
            )
        if features is None:
            features = getattr(classifier, "forward_features", None)
            if features is None:
                raise ValueError(
                    f"{type(classifier).__name__} has no forward_features; pass features="
                )
        self.classifier = classifier.eval().requires_grad_(False)
        self.features = features
        self.pixel_weight = float(pixel_weight)
        self.feature_weight = float(feature_weight)
        self._purifier: IMPurePurifier | None = None

    # ------------------------------------------------------------------ pieces
    def prepare_model(self, model, num_classes):
        # a changed copy: code holding the model's previous config object sees no change
        model.config = dataclasses.replace(model.config, norm_pix_loss=False)
        self._check_classifier(model, num_classes)
        self.purifier(model)  # refuses a group count that does not divide the patches
        return model

    def _check_classifier(self, model: MaskedViT, num_classes: int | None = None) -> None:
        """The classifier must read the images the autoencoder reads (and label the data's
        classes)."""
        config = getattr(self.classifier, "config", None)
        if config is not None and (config.in_chans, config.img_size) != (
            model.config.in_chans,
            model.config.img_size,
        ):
            raise ValueError(
                f"the classifier expects {config.in_chans}-channel {config.img_size}px images but "
                f"the data and the autoencoder have {model.config.in_chans}-channel "
                f"{model.config.img_size}px ones"
            )
        classes = getattr(self.classifier, "num_classes", None)
        if num_classes is not None and isinstance(classes, int) and classes != num_classes:
            raise ValueError(f"the classifier has {classes} classes but the data has {num_classes}")

    def purifier(self, model: MaskedViT) -> IMPurePurifier:
        """The regional-intersection purifier around ``model`` (built once per model)."""
        if self._purifier is None or self._purifier.autoencoder is not model:
            self._purifier = IMPurePurifier(model, self.config.impure_groups)
        return self._purifier

    def attack(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PGD adversarial examples of the frozen classifier (gradients on even under no_grad)."""
        self.classifier.to(images.device)
        c = self.config
        pgd = PGD(
            self.classifier,
            eps=c.attack_eps,
            alpha=2 / 255 if c.attack_step is None else c.attack_step,
            steps=10 if c.attack_steps is None else c.attack_steps,
            kernels=c.kernels,
        )
        with torch.enable_grad():
            return pgd(images, labels).to(images.dtype)

    def loss(self, purified: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        return impure_loss(purified, clean, self.features, self.pixel_weight, self.feature_weight)

    # ------------------------------------------------------------------ the method
    def training_step(self, model, batch: Batch) -> StepOutput:
        clean = batch.images
        x_adv = self.attack(clean, batch.labels)
        purifier = self.purifier(model)
        # the loss sees raw predictions: clamping would stop the gradient of out-of-range pixels
        purified = purifier(x_adv, clamp=False).to(clean.dtype)
        combined = purifier.random_combination(x_adv, purified.detach().clamp(0.0, 1.0))
        purified2 = purifier(combined, clamp=False).to(clean.dtype)
        # both passes in one call: the L1 means over the two equal halves average the two losses
        loss = self.loss(torch.cat([purified, purified2]), torch.cat([clean, clean]))
        with torch.no_grad():
            metrics = {
                "loss": loss.detach(),
                "pixel_l1": F.l1_loss(purified, clean),
                "psnr": psnr(purified.float(), clean.float()).mean(),
            }
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        """Gray-box robustness: PGD against the classifier alone, then purified. (A white-box attack
        through the purifier is :mod:`mimir_fast.attacks.defended`'s job.)"""
        sums = dict.fromkeys(
            (
                "loss",
                "psnr_clean",
                "psnr_adv",
                "accuracy_clean",
                "accuracy_adv",
                "accuracy_purified_adv",
                "accuracy_purified_clean",
            ),
            0.0,
        )
        count = 0
        for batch in batches:
            clean, labels = batch.images, batch.labels
            self._check_classifier(model)
            x_adv = self.attack(clean, labels)
            purifier = self.purifier(model)
            purified_adv = purifier(x_adv).to(clean.dtype)
            purified_clean = purifier(clean).to(clean.dtype)
            n = clean.shape[0]
            sums["loss"] += float(self.loss(purified_adv, clean)) * n
            sums["psnr_adv"] += float(psnr(purified_adv.float(), clean.float()).sum())
            sums["psnr_clean"] += float(psnr(purified_clean.float(), clean.float()).sum())
            for key, images in (
                ("accuracy_clean", clean),
                ("accuracy_adv", x_adv),
                ("accuracy_purified_adv", purified_adv),
                ("accuracy_purified_clean", purified_clean),
            ):
                sums[key] += float((self.classifier(images).argmax(dim=1) == labels).sum())
            count += n
        return {k: v / max(count, 1) for k, v in sums.items()}
