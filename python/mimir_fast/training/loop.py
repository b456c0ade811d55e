"""``mimir_fast.train``: one loop for pretraining and finetuning every method.

The loop owns data order, AdamW with no-decay groups and layer-wise lr decay, per-iteration
warmup + cosine, AMP (bf16 on CUDA), gradient clipping, logging, atomic checkpoints and
resume; a :class:`~mimir_fast.methods.Method` owns the per-step loss.

Determinism: every step reseeds torch from ``(seed, step)`` and every epoch shuffles from
``(seed, epoch)``, so a resumed run sees the same batches, masks and augmentations as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..distributed import DistContext
from ..methods import Batch, Method, get_method
from ..models import MaskedViT
from .batches import TrainBatches, epoch_batches
from .checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    check_optimizer_layout,
    keyed_by_index,
    keyed_by_name,
    load_optimizer_state,
    read_checkpoint,
    save_checkpoint,
    strip_prefix,
    write_checkpoint,
)
from .config import TrainConfig
from .parallel import TrainingStep, unsharded_copy, wrap_for_processes
from .prepare import autocast, build_model, check_fits, load_datasets, resolve_device
from .records import MetricLog
from .schedule import learning_rate, step_seed

__all__ = ["TrainResult", "Trainer", "train"]

EVAL_SEED_STEP = 2**40  # the step seed of held-out evaluations: the same masks every time


@dataclass
class TrainResult:
    model: MaskedViT
    history: list[dict[str, Any]]  # every record written to metrics.jsonl
    final_metrics: dict[str, float]  # held-out metrics at the end
    out_dir: Path
    steps: int


class Trainer:
    """One training run: its model, optimizer, schedule and progress, and the loop over them.

    Building it prepares the run (datasets, model, optimizer, and the checkpoint it resumes
    from); :meth:`fit` trains and returns the result.

    Args:
        config: the run's settings.
        method: the training method (the per-step loss and the held-out metrics).
        ctx: this process's place in a distributed run.
        device: the training device.
        model: a model to train instead of ``config.model`` / ``config.pretrained``.
        train_data, test_data: datasets to use instead of ``config.data``.
    """

    def __init__(
        self,
        config: TrainConfig,
        method: Method,
        ctx: DistContext,
        device: torch.device,
        model: MaskedViT | None = None,
        train_data=None,
        test_data=None,
    ):
        self.config, self.method, self.ctx, self.device = config, method, ctx, device
        self.out_dir = Path(config.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.train_data, self.test_data = load_datasets(config, model, train_data, test_data)
        if model is None:
            torch.manual_seed(config.seed)  # the initial weights depend on the seed only
            model = build_model(config, self.train_data)
        check_fits(model, self.train_data)
        check_fits(model, self.test_data)
        self.model = method.prepare_model(model, self.train_data.num_classes).to(device)
        self._plan_schedule()
        self.start_step = self._build_optimizer()
        distributed.barrier(ctx)  # every rank has read the checkpoint before rank 0 overwrites it
        self.log = MetricLog(self.out_dir, self.start_step, ctx.is_main)
        if ctx.is_main:
            (self.out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        self.step = self.start_step

    # ------------------------------------------------------------------ setting up
    def _plan_schedule(self) -> None:
        """Steps per epoch, the run's length, its warmup and its peak learning rate."""
        c, world_size = self.config, self.ctx.world_size
        self.steps_per_epoch = len(self.train_data) // world_size // c.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {c.batch_size} is larger than the training set "
                f"({len(self.train_data)} images"
                + (f" over {world_size} processes)" if self.ctx.enabled else ")")
            )
        self.total_steps = self.steps_per_epoch * c.epochs
        self.end_step = (
            self.total_steps if c.max_steps is None else min(self.total_steps, c.max_steps)
        )
        self.warmup_steps = int(c.warmup_epochs * self.steps_per_epoch)
        self.peak_lr = c.lr if c.lr is not None else c.blr * c.batch_size * world_size / 256

    def _build_optimizer(self) -> int:
        """Wrap the step for the processes, build AdamW and restore a checkpoint's state.

        Returns the step the run continues from (0 for a fresh run).
        """
        c, model = self.config, self.model
        groups = model.param_groups(c.weight_decay, c.layer_decay)  # whole weights, not sharded
        resume = c.resume
        if resume == "auto":
            last = self.out_dir / CHECKPOINT_NAME
            resume = str(last) if last.exists() else None
        resumed = read_checkpoint(resume, model, c) if resume else None
        if resumed is not None:
            model.load_weights(resumed[0], source=str(resume))
        self.sharded = self.ctx.enabled and c.distributed == "fsdp"
        self.model_cls = type(model)
        self.run_step, groups = wrap_for_processes(
            TrainingStep(self.method, model), groups, self.ctx, self.sharded, self.device
        )
        self.optimizer = torch.optim.AdamW(groups, lr=self.peak_lr, betas=c.betas)
        # the parameter of each optimizer index, by its name in run_step's state dict
        self.param_names = [f"model.{n}" for g in groups for n in g["param_names"]]
        if resumed is None:
            return 0
        model_state, optim_state, step = resumed
        del model_state, resumed
        if self.sharded:
            check_optimizer_layout(resume, optim_state, self.optimizer)
            state = keyed_by_name(optim_state, self.param_names)
            distributed.fsdp_load_optimizer(self.run_step, self.optimizer, state)
        else:
            load_optimizer_state(resume, self.optimizer, optim_state)
        return step

    # ------------------------------------------------------------------ evaluation and checkpoints
    def evaluate(self, epoch: int) -> dict[str, float]:
        """Held-out metrics (averaged over the ranks), logged as a "test" record."""
        c, ctx, device = self.config, self.ctx, self.device
        self.model.eval()
        torch.manual_seed(step_seed(c.seed, EVAL_SEED_STEP, ctx.rank))
        shard = epoch_batches(
            self.test_data,
            c.batch_size,
            c.seed,
            0,
            0,
            c.num_workers,
            shuffle=False,
            drop_last=False,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        count = 0

        def batches() -> Iterator[Batch]:
            nonlocal count
            for x, y in shard:
                count += x.shape[0]
                yield Batch(x.to(device), y.to(device))

        with torch.no_grad(), autocast(c, device):
            if self.sharded:  # inside the root's forward, where FSDP gathers its weights
                metrics = self.run_step(None, None, None, held_out=batches())
                distributed.fsdp_reshard(self.run_step)
            else:
                metrics = self.method.evaluate(self.model, batches())
        metrics = distributed.mean_over_ranks(ctx, metrics, count)
        self.model.train()
        self.log.append({"step": self.step, "epoch": epoch, "split": "test", **metrics})
        return metrics

    def checkpoint(self, epoch: int) -> None:
        """Write ``checkpoint-last.safetensors`` (the whole state, gathered from every rank)."""
        path = self.out_dir / CHECKPOINT_NAME
        if self.sharded:  # every rank sends its shards; rank 0 writes the whole state
            model_state, optim_state = distributed.fsdp_full_state(self.run_step, self.optimizer)
            if self.ctx.is_main:
                write_checkpoint(
                    path,
                    strip_prefix(model_state),
                    keyed_by_index(optim_state, self.param_names),
                    self.model,
                    self.config,
                    self.step,
                    epoch,
                )
        elif self.ctx.is_main:
            save_checkpoint(path, self.model, self.optimizer, self.config, self.step, epoch)

    # ------------------------------------------------------------------ training
    def fit(self) -> TrainResult:
        """Train to the end (or ``max_steps``), evaluate, checkpoint and save the model."""
        batches = TrainBatches(
            self.train_data, self.config, self.method, self.model, self.device, self.ctx
        )
        self.model.train()
        checks = self.model.check_inputs
        # loader data is checked already; on CUDA the check would sync
        self.model.check_inputs = self.device.type != "cuda"
        bar = tqdm(
            total=self.end_step,
            initial=self.start_step,
            disable=not self.config.progress or not self.ctx.is_main,
            desc=f"{self.config.method}",
            unit="step",
            dynamic_ncols=True,
        )
        self.started = time.perf_counter()
        try:
            self._train_epochs(batches, bar)
        finally:
            bar.close()
            self.model.check_inputs = checks
            batches.close()
        return self._finish()

    def _train_epochs(self, batches: TrainBatches, bar: tqdm) -> None:
        c = self.config
        epoch = self.start_step // self.steps_per_epoch
        while self.step < self.end_step:
            skip = self.step - epoch * self.steps_per_epoch
            for batch in batches.epoch(epoch, skip):
                torch.manual_seed(step_seed(c.seed, self.step, self.ctx.rank))
                batch = batches.augment(batch)
                lr, step_metrics = self._train_step(batch)
                self.step += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == self.end_step:
                    self._log_train(epoch, lr, step_metrics, batch.images.shape[0], bar)
                if c.checkpoint_steps and self.step % c.checkpoint_steps == 0:
                    self.checkpoint(epoch)
                if self.step >= self.end_step:
                    break
            else:  # the epoch ran to its end
                epoch += 1
                if c.eval_every and epoch % c.eval_every == 0 and self.step < self.end_step:
                    self.evaluate(epoch)
                if c.checkpoint_every and epoch % c.checkpoint_every == 0:
                    self.checkpoint(epoch)
                self.log.write_csv()

    def _train_step(self, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
        """One optimizer step on ``batch``; returns its learning rate and the method's metrics."""
        c = self.config
        lr = learning_rate(self.step, self.total_steps, self.warmup_steps, self.peak_lr, c.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with autocast(c, self.device):
            loss, step_metrics = self.run_step(batch.images, batch.labels, batch.extras)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.clip_grad is not None and self.sharded:
            distributed.fsdp_clip_grad_norm(self.optimizer, c.clip_grad)
        elif c.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad)
        self.optimizer.step()
        if self.sharded:
            distributed.fsdp_reshard(self.run_step)
        return lr, step_metrics

    def _log_train(
        self, epoch: int, lr: float, step_metrics: dict[str, Any], batch_images: int, bar: tqdm
    ) -> None:
        """Log a "train" record of the step's metrics (averaged over the ranks).

        Raises:
            FloatingPointError: the loss is no longer finite.
        """
        values = {k: float(v) for k, v in step_metrics.items()}
        values = distributed.mean_over_ranks(self.ctx, values, batch_images)
        if not math.isfinite(values.get("loss", 0.0)):
            raise FloatingPointError(
                f"loss became {values['loss']} at step {self.step}; lower the "
                "learning rate or enable clip_grad"
            )
        images = self.config.batch_size * self.ctx.world_size * (self.step - self.start_step)
        images_per_s = round(images / (time.perf_counter() - self.started), 2)
        record = {"step": self.step, "epoch": epoch, "split": "train", "lr": lr}
        self.log.append({**record, "images_per_s": images_per_s, **values})
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})

    def _finish(self) -> TrainResult:
        """Final evaluation and checkpoint; rank 0 saves the model, the CSV and the summary."""
        epoch = self.step // self.steps_per_epoch  # epochs completed
        final_metrics = self.evaluate(epoch)
        self.checkpoint(epoch)
        model = self.model
        if self.sharded:  # every rank returns (and rank 0 saves) a plain model of whole weights
            state = distributed.fsdp_full_state(self.run_step, rank0_only=False)[0]
            model = unsharded_copy(self.model_cls, model, state)
        if self.ctx.is_main:
            model.save(self.out_dir / MODEL_NAME)
            self.log.write_csv()
            summary = self._summary(final_metrics)
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return TrainResult(model, self.log.records, final_metrics, self.out_dir, self.step)

    def _summary(self, final_metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "method": self.config.method,
            "steps": self.step,
            "epochs_done": self.step / self.steps_per_epoch,
            "train_images": len(self.train_data),
            "test_images": len(self.test_data),
            "seconds": round(time.perf_counter() - self.started, 2),
            "test": final_metrics,
            "device": str(self.device),
            "world_size": self.ctx.world_size,
        }


