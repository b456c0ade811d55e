"""The learning-rate schedule and the per-step seeds of a run."""

from __future__ import annotations

import math

__all__ = ["learning_rate", "step_seed"]


def learning_rate(
    step: int, total_steps: int, warmup_steps: int, peak: float, floor: float
) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then half-cosine down to ``floor``.

    Args:
        step: the optimizer step about to be taken (0-based).
        total_steps: steps of the whole run.
        warmup_steps: steps of the linear warmup.
        peak: the learning rate at the end of the warmup.
        floor: the learning rate at the end of the run.
    """
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The torch seed used for step ``step`` of a run seeded ``seed``, on process ``rank``."""
    return (seed * 1_000_003 + step + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)
