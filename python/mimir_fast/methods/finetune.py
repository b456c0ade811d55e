"""Supervised finetuning of a (pretrained) MaskedViT as a classifier, clean or adversarial."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import PGD, Defended, TRADESAttack
from ..defenses import NIMDefense
from ..models import MaskedViT
from ..noise import add_noise, sample_sigma
from .base import Batch, Method, StepOutput, register_method

__all__ = ["DEFAULT_ATTACK_STEP", "DEFAULT_ATTACK_STEPS", "Finetuning", "trades_loss"]

DEFAULT_ATTACK_STEP = 2 / 255  # PGD-AT / TRADES step size when config.attack_step is None
DEFAULT_ATTACK_STEPS = 10  # and iterations when config.attack_steps is None


def trades_loss(
    clean_logits: torch.Tensor,
    adv_logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))``.

    The KL is summed over classes and averaged over the batch ("batchmean", as in the TRADES
    paper's loss and code); gradients flow through both the clean and the adversarial logits.
    Label smoothing applies to the cross-entropy only. Returns ``(loss, ce, kl)``.
    """
    clean, adv = clean_logits.float(), adv_logits.float()
    ce = F.cross_entropy(clean, labels, label_smoothing=label_smoothing)
    kl = F.kl_div(
        F.log_softmax(adv, dim=1),
        F.log_softmax(clean, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return ce + beta * kl, ce, kl


@register_method
class Finetuning(Method):
    """Cross-entropy with label smoothing; layer-wise lr decay and drop path come from the config.

    With ``config.denoiser`` (a NIM autoencoder file) the classifier is trained and evaluated on
    denoised images: noise with sigma from ``config.denoise_noise`` (NIM: Uniform(0, 30)), then
    the frozen autoencoder's reconstruction, clamped to [0, 1].

    ``config.adversarial`` selects adversarial finetuning, L-inf with ``attack_eps``,
    ``attack_step`` (default 2/255) and ``attack_steps`` (default 10):

    - "pgd": PGD-AT (Madry et al. 2018). Each step trains, with label-smoothed cross-entropy,
      on PGD examples that maximise the cross-entropy from a uniform random start.
    - "trades": TRADES (Zhang et al. 2019), see :func:`trades_loss` and :class:`TRADESAttack`,
      weighted by ``trades_beta``.

    The attacks run with the model in eval mode (as TRADES' code and common practice: drop
    path must not randomise the attack) and frozen parameters; they differentiate w.r.t. the
    input only, and the returned examples are detached. With a denoiser the attack is white-box
    through the defense: it differentiates through noise + denoiser + classifier, with a new
    noise draw at every attack step (one sample, no EOT averaging). ``attack_eps=0`` runs no
    attack: the step is plain finetuning on clean images (PGD-AT's inputs and TRADES' KL term
    would be the clean ones) and ``adv_accuracy`` is the clean accuracy.

    Training metrics: "loss", "accuracy" (on the adversarial inputs for "pgd", clean for
    "trades"), "adv_accuracy" (train mode, on the training attack's examples) and, for
    "trades", "ce" and "kl". :meth:`evaluate` adds "adv_loss" and "adv_accuracy" under PGD with
    the training attack's eps, step and steps. Each attack validates its inputs once per call
    (a few host syncs per step); its iterations themselves do not sync.
    """

    name = "finetune"
    task = "finetune"
    headline = ("accuracy", True)

    def __init__(self, config):
        super().__init__(config)
        self.denoiser = None
        if config.denoiser:  # NIMDefense refuses autoencoders that do not predict pixels
            self.denoiser = NIMDefense(MaskedViT.load(config.denoiser).eval().requires_grad_(False))
        self.attack_step = DEFAULT_ATTACK_STEP if config.attack_step is None else config.attack_step
        self.attack_steps = (
            DEFAULT_ATTACK_STEPS if config.attack_steps is None else config.attack_steps
        )

    def prepare_model(self, model, num_classes):
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
        model.set_drop_path(self.config.drop_path)
        return model

    def purify(self, images: torch.Tensor) -> torch.Tensor:
        """Noise then the denoiser's reconstruction, differentiable (identity without a
        denoiser)."""
        if self.denoiser is None:
            return images
        self.denoiser.to(images.device)
        sigma = sample_sigma(self.config.denoise_noise, images.shape[0], images.device)
        return self.denoiser.denoise(add_noise(images, sigma)).to(images.dtype)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: the images, or their denoised version."""
        if self.denoiser is None:
            return images
        with torch.no_grad():
            return self.purify(images)

    def adversarial_examples(
        self, model: MaskedViT, images: torch.Tensor, labels: torch.Tensor, kind: str | None = None
    ) -> torch.Tensor:
        """Detached adversarial examples of ``kind`` ("pgd" or "trades"; default the config's)."""
        kind = kind or self.config.adversarial
        if kind == "none" or self.config.attack_eps == 0:
            return images
        target = model if self.denoiser is None else Defended(model, self.purify)
        attack_class = {"pgd": PGD, "trades": TRADESAttack}[kind]
        settings = {"random_start": True} if kind == "pgd" else {}
        attack = attack_class(
            target,
            eps=self.config.attack_eps,
            alpha=self.attack_step,
            steps=self.attack_steps,
            kernels=self.config.kernels,
            **settings,
        )
        # off where the trainer turned the model's checks off (its loader's data is checked)
        attack.check_inputs = getattr(model, "check_inputs", True)
        with torch.enable_grad():  # evaluate() runs under no_grad
            return attack(images, labels)

    def training_step(self, model, batch: Batch) -> StepOutput:
        x, y = batch.images, batch.labels
        mode = self.config.adversarial if self.config.attack_eps > 0 else "none"
        if mode == "trades":
            x_adv = self.adversarial_examples(model, x, y)
            clean, adv = model(torch.cat([self.inputs(x), self.inputs(x_adv)])).chunk(2)
            loss, ce, kl = trades_loss(
                clean, adv, y, self.config.trades_beta, self.config.label_smoothing
            )
            metrics = {
                "loss": loss,
                "accuracy": (clean.argmax(dim=1) == y).float().mean(),
                "adv_accuracy": (adv.argmax(dim=1) == y).float().mean(),
                "ce": ce,
                "kl": kl,
            }
            return StepOutput(loss, {k: v.detach() for k, v in metrics.items()})
        if mode == "pgd":
            x = self.adversarial_examples(model, x, y)
        logits = model(self.inputs(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        accuracy = (logits.argmax(dim=1) == y).float().mean().detach()
        metrics = {"loss": loss.detach(), "accuracy": accuracy}
        if self.config.adversarial != "none":
            metrics["adv_accuracy"] = accuracy
        return StepOutput(loss, metrics)

    def evaluate(self, model, batches) -> dict[str, float]:
        robust = self.config.adversarial != "none"
        loss_sum, correct, adv_loss_sum, adv_correct, count = 0.0, 0, 0.0, 0, 0
        for batch in batches:
            with torch.no_grad():
                logits = model(self.inputs(batch.images)).float()
            loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == batch.labels).sum())
            count += batch.labels.shape[0]
            if robust:
                x_adv = self.adversarial_examples(model, batch.images, batch.labels, kind="pgd")
                with torch.no_grad():
                    adv_logits = model(self.inputs(x_adv)).float()
                adv_loss_sum += float(F.cross_entropy(adv_logits, batch.labels, reduction="sum"))
                adv_correct += int((adv_logits.argmax(dim=1) == batch.labels).sum())
        metrics = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}
        if robust:
            metrics.update(
                adv_loss=adv_loss_sum / max(count, 1), adv_accuracy=adv_correct / max(count, 1)
            )
        return metrics
