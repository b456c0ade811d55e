"""Square attack (Andriushchenko et al. 2020): score-based black-box random search, L-inf and L2.

Written from the paper. At every iteration, for each sample still robust, the attack proposes a
new perturbation that changes a random square window (side ``sqrt(p * H * W)``), queries the
model once, and keeps the proposal when the margin loss ``z_y - max_{k!=y} z_k`` decreases. The
fraction ``p`` starts at ``p_init`` and is halved at iterations 10, 50, 200, 500, 1000, 2000,
4000, 6000, 8000 of a 10000-query budget (rescaled to ``n_queries``).

- L-inf: start from vertical stripes of +-eps; a proposal sets the window to one random sign of
  eps per channel.
- L2: start from a 5 x 5 grid of tiles, each holding the centred pattern below with a random
  sign per channel, scaled to norm eps. A proposal picks two windows W1 and W2; per channel it
  moves the perturbation's mass in W1 and W2, plus an even share of the unused budget
  ``eps^2 - ||delta||^2``, into W1 as the normalised sum of the old W1 content and a new
  centred pattern of random sign, and clears W2. The total norm stays at most eps.

The centred pattern of side ``h`` (the paper's eta) is ``sum_{k=0}^{n-d} 1 / (n + 1 - k)^2`` at
Chebyshev distance ``d`` from the window's centre, ``n = h // 2``: rings that grow towards the
centre. No gradients are used: the model is only called under ``torch.inference_mode()``.

Only the points still robust are queried, and (L-inf) only with a candidate that differs from
their present image: a query of the same image cannot improve it. Their state is kept compact
(it shrinks as points fall). Per query, the host syncs are those that choose what the model
sees: which points are still robust and, for L-inf, which candidates changed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validate import check_int, check_number
from .base import Attack

__all__ = ["Square", "centred_pattern", "square_p"]

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_INIT_TILES = 5  # the L2 start: a grid of 5 x 5 tiles


def square_p(it: int, n_queries: int, p_init: float) -> float:
    """The window area fraction at iteration ``it`` of an ``n_queries`` budget."""
    i = int(it / n_queries * 10000)
    return p_init / (2 ** sum(i > h for h in _HALVINGS))


def centred_pattern(side: int, device: torch.device | None = None) -> torch.Tensor:
    """The paper's centred pattern eta of shape (side, side), scaled to unit L2 norm."""
    n = side // 2
    idx = torch.arange(side, device=device)
    ring = (idx - n).abs()  # (side,) distance to the centre along one axis
    dist = torch.maximum(ring[:, None], ring[None, :])  # (side, side) Chebyshev distance
    inv_sq = 1.0 / torch.arange(n + 1, 0, -1, device=device, dtype=torch.float32) ** 2  # k=0..n
    ring_value = inv_sq.flip(0).cumsum(0).flip(0)  # value at distance d: sum over k <= n - d
    eta = ring_value[dist]  # (side, side)
    return eta / eta.norm()


def _window_masks(
    corner_row: torch.Tensor, corner_col: torch.Tensor, side: int, h: int, w: int
) -> torch.Tensor:
    """(m, 1, H, W) booleans: the square of ``side`` whose top-left corner is given per sample."""
    rows = torch.arange(h, device=corner_row.device)
    cols = torch.arange(w, device=corner_row.device)
    in_r = (rows[None] >= corner_row[:, None]) & (rows[None] < corner_row[:, None] + side)  # (m, H)
    in_c = (cols[None] >= corner_col[:, None]) & (cols[None] < corner_col[:, None] + side)  # (m, W)
    return in_r[:, None, :, None] & in_c[:, None, None, :]


def _placed_pattern(
    corner_row: torch.Tensor, corner_col: torch.Tensor, side: int, h: int, w: int
) -> torch.Tensor:
    """(m, 1, H, W): the unit centred pattern inside each sample's window, zero outside."""
    eta = centred_pattern(side, corner_row.device)
    rows = torch.arange(h, device=corner_row.device)
    cols = torch.arange(w, device=corner_row.device)
    r = (rows[None] - corner_row[:, None]).clamp(0, side - 1)  # (m, H) row inside the window
    c = (cols[None] - corner_col[:, None]).clamp(0, side - 1)  # (m, W)
    placed = eta[r[:, :, None], c[:, None, :]]  # (m, H, W)
    window = _window_masks(corner_row, corner_col, side, h, w)
    return torch.where(window, placed[:, None], 0.0)


