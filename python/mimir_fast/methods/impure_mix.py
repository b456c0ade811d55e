"""IMPure's training attacks: a mix of attacks on the target classifier, one drawn per image.

The authors (Liu et al. 2023, arXiv 2311.15339; their released data scripts) train the purifier
on a shuffled union of datasets, one per attack on the same images of each target classifier:
clean images, FGSM, PGD, MI-FGSM, DI-FGSM without and with momentum, CW-L2, APGD-CE, APGD-DLR
and DeepFool, at eps 16/255 (L-inf). Shuffling the union puts a different attack behind each
image of a batch. :class:`AttackMix` does the same on the fly: every image of a batch draws one
attack of the mix uniformly, and each attack runs once on the images that drew it.

Budgets (the authors' scripts, for eps 16/255: step 4/255, 10 iterations), with ``step`` and
``steps`` settable:

- ``clean``: the image itself; ``fgsm``: one step of eps;
- ``pgd``: ``steps`` sign steps of ``step`` from a uniform random start;
- ``mifgsm``: MI-FGSM, ``steps`` steps of ``step``, momentum 1;
- ``difgsm`` / ``mdifgsm``: DI-FGSM (resize 0.9, probability 0.5), momentum 0 / 1;
- ``apgd-ce`` / ``apgd-dlr``: APGD, ``steps`` iterations (its own step-size schedule);
- ``cw``: Carlini-Wagner L2, 50 Adam steps of lr 0.01 (the authors' iterations and rate),
  then projected onto the L-inf eps-ball, as the authors clip it. mimir-fast's CW runs one
  constant (c = 1, kappa = 0) where the authors' runs a binary search over c from 0.1 with a
  confidence of 40; a point it does not fool stays clean.

DeepFool is not in the library, so it is not in the default mix.
"""

from __future__ import annotations

from typing import Any

import torch

from ..attacks import APGD, CW, DIFGSM, FGSM, MIFGSM, PGD

__all__ = ["DEFAULT_IMPURE_ATTACKS", "IMPURE_ATTACKS", "AttackMix", "build_impure_attack"]

IMPURE_ATTACKS = (
    "clean",
    "fgsm",
    "pgd",
    "cw",
    "mifgsm",
    "difgsm",
    "mdifgsm",
    "apgd-ce",
    "apgd-dlr",
)
# the authors' training mix, less DeepFool (not in the library)
DEFAULT_IMPURE_ATTACKS = IMPURE_ATTACKS
CW_STEPS, CW_LR = 50, 0.01  # the authors' CW-L2 iterations and Adam rate


class _Clean:
    """The identity 'attack': the authors' mix holds the clean images too."""

    name = "clean"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()


class _ProjectedCW:
    """CW-L2, its result clipped to the L-inf ball of radius ``eps`` around the clean image."""

    name = "cw"

    def __init__(self, model: Any, eps: float, **kwargs: Any):
        self.eps = eps
        self.attack = CW(model, steps=CW_STEPS, lr=CW_LR, **kwargs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(x, y)
        return (x + (x_adv - x).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)


def build_impure_attack(
    name: str, model: Any, eps: float, step: float, steps: int, kernels: str = "auto"
) -> Any:
    """One attack of IMPure's mix, called as ``attack(x, y) -> x_adv``.

    Args:
        name: one of :data:`IMPURE_ATTACKS`.
        model: the (frozen) target classifier.
        eps: L-inf radius; step, steps: step size and iterations of the iterative attacks.
        kernels: projected-step path of the gradient attacks.

    Raises:
        ValueError: an unknown name.
    """
    common = {"kernels": kernels}
    iterative = {"alpha": step, "steps": steps, **common}
    if name == "clean":
        return _Clean()
    if name == "fgsm":
        return FGSM(model, eps, **common)
    if name == "pgd":
        return PGD(model, eps, random_start=True, **iterative)
    if name == "mifgsm":
        return MIFGSM(model, eps, decay=1.0, **iterative)
    if name in ("difgsm", "mdifgsm"):
        return DIFGSM(model, eps, decay=1.0 if name == "mdifgsm" else 0.0, **iterative)
    if name in ("apgd-ce", "apgd-dlr"):
        return APGD(model, eps, steps=steps, loss=name.split("-")[1], **common)
    if name == "cw":
        return _ProjectedCW(model, eps, **common)
    raise ValueError(f"unknown IMPure attack {name!r}; impure_attacks takes {IMPURE_ATTACKS}")


class AttackMix:
    """Adversarial examples where every image draws one attack of ``names`` uniformly.

    The draw uses the global random generator (the trainer seeds it); a mix of one attack draws
    nothing. ``last_choice`` holds the (N,) index into ``names`` of the latest call.

    Args:
        model: the frozen target classifier.
        names: attacks of :data:`IMPURE_ATTACKS`, at least one.
        eps: L-inf radius (IMPure: 16/255).
        step: step size of the iterative attacks (default eps / 4: 4/255 at 16/255).
        steps: iterations of the iterative attacks (default 10).
        kernels: projected-step path of the gradient attacks.
    """

    def __init__(
        self,
        model: Any,
        names: list[str] | tuple[str, ...] = DEFAULT_IMPURE_ATTACKS,
        eps: float = 16 / 255,
        step: float | None = None,
        steps: int | None = None,
        kernels: str = "auto",
    ):
        if isinstance(names, str) or not names:
            raise ValueError(f"impure_attacks must be a non-empty list of names, got {names!r}")
        self.names = tuple(names)
        self.eps = float(eps)
        self.step = self.eps / 4 if step is None else float(step)
        self.steps = 10 if steps is None else int(steps)
        self.attacks = [
            build_impure_attack(n, model, self.eps, self.step, self.steps, kernels)
            for n in self.names
        ]
        self.last_choice: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"AttackMix({', '.join(self.names)}; eps={self.eps:.4g}, step={self.step:.4g}, "
            f"steps={self.steps})"
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples (N, C, H, W) for images ``x`` and labels ``y``."""
        n = x.shape[0]
        if len(self.attacks) == 1:
            self.last_choice = torch.zeros(n, dtype=torch.long)
            return self.attacks[0](x, y).to(x.dtype)
        choice = torch.randint(len(self.attacks), (n,))  # (N,) on the CPU: indices to route by
        self.last_choice = choice
        out = x.detach().clone()
        for i, attack in enumerate(self.attacks):
            rows = (choice == i).nonzero().flatten().to(x.device)
            if rows.numel():
                out[rows] = attack(x[rows], y[rows]).to(x.dtype)
        return out
