"""Exact alpha-entmax over the last dimension, with a mask of valid entries.

``alpha-entmax(z)_j = [(alpha - 1) z_j - tau]_+ ^ (1 / (alpha - 1))`` with ``tau`` such that the
output sums to one. ``alpha = 2`` (sparsemax) and ``alpha = 1.5`` have exact sort-based thresholds;
other alphas use bisection run to convergence in float64. Rows without any valid entry give zeros.

The support ``{j : (alpha - 1) z_j > tau}`` is decided on the threshold itself, not on the output being
nonzero: with ``alpha`` near 1 the power ``1 / (alpha - 1)`` is large, and an entry inside the support can
underflow to 0 in the output's dtype (``alpha = 1.01``: ``0.3 ** 100 = 5e-53``) while still being routed.
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


def _masked(p: torch.Tensor, gap: torch.Tensor, mask: torch.Tensor, k: torch.Tensor):
    """``p`` and the support ``gap > 0`` on valid entries of rows with a support; zeros and False elsewhere."""
    keep = mask & (k > 0)
    return torch.where(keep, p, torch.zeros((), dtype=p.dtype, device=p.device)), keep & (gap > 0)


def sparsemax(z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xs, valid_sorted, _ = _sorted_valid(z, mask)
    rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cs = xs.cumsum(-1)
    support = (1 + rho * xs > cs) & valid_sorted
    tau = (cs - 1) / rho
    tau_star, k = _support_threshold(tau, support)
    gap = z - tau_star
    return _masked(gap.clamp(min=0), gap, mask, k)


def entmax15(z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    gap = x - tau_star
    return _masked(gap.clamp(min=0) ** 2, gap, mask, k)


def entmax_bisect(z: torch.Tensor, mask: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
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
    gap = x - lo  # -inf off the mask
    p = gap.clamp(min=0).pow(inv)
    p = p / p.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    p, support = _masked(p, gap, mask, mask.sum(-1, keepdim=True))
    return p.to(dtype), support


def entmax(z: torch.Tensor, alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """alpha-entmax of ``z`` over its last dimension, restricted to ``mask`` (zeros elsewhere).

    >>> entmax(torch.tensor([[2.0, 1.0, -5.0]]), 1.5)
    tensor([[0.8307, 0.1693, 0.0000]])
    """
    return entmax_with_support(z, alpha, mask)[0]


def entmax_with_support(
    z: torch.Tensor, alpha: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(entmax(z, alpha, mask), support)``: the support is ``(alpha - 1) z > tau`` on the mask, which the
    output's own nonzeros miss where a tiny probability underflows (alpha near 1).

    >>> p, support = entmax_with_support(torch.tensor([[100.0, 30.0, -200.0]]), 1.01)
    >>> p[0, 1].item(), support.tolist()  # 0.3 ** 100 = 5e-53 underflows in float32
    (0.0, [[True, True, False]])
    """
    if not (1.0 < alpha <= 2.0):
        raise ValueError(f"alpha={alpha!r} must be in (1, 2]")
    if mask is None:
        mask = torch.ones_like(z, dtype=torch.bool)
    mask = mask.expand_as(z)
    if z.shape[-1] == 0:
        return torch.zeros_like(z), torch.zeros_like(z, dtype=torch.bool)
    if alpha == 2.0:
        return sparsemax(z, mask)
    if alpha == 1.5:
        return entmax15(z, mask)
    return entmax_bisect(z, mask, alpha)
