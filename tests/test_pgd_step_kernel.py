"""The fused projected-gradient step kernel against its PyTorch reference.

On the CPU the kernel runs under the Triton interpreter: ``TRITON_INTERPRET=1`` must be set
before the ``@triton.jit`` functions are created, so the cases run in a subprocess with that
variable (this file is its script); the rest of the suite keeps the normal setting, where
``kernels="auto"`` resolves to the reference on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from mimir_fast.attacks import pgd_step
from mimir_fast.kernels import resolve_kernels
from mimir_fast.ops.pgd_step import pgd_step_reference as reference
from mimir_fast.ops.pgd_step import project

# (id, norm, dtype, shape, per-sample alpha/eps)
CASES = [
    ("linf-fp32-3x1x7x5", "linf", "float32", (3, 1, 7, 5), False),
    ("linf-fp32-2x3x32x33-per-sample", "linf", "float32", (2, 3, 32, 33), True),
    ("linf-bf16-5x3x11x13", "linf", "bfloat16", (5, 3, 11, 13), False),
    ("l2-fp32-3x1x7x5", "l2", "float32", (3, 1, 7, 5), False),
    ("l2-fp32-4x3x32x33-per-sample", "l2", "float32", (4, 3, 32, 33), True),
    ("l2-bf16-5x3x11x13", "l2", "bfloat16", (5, 3, 11, 13), True),
]
TOL = {"float32": 1e-5, "bfloat16": 1e-2}


def make_inputs(norm: str, dtype: torch.dtype, shape, per_sample: bool, seed: int, device="cpu"):
    """Fresh random inputs: an iterate inside (L-inf) or around (L2) the ball, a Gaussian
    gradient."""
    g = torch.Generator().manual_seed(seed)
    n = shape[0]
    x0 = torch.rand(shape, generator=g)
    if norm == "linf":
        eps = torch.rand(n, generator=g) * 0.1 + 0.01 if per_sample else 8 / 255
        alpha = torch.rand(n, generator=g) * 0.02 + 0.001 if per_sample else 2 / 255
        e = eps if isinstance(eps, float) else eps.reshape(-1, *[1] * (len(shape) - 1))
        x_adv = (x0 + (torch.rand(shape, generator=g) * 2 - 1) * e).clamp(0, 1)
    else:
        d = x0[0].numel()
        # per-sample radii around the current perturbation norm: the projection is active for some
        eps = torch.rand(n, generator=g) * 0.02 * d**0.5 + 0.2 if per_sample else 0.5
        alpha = torch.rand(n, generator=g) * 0.3 + 0.05 if per_sample else 0.25
        x_adv = (x0 + 0.02 * torch.randn(shape, generator=g)).clamp(0, 1)
    grad = torch.randn(shape, generator=g)

    def t(v):
        return v.to(device=device, dtype=dtype)

    def to_dev(v):
        return v.to(device) if isinstance(v, torch.Tensor) else v

    return t(x_adv), t(grad), t(x0), to_dev(alpha), to_dev(eps)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_cases(device: str = "cpu") -> dict[str, dict[str, float]]:
    """Kernel vs reference for every case: relative error, max abs error, dtype kept."""
    from mimir_fast.kernels.pgd_step import pgd_step_triton

    out = {}
    for i, (cid, norm, dtype_name, shape, per_sample) in enumerate(CASES):
        dtype = getattr(torch, dtype_name)
        x_adv, grad, x0, alpha, eps = make_inputs(
            norm, dtype, shape, per_sample, seed=100 + i, device=device
        )
        got = pgd_step_triton(x_adv, grad, x0, alpha, eps, norm)
        want = reference(x_adv, grad, x0, alpha, eps, norm)
        proj_got = pgd_step_triton(x_adv, grad, x0, 0.0, eps, norm)
        proj_want = project(x_adv, x0, eps, norm)
        out[cid] = {
            "rel": rel_err(got, want),
            "max_abs": float((got.double() - want.double()).abs().max()),
            "proj_rel": rel_err(proj_got, proj_want),
            "dtype_kept": got.dtype == dtype,
            "changed": float((want.double() - x_adv.double()).abs().max()),
        }
    return out


@pytest.fixture(scope="module")
def interpreter_results():
    if os.environ.get("TRITON_INTERPRET") == "1":
        return run_cases()
    env = {**os.environ, "TRITON_INTERPRET": "1", "MIMIR_FAST_KERNELS": "triton"}
    proc = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.interpreter
@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_kernel_matches_reference_interpreter(interpreter_results, case):
    r = interpreter_results[case]
    dtype = next(c[2] for c in CASES if c[0] == case)
    assert r["dtype_kept"]
    assert r["changed"] > 0  # the step did something: the comparison is not vacuous
    assert r["rel"] <= TOL[dtype], r
    assert r["proj_rel"] <= TOL[dtype], r
    if dtype == "float32":
        assert r["max_abs"] <= 1e-6, r


def test_auto_uses_the_reference_on_cpu():
    assert resolve_kernels("auto", ("pgd_step",), device="cpu") == "torch"
    x_adv, grad, x0, alpha, eps = make_inputs("linf", torch.float32, (3, 1, 7, 5), False, seed=1)
    assert torch.equal(
        pgd_step(x_adv, grad, x0, alpha, eps, "linf"),
        reference(x_adv, grad, x0, alpha, eps, "linf"),
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reference_contract(norm):
    """The reference stays in the ball and in [0, 1], keeps the dtype, and moves along the
    gradient."""
    for dtype in (torch.float32, torch.bfloat16):
        x_adv, grad, x0, alpha, eps = make_inputs(norm, dtype, (4, 3, 9, 9), True, seed=7)
        out = reference(x_adv, grad, x0, alpha, eps, norm)
        assert out.dtype == dtype
        assert out.min() >= 0 and out.max() <= 1
        d = (out.float() - x0.float()).flatten(1)
        dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (dist <= eps * (1 + 1e-5) + (1e-2 if dtype == torch.bfloat16 else 1e-6)).all()
    # an unconstrained step (huge eps, interior point) is exactly x + alpha * direction
    x0 = torch.full((2, 1, 4, 4), 0.5)
    g = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = reference(x0, g, x0, 0.01, 100.0, norm)
    direction = g.sign() if norm == "linf" else g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, x0 + 0.01 * direction, rtol=0, atol=1e-7)


def test_bad_step_inputs_raise():
    x = torch.rand(2, 3)
    with pytest.raises(ValueError):
        reference(x, x, x, 0.1, 0.1, "l1")
    with pytest.raises(ValueError):
        reference(x, torch.rand(2, 4), x, 0.1, 0.1)
    with pytest.raises(ValueError):
        reference(x, x, x, torch.ones(3), 0.1)


@pytest.mark.requires_cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: real-size kernel check"
)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(128, 3, 32, 32), (64, 3, 224, 224), (7, 3, 33, 31)], ids=str)
def test_kernel_matches_reference_cuda(norm, dtype, shape):
    from mimir_fast.kernels.pgd_step import pgd_step_triton

    for per_sample in (False, True):
        x_adv, grad, x0, alpha, eps = make_inputs(
            norm, dtype, shape, per_sample, seed=3, device="cuda"
        )
        got = pgd_step_triton(x_adv, grad, x0, alpha, eps, norm)
        want = reference(x_adv, grad, x0, alpha, eps, norm)
        assert got.dtype == dtype
        assert rel_err(got, want) <= TOL[str(dtype).split(".")[1]]
        if dtype == torch.float32:
            assert float((got - want).abs().max()) <= 1e-6
        assert torch.equal(
            pgd_step(x_adv, grad, x0, alpha, eps, norm, kernels="triton"), got
        )  # the dispatching step runs the kernel


@pytest.mark.requires_cuda
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: real-size kernel check"
)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_attack_same_with_kernel_and_reference_cuda(norm):
    """End to end: PGD/APGD on CUDA through the Triton step agree with the reference path."""
    from mimir_fast.attacks import APGD, PGD
    from mimir_fast.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_small_patch4_32", num_classes=10).cuda().eval()
    x = torch.rand(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    for cls, kw in (
        (PGD, {"alpha": alpha, "steps": 5, "random_start": False}),
        (APGD, {"steps": 5, "seed": 0}),
    ):
        fast = cls(model, eps, norm=norm, kernels="triton", **kw)(x, y)
        ref = cls(model, eps, norm=norm, kernels="torch", **kw)(x, y)
        d = (fast - x).flatten(1)
        dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (dist <= eps * (1 + 1e-5)).all() and fast.min() >= 0 and fast.max() <= 1
        # identical steps, up to fp32 rounding in the model's backward
        assert (
            (fast - ref).abs().max() <= 2 * alpha + 1e-6
            if cls is APGD
            else rel_err(fast, ref) < 1e-3
        )


if __name__ == "__main__":  # the interpreter subprocess
    print(json.dumps(run_cases()))
