"""Supervised finetuning of a (pretrained) MaskedViT as a classifier."""

import torch
import torch.nn.functional as F

from .base import Batch, Method, StepOutput, register_method


@register_method
class Finetuning(Method):
    """Cross-entropy with label smoothing; layer-wise lr decay and drop path come from the config."""

    name = "finetune"
    task = "finetune"
    headline = ("accuracy", True)

    def prepare_model(self, model, num_classes):
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
        model.set_drop_path(self.config.drop_path)
        return model

    def training_step(self, model, batch: Batch) -> StepOutput:
        logits = model(batch.images)
        loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=self.config.label_smoothing)
        accuracy = (logits.argmax(dim=1) == batch.labels).float().mean()
        return StepOutput(loss, {"loss": loss.detach(), "accuracy": accuracy.detach()})

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        loss_sum, correct, count = 0.0, 0, 0
        for batch in batches:
            logits = model(batch.images).float()
            loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == batch.labels).sum())
            count += batch.labels.shape[0]
        return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}
