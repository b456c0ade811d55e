"""Supervised finetuning of a (pretrained) MaskedViT as a classifier."""

import torch
import torch.nn.functional as F

from ..defenses import NIMDefense
from ..models import MaskedViT
from ..noise import add_noise, sample_sigma
from .base import Batch, Method, StepOutput, register_method


@register_method
class Finetuning(Method):
    """Cross-entropy with label smoothing; layer-wise lr decay and drop path come from the config.

    With ``config.denoiser`` (a NIM autoencoder file) the classifier is trained and evaluated on
    denoised images: noise with sigma from ``config.denoise_noise`` (NIM: Uniform(0, 30)), then
    the frozen autoencoder's reconstruction, clamped to [0, 1].
    """

    name = "finetune"
    task = "finetune"
    headline = ("accuracy", True)

    def __init__(self, config):
        super().__init__(config)
        self.denoiser = None
        if config.denoiser:  # NIMDefense refuses autoencoders that do not predict pixels
            self.denoiser = NIMDefense(MaskedViT.load(config.denoiser).eval().requires_grad_(False))

    def prepare_model(self, model, num_classes):
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
        model.set_drop_path(self.config.drop_path)
        return model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: the images, or their denoised version."""
        if self.denoiser is None:
            return images
        self.denoiser.to(images.device)
        with torch.no_grad():
            sigma = sample_sigma(self.config.denoise_noise, images.shape[0], images.device)
            return self.denoiser.denoise(add_noise(images, sigma)).to(images.dtype)

    def training_step(self, model, batch: Batch) -> StepOutput:
        logits = model(self.inputs(batch.images))
        loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=self.config.label_smoothing)
        accuracy = (logits.argmax(dim=1) == batch.labels).float().mean()
        return StepOutput(loss, {"loss": loss.detach(), "accuracy": accuracy.detach()})

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        loss_sum, correct, count = 0.0, 0, 0
        for batch in batches:
            logits = model(self.inputs(batch.images)).float()
            loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == batch.labels).sum())
            count += batch.labels.shape[0]
        return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}