def _random_signs(shape: tuple[int, ...], gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=device).float() * 2 - 1


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """(N,) L2 norm of each sample of ``t``."""
    return t.flatten(1).norm(dim=1)


class Square(Attack):
    """Square attack (L-inf or L2, untargeted or targeted, margin loss), with a query budget.

    Args:
        model: anything returning logits; only called, never differentiated (a whole
            :class:`~mimir_fast.attacks.Defended` pipeline in the black-box setting).
        eps: radius of the threat model.
        n_queries: query budget per sample (including the initial one).
        p_init: initial fraction of the image area changed per query.
        norm: "linf" or "l2" (any case).
        seed: seeds the random search.
    Only the samples still robust are queried, each with a changed image; after a call,
    ``last_queries`` holds the queries (model calls) spent per sample.
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
        if "loss" in kwargs:
            raise ValueError("Square uses the margin loss; it takes no loss= argument")
        norm = norm.lower() if isinstance(norm, str) else norm  # "Linf" / "L2" as torchattacks
        super().__init__(model, eps, norm=norm, loss="margin", **kwargs)
        self.n_queries = check_int(n_queries, "n_queries", 1)
        self.p_init = check_number(p_init, "p_init", 0, 1, low_open=True)

    def __repr__(self) -> str:
        norm = "" if self.norm == "linf" else f", norm={self.norm!r}"
        return f"Square(eps={self.eps:.4g}, n_queries={self.n_queries}, p_init={self.p_init}{norm})"

    def _margin(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss to minimise (< 0 means success), from a forward without autograd."""
        with torch.inference_mode():
            loss, _ = self.objective(self.model, x_adv, x_adv, y)  # Margin: > 0 is success
            return -loss.float()

    def _query(
        self,
        cand: torch.Tensor,
        y: torch.Tensor,
        margin: torch.Tensor,
        current: torch.Tensor | None,
        queries: torch.Tensor,
    ) -> torch.Tensor:
        """The margins of the candidates ``cand`` (m, C, H, W); ``queries`` (m,) counts the
        model calls per point, in place.

        With ``current`` (the points' present images), a candidate equal to it is not queried:
        it keeps its ``margin`` and cannot be accepted. An L-inf proposal often sets a window to
        the signs it already has, the more so as windows shrink to a pixel (on the demo's
        digits, about 40% of the candidates of 5000 queries). Which candidates to query costs
        a second host sync per query.
        """
        if current is None:
            queries += 1
            return self._margin(cand, y)
        changed = (cand != current).flatten(1).any(1)  # (m,)
        asked = changed.nonzero().squeeze(1)
        out = margin.clone()
        if asked.numel():
            out[asked] = self._margin(cand[asked], y[asked])
            queries[asked] += 1
        return out

    def _side(self, it: int, h: int, w: int) -> int:
        side = round(math.sqrt(square_p(it, self.n_queries, self.p_init) * h * w))
        return max(1, min(side, min(h, w) - 1))

    @torch.no_grad()
    def perturb(self, x, y):
        gen = self._generator(x.device)
        n, _, h, w = x.shape
        xf = x.float()
        linf = self.norm == "linf"
        propose = self._propose_linf if linf else self._propose_l2
        delta = self._init_linf(xf, gen) if linf else self._init_l2(xf, gen)
        out = (xf + delta).clamp(0.0, 1.0)  # (N, C, H, W) the result of every point
        if not linf:
            delta = out - xf  # L2 tracks the perturbation left after the box
        margin = self._margin(out.to(x.dtype), y)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        ids = (margin >= 0).nonzero().squeeze(1)  # (m,) the points still robust, and their state
        xs, ys, ds, adv, ms, qs = (t[ids] for t in (xf, y, delta, out, margin, queries))
        for it in range(1, self.n_queries):
            if ids.numel() == 0:
                break
            cand_delta = propose(ds, self._side(it, h, w), gen)
            cand = (xs + cand_delta).clamp(0.0, 1.0)
            if not linf:
                cand_delta = cand - xs
            cand_margin = self._query(cand.to(x.dtype), ys, ms, adv if linf else None, qs)
            better = cand_margin < ms  # (m,)
            keep = better.reshape(-1, 1, 1, 1)
            ds, adv = torch.where(keep, cand_delta, ds), torch.where(keep, cand, adv)
            ms = torch.where(better, cand_margin, ms)
            robust = ms >= 0
            if not bool(robust.all()):  # a host sync per query: which points are still robust
                fooled = (~robust).nonzero().squeeze(1)
                out[ids[fooled]], queries[ids[fooled]] = adv[fooled], qs[fooled]
                kept = robust.nonzero().squeeze(1)
                ids, xs, ys, ds, adv, ms, qs = (t[kept] for t in (ids, xs, ys, ds, adv, ms, qs))
        out[ids], queries[ids] = adv, qs
        self.last_queries = queries
        return out.to(x.dtype)

    # ------------------------------------------------------------------ L-inf
    def _init_linf(self, xf: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Vertical stripes of +-eps, one random sign per column and channel."""
        n, c, h, w = xf.shape
        stripes = torch.randint(0, 2, (n, c, 1, w), generator=gen, device=xf.device).float() * 2 - 1
        return (stripes * self.eps).expand(n, c, h, w).contiguous()

    def _propose_linf(
        self, delta: torch.Tensor, side: int, gen: torch.Generator | None
    ) -> torch.Tensor:
        """``delta`` with one random window set to +-eps (one sign per channel)."""
        m, c, h, w = delta.shape
        r = torch.randint(0, h - side + 1, (m,), generator=gen, device=delta.device)
        q = torch.randint(0, w - side + 1, (m,), generator=gen, device=delta.device)
        window = _window_masks(r, q, side, h, w)  # (m, 1, H, W)
        signs = _random_signs((m, c, 1, 1), gen, delta.device)
        return torch.where(window, signs * self.eps, delta)

    # ------------------------------------------------------------------ L2
    def _init_l2(self, xf: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """A grid of 5 x 5 tiles of centred patterns with random signs, scaled to norm eps."""
        n, c, h, w = xf.shape
        tile = max(1, min(h, w) // _INIT_TILES)
        grid_h, grid_w = min(_INIT_TILES, h // tile), min(_INIT_TILES, w // tile)
        top, left = (h - grid_h * tile) // 2, (w - grid_w * tile) // 2
        eta = centred_pattern(tile, xf.device)  # (tile, tile)
        signs = _random_signs((n, c, grid_h, grid_w), gen, xf.device)
        tiles = signs[:, :, :, None, :, None] * eta[:, None, :]  # (n, c, gh, tile, gw, tile)
        delta = torch.zeros_like(xf)
        delta[:, :, top : top + grid_h * tile, left : left + grid_w * tile] = tiles.reshape(
            n, c, grid_h * tile, grid_w * tile
        )
        return delta * (self.eps / _l2_norms(delta).clamp_min(1e-12)).reshape(-1, 1, 1, 1)

    def _propose_l2(self, delta: torch.Tensor, side: int, gen: torch.Generator | None):
        """``delta`` with the mass of windows W1 and W2 (and the unused budget) moved into W1."""
        m, c, h, w = delta.shape
        corners = [
            torch.randint(0, size - side + 1, (m,), generator=gen, device=delta.device)
            for size in (h, w, h, w)
        ]
        w1 = _window_masks(corners[0], corners[1], side, h, w)  # (m, 1, H, W)
        w2 = _window_masks(corners[2], corners[3], side, h, w)
        pattern = _placed_pattern(corners[0], corners[1], side, h, w)  # (m, 1, H, W), unit norm
        signs = _random_signs((m, c, 1, 1), gen, delta.device)
        unused = (self.eps**2 - _l2_norms(delta) ** 2).clamp_min(0.0)  # (m,)
        mass = (delta * (w1 | w2)).pow(2).sum((2, 3))  # (m, c) squared norm in W1 and W2
        budget = (mass + unused[:, None] / c).sqrt()  # (m, c)
        old = delta * w1
        old = old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new = signs * pattern + old  # (m, c, H, W), zero outside W1
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        cand = torch.where(w1 | w2, new * budget[:, :, None, None], delta)
        scale = (self.eps / _l2_norms(cand).clamp_min(1e-12)).clamp(max=1.0)  # rounding guard
        return cand * scale.reshape(-1, 1, 1, 1)
