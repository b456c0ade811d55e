"""MAE pretraining: reconstruct randomly masked patches."""

import torch

from .base import Batch, Method, StepOutput, register_method

__all__ = ["MAEPretraining"]


@register_method
class MAEPretraining(Method):
    """Masked autoencoding with ``config.mask_ratio`` (MAE, He et al. 2022).

    Uses ``batch.extras["ids_keep"]`` when the data path supplies masks.
    """

    name = "mae"
    task = "pretrain"
    loader_masks = 1

    def training_step(self, model, batch: Batch) -> StepOutput:
        loss, _, _ = model.forward_mae(
            batch.images, self.config.mask_ratio, batch.extras.get("ids_keep")
        )
        return StepOutput(loss, {"loss": loss.detach()})

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        total, count = torch.zeros(()), 0
        for batch in batches:
            loss, _, _ = model.forward_mae(batch.images, self.config.mask_ratio)
            total += loss.float().cpu() * batch.images.shape[0]
            count += batch.images.shape[0]
        return {"loss": float(total / max(count, 1))}