def train(
    config: TrainConfig | None = None,
    *,
    model: MaskedViT | str | None = None,
    train_data=None,
    test_data=None,
    **overrides: Any,
) -> TrainResult:
    """Pretrain or finetune a MaskedViT.

    Args:
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields, so
            ``train(method="mae", epochs=5)`` works without building one.
        model: a preset name (sets ``config.model``), or a MaskedViT instance to train instead of
            ``config.model`` / ``config.pretrained``.
        train_data, test_data: datasets to use instead of ``config.data`` (``(image, label)``
            items with ``num_classes``, ``in_chans`` and ``image_size`` attributes).
        **overrides: TrainConfig fields to replace.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process trains on its own shard of each epoch
    (``batch_size`` images per process and step) a DistributedDataParallel copy of the model, or
    with ``distributed="fsdp"`` its share of the weights, gradients and optimizer state (PyTorch's
    ``fully_shard``, one unit per transformer block). The learning rate follows the global
    batch, held-out metrics are averaged over all ranks, and rank 0 alone writes logs,
    checkpoints and the model; checkpoints always hold the whole, unsharded state, so any run
    (one process, DDP or FSDP) can load them.

    Returns:
        A :class:`TrainResult` with the trained model, the metric history and held-out metrics.
        ``OUT_DIR`` holds ``metrics.jsonl``, ``metrics.csv``, ``checkpoint-last.safetensors``,
        ``model.safetensors`` and ``summary.json``.
    """
    if isinstance(model, str):
        overrides["model"], model = model, None
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    method: Method = get_method(config.method)(config)
    ctx, device = distributed.setup(resolve_device(config.device))
    try:
        return Trainer(config, method, ctx, device, model, train_data, test_data).fit()
    finally:
        distributed.teardown(ctx)
