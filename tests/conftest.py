"""Shared fixtures: a small digits classifier trained once per test session.

Without a GPU, Triton kernels run in Triton's CPU interpreter: TRITON_INTERPRET must be set
before any kernel is defined, so it is set here, before the package is imported. ``kernels="auto"``
still picks the PyTorch reference on the CPU; tests ask for ``kernels="triton"`` explicitly.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mimir_fast  # noqa: E402
import pytest  # noqa: E402
from mimir_fast.data import load_digits

# A small ViT on 32x32 digits (8x8 patches -> 16 tokens, 64 wide, 2 deep) that trains from
# scratch in ~25 s on 2 idle CPU cores; ~86% held-out accuracy after 8 epochs.
DEMO_MODEL = "vit_tiny_patch4_32"
SMALL_OVERRIDES = {
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "decoder_embed_dim": 64,
    "decoder_depth": 1,
    "decoder_num_heads": 4,
}
N_HELDOUT = 96


@pytest.fixture(scope="session")
def digits_classifier(tmp_path_factory):
    """A MaskedViT classifier on the digits: (model in eval mode, held-out x, held-out y)."""
    out = tmp_path_factory.mktemp("digits_classifier")
    result = mimir_fast.train(
        method="finetune",
        model=DEMO_MODEL,
        model_overrides=SMALL_OVERRIDES,
        epochs=8,
        batch_size=32,
        lr=1.5e-3,
        warmup_epochs=0.3,
        augment="none",
        out_dir=str(out),
        progress=False,
        eval_every=0,
        checkpoint_every=0,
        seed=0,
    )
    model = result.model.cpu().eval()
    test = load_digits("test")
    x = torch.stack([test[i][0] for i in range(N_HELDOUT)])
    y = torch.tensor([test[i][1] for i in range(N_HELDOUT)])
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.8, f"the fixture classifier reached only {acc:.2f} clean accuracy"
    return model, x, y
