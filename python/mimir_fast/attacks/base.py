"""The :class:`Attack` base class, the dispatching :func:`pgd_step`, and shared helpers.

Every attack is called as ``x_adv = atk(x, y)`` (torchattacks' convention). During the call
the model is in eval mode, its parameters do not require gradients (so none are computed or
leak into ``.grad``), and MaskedViT's per-forward input checks are off (the attack validates
its inputs once; its iterates stay in [0, 1] by construction). All of it is restored after.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .._validate import check_int, check_positive
from ..kernels import resolve_kernels
from ..ops.pgd_step import NORMS, pgd_step
from .batching import DEFAULT_MAX_BATCH, RunRows, batched_runs
from .objectives import Objective, get_objective

__all__ = [
    "DEFAULT_MAX_BATCH",
    "PGD_STEP_TRITON_OPS",
    "Attack",
    "attack_mode",
    "check_images",
    "check_labels",
    "num_classes_of",
    "pgd_step",
    "random_start",
]

# The attacks' op with a Triton kernel: the projected step (mimir_fast.ops.pgd_step).
PGD_STEP_TRITON_OPS = ("pgd_step",)


@contextmanager
def attack_mode(model: Any) -> Iterator[None]:
    """Eval mode, frozen parameters and no per-forward input checks; everything restored after."""
    if not isinstance(model, nn.Module):
        yield
        return
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    checked = [m for m in modules if getattr(m, "check_inputs", None) is True]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    for m in checked:
        m.check_inputs = False
    try:
        yield
    finally:
        for m, t in zip(modules, training):
            m.training = t
        for p, r in zip(params, requires):
            p.requires_grad_(r)
        for m in checked:
            m.check_inputs = True


def num_classes_of(model: Any) -> int | None:
    """The model's number of classes when it says (a ``num_classes`` attribute, also on a
    Defended's classifier); else None."""
    for obj in (model, getattr(model, "classifier", None)):
        n = getattr(obj, "num_classes", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_images(x: Any, name: str = "x", values: bool = True) -> None:
    """Type and shape of a batch of images; with ``values``, also finite and in [0, 1] (values
    read back to the host: a GPU synchronisation)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")  # noqa: TRY004 (bad input is a ValueError throughout)
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor of images in [0, 1], got {x.dtype}"
        )
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty batch (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if not values:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] (attacks clamp to that range), got values in "
            f"[{lo:.4g}, {hi:.4g}]; undo any normalisation and move it into the model"
        )


def check_labels(
    y: Any, n: int, num_classes: int | None, name: str = "y", values: bool = True
) -> torch.Tensor:
    """``y`` as (n,) int64 class indices; with ``values``, also in range (a host read)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")  # noqa: TRY004 (bad input is a ValueError throughout)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match the batch of images, got {tuple(y.shape)}"
        )
    if values and n and int(y.min()) < 0:
        raise ValueError(f"{name} has a negative label {int(y.min())}")
    if values and num_classes is not None and n and int(y.max()) >= num_classes:
        raise ValueError(f"{name} has label {int(y.max())} but the model has {num_classes} classes")
    return y.long()


@contextmanager
def _label_range_check(attack: Attack, y: torch.Tensor) -> Iterator[None]:
    """Raise ValueError at the model's first forward when a label has no class in its logits.

    For models that do not say their class count (:func:`check_labels` knew it otherwise): the
    count is known once logits come back, so the check runs after the first forward of the call
    (a forward hook that removes itself, or a wrapper of a plain callable) and costs nothing
    after it.
    """
    model = attack.model
    if (
        not attack.check_inputs
        or not attack.objective.classification
        or num_classes_of(model) is not None
    ):
        yield
        return
    top = int(y.max())

    def check(logits: Any) -> None:
        if isinstance(logits, torch.Tensor) and logits.ndim == 2 and top >= logits.shape[1]:
            raise ValueError(f"y has label {top} but the model has {logits.shape[1]} classes")

    if isinstance(model, nn.Module):

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            handle.remove()  # one check per call
            check(output)

        handle = model.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
        return
    attack.model = _FirstCallCheck(model, check)
    try:
        yield
    finally:
        attack.model = model


