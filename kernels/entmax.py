"""Exact alpha-entmax over the last dimension, with a mask of valid entries.

``alpha-entmax(z)_j = [(alpha - 1) z_j - tau]_+ ^ (1 / (alpha - 1))`` with ``tau`` such that the
output sums to one. ``alpha = 2`` (sparsemax) and ``alpha = 1.5`` have exact sort-based thresholds;
other alphas use bisection run to convergence in float64. Rows without any valid entry give zeros.
"""

from __future__ import annotations

import torch

_BISECT_MAX_ITERS = 200


def _sorted_valid(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    neg = torch.finfo(x.dtype).min
    xs, order = torch.sort(torch.where(mask, x, neg), dim=-1, descending=True)
    valid_sorted = torch.gather(mask, -1, order)
    xs = torch.where(valid_sorted, xs, torch.zeros((), dtype=x.dtype, device=x.device))
    return xs, valid_sorted, order


def _support_threshold(tau: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = support.sum(-1, keepdim=True)
    tau_star = torch.gather(tau, -1, (k - 1).clamp(min=0))
    return tau_star, k


def sparsemax(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    xs, valid_sorted, _ = _sorted_valid(z, mask)
    rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cs = xs.cumsum(-1)
    support = (1 + rho * xs > cs) & valid_sorted
    tau = (cs - 1) / rho
    tau_star, k = _support_threshold(tau, support)
    p = (z - tau_star).clamp(min=0)
    return torch.where(mask & (k > 0), p, torch.zeros((), dtype=z.dtype, device=z.device))


def entmax15(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = z / 2
    xs, valid_sorted, _ = _sorted_valid(x, mask)
    rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    mean = xs.cumsum(-1) / rho
    mean_sq = (xs * xs).cumsum(-1) / rho
    ss = rho * (mean_sq - mean * mean)
    delta = (1 - ss) / rho
    tau = mean - delta.clamp(min=0).sqrt()
    support = (tau <= xs) & valid_sorted
    tau_star, k = _support_threshold(tau, support)
    p = (x - tau_star).clamp(min=0) ** 2
    return torch.where(mask & (k > 0), p, torch.zeros((), dtype=z.dtype, device=z.device))


def entmax_bisect(z: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    dtype = z.dtype
    x = torch.where(mask, (alpha - 1) * z.double(), torch.full((), float("-inf"), dtype=torch.float64))
    n = mask.sum(-1, keepdim=True).clamp(min=1).double()
    xmax = x.max(-1, keepdim=True).values
    xmax = torch.where(torch.isfinite(xmax), xmax, torch.zeros_like(xmax))
    lo = xmax - 1.0  # f(lo) >= 0: the max entry alone contributes 1
    hi = xmax - (1.0 / n) ** (alpha - 1)  # f(hi) <= 0
    inv = 1.0 / (alpha - 1)
    for _ in range(_BISECT_MAX_ITERS):
        mid = (lo + hi) / 2
        if bool(((mid == lo) | (mid == hi)).all()):
            break  # the interval cannot shrink further in float64: converged
        f = (x - mid).clamp(min=0).pow(inv).sum(-1, keepdim=True) - 1
        lo = torch.where(f >= 0, mid, lo)
        hi = torch.where(f >= 0, hi, mid)
    p = (x - lo).clamp(min=0).pow(inv)
    p = p / p.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(mask.sum(-1, keepdim=True) > 0, p, torch.zeros_like(p)).to(dtype)


def entmax(z: torch.Tensor, alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """alpha-entmax of ``z`` over its last dimension, restricted to ``mask`` (zeros elsewhere).

    >>> entmax(torch.tensor([[2.0, 1.0, -5.0]]), 1.5)
    tensor([[0.8307, 0.1693, 0.0000]])
    """
    if not (1.0 < alpha <= 2.0):
        raise ValueError(f"alpha={alpha!r} must be in (1, 2]")
    if mask is None:
        mask = torch.ones_like(z, dtype=torch.bool)
    mask = mask.expand_as(z)
    if z.shape[-1] == 0:
        return torch.zeros_like(z)
    if alpha == 2.0:
        return sparsemax(z, mask)
    if alpha == 1.5:
        return entmax15(z, mask)
    return entmax_bisect(z, mask, alpha)
