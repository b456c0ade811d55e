"""NIM pretraining: denoise Gaussian noise over all tokens (no masking)."""

import dataclasses

import torch

from ..noise import add_noise, sample_sigma
from .base import Batch, Method, StepOutput, register_method

__all__ = ["NIMPretraining"]


@register_method
class NIMPretraining(Method):
    """Noisy image modeling: the encoder sees every patch of ``x + sigma/255 * n``, sigma per
    image from ``config.noise`` (default Gamma(25, 3)); the decoder predicts the clean pixels.

    The model predicts raw pixels (``norm_pix_loss`` is switched off): a norm-pix model would
    need the input's per-patch statistics to produce pixels at test time, and as a defense
    those statistics come from the attacker's image.
    """

    name = "nim"
    task = "pretrain"
    loader_sigma = True

    def prepare_model(self, model, num_classes):
        # a changed copy: code holding the model's previous config object sees no change
        model.config = dataclasses.replace(model.config, norm_pix_loss=False)
        return model

    def _noisy(self, batch: Batch) -> torch.Tensor:
        sigma = batch.extras.get("sigma")
        if sigma is None:
            sigma = sample_sigma(self.config.noise, batch.images.shape[0], batch.images.device)
        return add_noise(batch.images, sigma)

    def training_step(self, model, batch: Batch) -> StepOutput:
        loss, _ = model.forward_denoise(self._noisy(batch), batch.images)
        return StepOutput(loss, {"loss": loss.detach()})

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        total, noisy_total, count = 0.0, 0.0, 0
        for batch in batches:
            noisy = self._noisy(batch)
            loss, _ = model.forward_denoise(noisy, batch.images)
            n = batch.images.shape[0]
            total += float(loss) * n
            noisy_total += float(((noisy - batch.images) ** 2).mean()) * n
            count += n
        # "loss": MSE of the denoised image; "noisy_mse": MSE of the input it started from
        return {"loss": total / max(count, 1), "noisy_mse": noisy_total / max(count, 1)}