class _FirstCallCheck:
    """A plain callable model whose first output goes through ``check``; attributes pass through."""

    def __init__(self, fn: Callable, check: Callable[[Any], None]):
        self.fn, self.check, self.pending = fn, check, True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(*args, **kwargs)
        if self.pending:
            self.pending = False
            self.check(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fn, name)


def _compile_options(value: Any) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from the ``compile`` option (None: off)."""
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise ValueError(
        f"compile must be True, False or a dict of torch.compile options, got {value!r}"
    )


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform point of the eps-ball around ``x`` (L-inf box or L2 ball), clamped to [0, 1]."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        delta = (2 * noise - 1) * eps
    else:
        n = x.shape[0]
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        direction = direction / torch.linalg.vector_norm(direction.reshape(n, -1), dim=1).clamp_min(
            1e-12
        ).reshape(-1, *[1] * (x.ndim - 1))
        radius = eps * torch.rand(n, generator=generator, device=x.device) ** (1.0 / d)
        delta = direction * radius.reshape(-1, *[1] * (x.ndim - 1))
    return (x.float() + delta).clamp(0.0, 1.0).to(x.dtype)


class Attack(ABC):
    """Base class: validation, model state, EOT gradients, success test.

    Args:
        model: a classifier ``model(x) -> logits`` (an ``nn.Module`` or any callable), e.g. a
            MaskedViT or a :class:`~mimir_fast.attacks.Defended` pipeline.
        eps: radius of the threat model (L-inf or L2), > 0.
        norm: "linf" or "l2".
        loss: what to maximise: "ce", "dlr", "margin", "mim", "feature", an
            :class:`~mimir_fast.attacks.objectives.Objective` or a callable
            ``loss(model, x_adv, x, y)``.
        targeted: ``y`` holds target labels, which the attack tries to reach.
        eot_iter: gradients averaged over this many forward/backward passes per step
            (Expectation over Transformation, for randomised models); default: the model's
            ``eot_samples`` attribute (a Defended sets it), else 1.
        seed: seeds the attack's randomness at every call (None: the global RNG).
        kernels: projected-step path: "auto" (the Triton kernel where a GPU run verified it
            correct and faster, see docs/gpu.md), "torch" or "triton".
        max_batch: the most images the attack puts through the model at once. Restarts and
            target classes run together as one batch (N x runs) up to it, in chunks beyond it;
            the per-sample result equals running them one after another (``max_batch=1``).
        compile: run the model through ``torch.compile`` during the attack: True (its default
            mode), or a dict of ``torch.compile`` options, e.g. ``{"mode": "reduce-overhead"}``
            (CUDA graphs on a GPU). Off by default: it has not been measured to pay on a GPU
            yet, and on the CPU compiling costs more than it saves at attack sizes.

    Attributes:
        check_inputs: check at each call that the images are finite and in [0, 1] and the labels
            in range (True). These checks read values back to the host, a synchronisation on a
            GPU; a training loop whose data is already checked sets it False (as MaskedViT's).
    """

    name = "attack"
    check_inputs = True
    uses_gradients = True
    norms: tuple[str, ...] = NORMS  # the threat models the attack implements

    def __init__(
        self,
        model: Any,
        eps: float,
        norm: str = "linf",
        loss: str | Objective | Callable = "ce",
        targeted: bool = False,
        eot_iter: int | None = None,
        seed: int | None = None,
        kernels: str = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
        compile: bool | dict[str, Any] = False,
    ):
        if not callable(model):
            raise ValueError(
                f"model must be callable (an nn.Module or a function), got {type(model).__name__}"
            )  # noqa: TRY004 (bad input is a ValueError throughout)
        if norm not in self.norms:
            raise ValueError(f"norm must be one of {self.norms}, got {norm!r}")
        self.model = model
        self.eps = check_positive(eps, "eps")
        self.norm = norm
        self.targeted = bool(targeted)
        self.objective = get_objective(loss, targeted=self.targeted)
        if eot_iter is None:
            eot_iter = int(getattr(model, "eot_samples", 1))
        self.eot_iter = check_int(eot_iter, "eot_iter", low=1)
        self.seed = seed
        self.kernels = kernels
        resolve_kernels(kernels, PGD_STEP_TRITON_OPS, device="cpu")  # validates the choice
        self.max_batch = check_int(max_batch, "max_batch", low=1)
        self.compile_options = _compile_options(compile)
        self._compiled: tuple[Any, Any] | None = None  # (model, its compiled version)
        self.last_queries: torch.Tensor | None = None

    # ------------------------------------------------------------------ public call
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial examples for images ``x`` (N, C, H, W) in [0, 1] and labels ``y`` (N,)."""
        check_images(x, values=self.check_inputs)
        if y is None:
            if self.objective.classification:
                raise ValueError("y (labels) is required for a classification attack")
            y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        num_classes = num_classes_of(self.model) if self.objective.classification else None
        y = check_labels(y, x.shape[0], num_classes, values=self.check_inputs)
        y = y.to(x.device)
        with attack_mode(self.model), _label_range_check(self, y), self._compiled_model():
            x_adv = self.perturb(x.detach(), y)
        return x_adv.detach()

    @contextmanager
    def _compiled_model(self) -> Iterator[None]:
        """With ``compile``: ``self.model`` is its compiled version for the call (compiled once
        per model and kept)."""
        if self.compile_options is None:
            yield
            return
        model = self.model
        if self._compiled is None or self._compiled[0] is not model:
            self._compiled = (model, torch.compile(model, **self.compile_options))
        self.model = self._compiled[1]
        try:
            yield
        finally:
            self.model = model

    forward = __call__

    @abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for validated inputs (the model is already in attack mode)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:.4g}, norm={self.norm!r}, "
            f"loss={self.objective!r})"
        )

    # ------------------------------------------------------------------ helpers
    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))

    def _step(self, x_adv, grad, x0, alpha, eps=None):
        return pgd_step(
            x_adv, grad, x0, alpha, self.eps if eps is None else eps, self.norm, self.kernels
        )

    def _loss_grad(
        self,
        x_adv: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        objective: Objective | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per-sample loss, logits (last EOT draw) and the gradient averaged over ``eot_iter``
        draws."""
        objective = objective or self.objective
        loss_sum = grad_sum = logits = None
        for _ in range(self.eot_iter):
            xa = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss, logits = objective(self.model, xa, x, y)
                (grad,) = torch.autograd.grad(loss.sum(), xa)
            loss = loss.detach()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            grad_sum = grad if grad_sum is None else grad_sum + grad
        if self.eot_iter > 1:
            loss_sum, grad_sum = loss_sum / self.eot_iter, grad_sum / self.eot_iter
        return loss_sum, (None if logits is None else logits.detach()), grad_sum

    @torch.no_grad()
    def _loss(self, x_adv, x, y, objective: Objective | None = None):
        """Per-sample loss and logits at ``x_adv`` without gradients."""
        loss, logits = (objective or self.objective)(self.model, x_adv, x, y)
        return loss.detach().float(), (None if logits is None else logits.detach())

    def _fooled(self, logits: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor | None:
        """Which samples reached the attack's goal (None for non-classification objectives)."""
        if logits is None:
            return None
        pred = logits.argmax(dim=1)
        return pred == y if self.targeted else pred != y

    # ------------------------------------------------------------------ restarts and targets
    def _start(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """One run's starting point for the whole batch: random in the ball, or ``x``."""
        if getattr(self, "random_start", False):
            return random_start(x, self.eps, self.norm, gen)
        return x

    def _batched_runs(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        run: RunRows,
        targets: Sequence[torch.Tensor | None] = (None,),
        restarts: int = 1,
        done: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Every (target, restart) run as few batches as ``max_batch`` allows: see
        :func:`~mimir_fast.attacks.batching.batched_runs`."""
        return batched_runs(self, x, y, run, targets, restarts, done)
