"""No training step or per-step op waits for the GPU: recorded op by op on the CPU (host_sync.py).

A host synchronisation in a training step stalls the GPU once per step and breaks CUDA-graph
capture; on a GPU, tests/test_mimir.py's CUDA test checks the same with
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import mimir_fast as mf
import pytest
import torch
from host_sync import no_host_sync
from mimir_fast import Batch, TrainConfig
from mimir_fast.attacks import PGD
from mimir_fast.attacks.l1 import l1_sparse_direction, project_l1_box
from mimir_fast.hsic import hsic
from mimir_fast.methods import get_method
from mimir_fast.noise import add_noise, sample_sigma
from mimir_fast.ops.gaussian_gram import gaussian_gram
from mimir_fast.ops.pgd_step import pgd_step

TINY = dict(
    img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, num_classes=10,
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**overrides) -> mf.MaskedViT:
    torch.manual_seed(0)
    model = mf.MaskedViT(**TINY, **overrides).train()
    model.check_inputs = False  # as the trainer sets it on a GPU
    return model


def test_the_guard_names_each_kind_of_sync():
    x = torch.rand(6)
    for sync in (
        lambda: x * torch.as_tensor(2.0),  # Python data onto the device
        lambda: x.sum().item(),
        lambda: bool(x.max() > 0.5),
        lambda: x[x > 0.5],
        lambda: x.nonzero(),
    ):
        with pytest.raises(AssertionError, match="host synchronisation"), no_host_sync():
            sync()
    with no_host_sync():  # what the package does instead
        (x * torch.full((), 2.0)).clamp(0.0, 1.0).sum()


@pytest.mark.parametrize(
    ("name", "options", "model_options"),
    [
        ("mae", {}, {}),
        ("nim", {}, {}),
        ("mimir", {"attack_steps": 2}, {}),
        ("finetune", {}, {}),
        ("finetune", {"adversarial": "pgd", "attack_steps": 2}, {}),
        ("finetune", {"adversarial": "trades", "attack_steps": 2}, {}),
        ("impure-pretrain", {}, {"norm_pix_loss": False}),
    ],
)
def test_training_step_makes_no_host_sync(name, options, model_options):
    model = tiny_model(**model_options)
    step = get_method(name)(TrainConfig(method=name, **options))
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    with no_host_sync():
        out = step.training_step(model, Batch(x, y, {}))
        out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_per_step_ops_make_no_host_sync(kernels):
    x0 = torch.rand(4, 3, 8, 8)
    x, g = (x0 + 0.01 * torch.randn_like(x0)).clamp(0, 1), torch.randn_like(x0)
    a, sigmas = torch.randn(2, 8, 5), torch.tensor([5.0, 2.0]).view(2, 1, 1)
    with no_host_sync():
        for norm in ("linf", "l2"):
            pgd_step(x, g, x0, 2 / 255, 8 / 255, norm, kernels=kernels)
            pgd_step(
                x, g, x0, torch.full((4,), 0.01), torch.full((4,), 0.03), norm, kernels=kernels
            )
        gaussian_gram(a, 5.0, kernels=kernels)
        gaussian_gram(a, sigmas, kernels=kernels)
        hsic(x0, g, kernels=kernels)


def test_noise_and_l1_ops_make_no_host_sync():
    x0 = torch.rand(4, 3, 8, 8)
    with no_host_sync():
        for spec in ("gamma:25,3", "uniform:0,50", "constant:25"):
            add_noise(x0, sample_sigma(spec, 4, x0.device))
        add_noise(x0, 25.0)
        project_l1_box(x0 + torch.randn_like(x0), x0, 12.0)
        l1_sparse_direction(torch.randn_like(x0), x0, 5)


def test_attack_skips_its_value_checks_only_when_told():
    model = tiny_model().eval()
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 10, (4,))
    attack = PGD(model, 8 / 255, steps=2)
    with pytest.raises(AssertionError, match="host synchronisation"), no_host_sync():
        attack(x, y)  # checks the values: reads them back
    attack.check_inputs = False
    with no_host_sync():
        attack(x, y)
    with pytest.raises(ValueError, match="must have shape"):
        attack(x, y[:3])  # shapes are still checked
    attack.check_inputs = True
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(x + 2.0, y)
