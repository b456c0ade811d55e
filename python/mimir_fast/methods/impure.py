"""IMPure: pretrain an autoencoder for regional intersection, then train it to purify
adversarial examples of a target classifier."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import PGD
from ..defenses import IMPurePurifier, impure_loss
from ..defenses.impure_features import build_feature_network
from ..metrics import psnr
from ..models import MaskedViT
from .base import Batch, Method, StepOutput, register_method
from .impure_mix import AttackMix

__all__ = ["ImpurePretraining", "ImpureTraining"]


@register_method
class ImpureTraining(Method):
    """IMPure (information masking purification): the trained model is the purifier's autoencoder.

    Each step makes adversarial examples of a frozen target classifier (``config.classifier``, a
    MaskedViT file) with :class:`~mimir_fast.methods.impure_mix.AttackMix`: every image draws one
    attack of ``config.impure_attacks`` (default the authors' mix: clean, FGSM, PGD, CW-L2,
    MI-FGSM, DI-FGSM with and without momentum, APGD-CE and APGD-DLR), L-inf at
    ``config.impure_eps`` (default 16/255, the paper's), iterative attacks with step
    ``config.attack_step`` (default impure_eps / 4) for ``config.attack_steps`` iterations
    (default 10). Then

    1. ``purified = P(x_adv)`` with :class:`~mimir_fast.defenses.IMPurePurifier` (``k =
       config.impure_groups``): every patch is rebuilt from the other patches only;
    2. random combination: a random region of ``purified`` is pasted into ``x_adv`` and the result
       is purified again, ``purified2 = P(combined)``, so the autoencoder also learns to clean an
       input whose perturbation is partly gone. ``purified`` is detached before pasting: the
       combined image stands for a new input, and the first pass is already trained by its own
       loss term rather than to make the second pass easy;
    3. the loss is the mean over both passes of :func:`~mimir_fast.defenses.impure_loss`:
       ``config.impure_pixel_weight`` (default 1) times the pixel L1 to the clean image plus
       ``config.impure_feature_weights`` (default 30, 10, 10, the paper's) times the L1 between
       frozen features of the purified and the clean image. The paper's feature network is an
       ImageNet VGG19-BN; the default here is the target classifier's
       :class:`~mimir_fast.defenses.impure_features.ViTFeatureTaps` (three taps, as the paper's
       three layers); ``config.impure_features`` names another (a MaskedViT file, a local timm
       model, a registered module).

    The autoencoder predicts raw pixels (``norm_pix_loss`` is switched off, as for NIM). Start from
    an autoencoder pretrained for the task: ``train(method="impure-pretrain")``
    (:class:`ImpurePretraining`), then ``pretrained=`` its file.

    Args:
        config: the run's :class:`~mimir_fast.TrainConfig`.
        classifier: a classifier module to use instead of loading ``config.classifier``.
        features: a perceptual feature network (any module or callable returning a tensor or a
            list of tensors) to use instead of ``config.impure_features``; it is frozen.
        pixel_weight, feature_weights: override ``config.impure_pixel_weight`` and
            ``config.impure_feature_weights``.
    """

    name = "impure"
    task = "pretrain"
    headline = ("accuracy_purified_adv", True)

    def __init__(
        self,
        config,
        classifier: nn.Module | None = None,
        features: Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]] | None = None,
        pixel_weight: float | None = None,
        feature_weights: float | list[float] | None = None,
    ):
        super().__init__(config)
        classifier = self._load_classifier(config, classifier)
        self.classifier = classifier.eval().requires_grad_(False)
        if features is None:
            features = build_feature_network(config.impure_features, classifier, config.kernels)
        elif isinstance(features, nn.Module):
            features.eval().requires_grad_(False)
        self.features = features
        self.pixel_weight = float(
            config.impure_pixel_weight if pixel_weight is None else pixel_weight
        )
        weights = config.impure_feature_weights if feature_weights is None else feature_weights
        if isinstance(weights, (list, tuple)) and len(weights) == 1:
            weights = weights[0]  # one weight for every tensor
        self.feature_weights = weights
        self.mix = AttackMix(
            self.classifier,
            config.impure_attacks,
            config.impure_eps,
            config.attack_step,
            config.attack_steps,
            config.kernels,
        )
        self._purifier: IMPurePurifier | None = None

    @staticmethod
    def _load_classifier(config, classifier: nn.Module | None) -> nn.Module:
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
        return classifier

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
        """Training examples: the attack mix on the frozen classifier (gradients on even under
        no_grad)."""
        self.classifier.to(images.device)
        with torch.enable_grad():
            return self.mix(images, labels).to(images.dtype)

    def eval_attack(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Held-out examples: PGD at the mix's budget (eps, step, iterations), one fixed attack
        so that runs with different mixes compare."""
        self.classifier.to(images.device)
        pgd = PGD(
            self.classifier,
            eps=self.mix.eps,
            alpha=self.mix.step,
            steps=self.mix.steps,
            kernels=self.config.kernels,
        )
        with torch.enable_grad():
            return pgd(images, labels).to(images.dtype)

    def loss(self, purified: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Pixel + perceptual loss with the configured weights and feature network."""
        if isinstance(self.features, nn.Module):
            self.features.to(purified.device)
        return impure_loss(purified, clean, self.features, self.pixel_weight, self.feature_weights)

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
        """Gray-box robustness: PGD (at the mix's budget) against the classifier alone, then
        purified. (A white-box attack through the purifier is :mod:`mimir_fast.attacks.defended`'s
        job.)"""
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
            x_adv = self.eval_attack(clean, labels)
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


@register_method
class ImpurePretraining(Method):
    """Pretraining for IMPure: the autoencoder learns what the purifier asks of it.

    As the authors' pretraining (their ``main_pretrain.py`` runs the purifier's own model, with
    ``chunks=4``, on clean ImageNet): the patches of each clean image are shuffled and split into
    ``config.impure_groups`` groups, and every group is rebuilt from the other groups only (1/k
    of the patches hidden per pass, all k passes in one batch: :class:`~mimir_fast.defenses.
    IMPurePurifier`). The loss is the pixel L1 between the rebuilt and the clean image over every
    patch (the authors' loss). A plain MAE with mask ratio 0.75 instead learns to rebuild 3/4
    of the image from 1/4, not 1/k from the rest.

    The autoencoder predicts raw pixels (``norm_pix_loss`` is switched off). Metrics: ``loss``
    and ``psnr`` of the rebuilt images.
    """

    name = "impure-pretrain"
    task = "pretrain"

    def __init__(self, config):
        super().__init__(config)
        self._purifier: IMPurePurifier | None = None

    def prepare_model(self, model, num_classes):
        model.config = dataclasses.replace(model.config, norm_pix_loss=False)
        self.purifier(model)  # refuses a group count that does not divide the patches
        return model

    def purifier(self, model: MaskedViT) -> IMPurePurifier:
        """The regional-intersection purifier around ``model`` (built once per model)."""
        if self._purifier is None or self._purifier.autoencoder is not model:
            self._purifier = IMPurePurifier(model, self.config.impure_groups)
        return self._purifier

    def training_step(self, model, batch: Batch) -> StepOutput:
        clean = batch.images
        rebuilt = self.purifier(model)(clean, clamp=False).to(clean.dtype)  # (N, C, H, W)
        loss = F.l1_loss(rebuilt, clean)
        with torch.no_grad():
            metrics = {"loss": loss.detach(), "psnr": psnr(rebuilt.float(), clean.float()).mean()}
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        """Held-out pixel L1 and PSNR of the rebuilt (clamped) clean images."""
        loss = peak = 0.0
        count = 0
        for batch in batches:
            clean = batch.images
            rebuilt = self.purifier(model)(clean).to(clean.dtype)
            n = clean.shape[0]
            loss += float(F.l1_loss(rebuilt, clean)) * n
            peak += float(psnr(rebuilt.float(), clean.float()).sum())
            count += n
        return {"loss": loss / max(count, 1), "psnr": peak / max(count, 1)}
