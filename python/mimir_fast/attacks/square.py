"""Square attack, L-inf (Andriushchenko et al. 2020): score-based black-box random search.

Written from the paper: start from vertical stripes of +-eps; at every iteration, for each
sample still robust, propose a new perturbation that sets a random square window (side
``sqrt(p * H * W)``, the same random sign of eps over the window for each channel), query the
model once, and keep the proposal when the margin loss ``z_y - max_{k!=y} z_k`` decreases. The
fraction ``p`` starts at ``p_init`` and is halved at iterations 10, 50, 200, 500, 1000, 2000,
4000, 6000, 8000 of a 10000-query budget (rescaled to ``n_queries``). No gradients are used:
the model is only called under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Attack, check_count

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(it: int, n_queries: int, p_init: float) -> float:
    """The window area fraction at iteration ``it`` of an ``n_queries`` budget."""
    i = int(it / n_queries * 10000)
    return p_init / (2 ** sum(i > h for h in _HALVINGS))


class Square(Attack):
    """Square attack (L-inf, untargeted or targeted, margin loss), with a query budget.

    Args:
        model: anything returning logits; only called, never differentiated (a whole
            :class:`~mimir_fast.attacks.Defended` pipeline in the black-box setting).
        eps: L-inf radius.
        n_queries: query budget per sample (including the initial one).
        p_init: initial fraction of the image area changed per query.
        seed: seeds the random search.
    After a call, ``last_queries`` holds the queries spent per sample.
    """

    name = "square"
    uses_gradients = False

    def __init__(
        self,
        model: Any,
        eps: float = 8 / 255,
        n_queries: int = 5000,
        p_init: float = 0.8,
        norm: str = "linf",
        **kwargs: Any,
    ):
        if norm != "linf":
            raise ValueError("Square is implemented for norm='linf' only")
        if "loss" in kwargs:
            raise ValueError("Square uses the margin loss; it takes no loss= argument")
        super().__init__(model, eps, norm=norm, loss="margin", **kwargs)
        self.n_queries = check_count(n_queries, "n_queries")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
        self.p_init = float(p_init)

    def __repr__(self) -> str:
        return f"Square(eps={self.eps:.4g}, n_queries={self.n_queries}, p_init={self.p_init})"

    @torch.no_grad()
    def _margin(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss to minimise (< 0 means success)."""
        loss, _ = self.objective(self.model, x_adv, x_adv, y)  # Margin: > 0 is success
        return -loss.float()

    @torch.no_grad()
    def perturb(self, x, y):
        gen = self._generator(x.device)
        n, c, h, w = x.shape
        eps = self.eps
        xf = x.float()
        stripes = torch.randint(0, 2, (n, c, 1, w), generator=gen, device=x.device).float() * 2 - 1
        delta = (stripes * eps).expand(n, c, h, w).contiguous()
        x_adv = (xf + delta).clamp(0.0, 1.0)
        margin = self._margin(x_adv.to(x.dtype), y)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        for it in range(1, self.n_queries):
            active = (margin >= 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            m = active.numel()
            side = round(math.sqrt(square_p(it, self.n_queries, self.p_init) * h * w))
            side = max(1, min(side, min(h, w) - 1))
            r = torch.randint(0, h - side + 1, (m,), generator=gen, device=x.device)
            q = torch.randint(0, w - side + 1, (m,), generator=gen, device=x.device)
            in_r = (rows[None] >= r[:, None]) & (rows[None] < r[:, None] + side)  # (m, H)
            in_c = (cols[None] >= q[:, None]) & (cols[None] < q[:, None] + side)  # (m, W)
            window = in_r[:, None, :, None] & in_c[:, None, None, :]  # (m, 1, H, W)
            signs = (
                torch.randint(0, 2, (m, c, 1, 1), generator=gen, device=x.device).float() * 2 - 1
            )
            cand_delta = torch.where(window, signs * eps, delta[active])
            cand = (xf[active] + cand_delta).clamp(0.0, 1.0)
            cand_margin = self._margin(cand.to(x.dtype), y[active])
            queries[active] += 1
            better = cand_margin < margin[active]
            keep = active[better]
            delta[keep] = cand_delta[better]
            x_adv[keep] = cand[better]
            margin[keep] = cand_margin[better]
        self.last_queries = queries
        return x_adv.to(x.dtype)
