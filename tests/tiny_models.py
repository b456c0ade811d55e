"""A tiny classifier on 8x8 digits for fast attack tests (trained in about a second)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from mimir_fast.data import load_digits
from torch import nn

__all__ = ["TinyNet", "digits_8x8", "trained_tiny_net"]


class TinyNet(nn.Module):
    """A two-layer MLP with timm's ``forward_features`` / ``forward_head`` split."""

    def __init__(self, pixels: int = 64, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)
        self.num_classes = classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, hidden)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def digits_8x8(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, 1, 8, 8) in [0, 1], y (N,)) of scikit-learn's digits."""
    ds = load_digits(split, image_size=8)
    x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(len(ds))])
    y = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    return x, y


@functools.lru_cache(maxsize=1)
def trained_tiny_net() -> tuple[TinyNet, torch.Tensor, torch.Tensor]:
    """(model in eval mode, 96 held-out images, their labels); > 90% clean accuracy."""
    torch.manual_seed(0)
    x, y = digits_8x8("train")
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(120):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xt, yt = digits_8x8("test")
    xt, yt = xt[:96], yt[:96]
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.9, f"the tiny classifier reached only {acc:.2f}"
    return model, xt, yt
