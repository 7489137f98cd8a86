"""Kernel (compressed) keys of ``nsa`` and ``infllmv2`` on the GPU, kept incrementally for decoding.

``kc_m = mean(k[m*stride : m*stride + kernel_size])`` (METHODS.md), computed in float32 and stored as the
16-bit high part and 16-bit residual that the routing kernels multiply on tensor cores (float32 inputs:
the float32 keys themselves; ``score_precision="input"``: the high part alone). A decode step appends only
the kernels that became complete, so routing never re-reads the whole cache to rebuild them.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.launch import chain_options, last_dim_contiguous, next_pow2
from dash_eval.kernels._triton.ops import chain_start, dim_mask, round_to


@dataclasses.dataclass
class KernelKeys:
    """Kernel keys of one layer: the first ``count`` of ``capacity`` kernels are valid."""

    hi: torch.Tensor  # [B, Hkv, capacity, D], the inputs' dtype (float32 inputs: the keys themselves)
    lo: torch.Tensor | None  # [B, Hkv, capacity, D] residual for 16-bit inputs, else None
    count: int
    kernel_size: int
    kernel_stride: int

    @property
    def capacity(self) -> int:
        return self.hi.shape[2]


def complete_kernels(nk: int, kernel_size: int, kernel_stride: int) -> int:
    """Kernels that lie wholly inside ``nk`` keys."""
    return 0 if nk < kernel_size else (nk - kernel_size) // kernel_stride + 1


@triton.jit
def _kernel_keys_kernel(
    K, KHI, KLO, m0, capacity, kernel_size, kernel_stride, inv_size,
    s_kb, s_kh, s_kn, HKV,
    KS: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, SPLIT: tl.constexpr,
    PDL: tl.constexpr = False,
):
    chain_start(PDL)
    m = m0 + tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    t = tl.arange(0, KS)
    d = tl.arange(0, DP)
    dmask = dim_mask(d, D, DP)
    tok = m * kernel_stride + t
    x = tl.load(K + b * s_kb + h * s_kh + tok[:, None] * s_kn + d[None, :],
                mask=(t < kernel_size)[:, None] & dmask[None, :], other=0.0)
    kc = tl.sum(x.to(tl.float32), 0) * inv_size
    off = (bh * capacity + m) * D + d
    hi = round_to(kc, KHI.dtype.element_ty)  # as torch rounds: the reference's keys under score_precision="input"
    tl.store(KHI + off, hi, mask=dmask)
    if SPLIT:
        tl.store(KLO + off, (kc - hi.to(tl.float32)).to(KLO.dtype.element_ty), mask=dmask)


def allocate_kernel_keys(
    k: torch.Tensor, capacity: int, kernel_size: int, kernel_stride: int, split: bool = True
) -> KernelKeys:
    """Empty kernel keys for ``k: [B, Hkv, N, D]`` with room for ``capacity`` kernels. ``split=False`` keeps
    16-bit inputs' kernel keys rounded to their dtype, without the residual (``score_precision="input"``)."""
    b, hkv, _, d = k.shape
    capacity = max(1, capacity)
    hi = torch.zeros(b, hkv, capacity, d, dtype=k.dtype, device=k.device)
    lo = None if k.dtype == torch.float32 or not split else torch.zeros_like(hi)
    return KernelKeys(hi, lo, 0, kernel_size, kernel_stride)


def update_kernel_keys(keys: KernelKeys, k: torch.Tensor) -> KernelKeys:
    """Append the kernels of ``k`` that became complete since ``keys.count`` (in place)."""
    b, hkv, nk, d = k.shape
    if tuple(keys.hi.shape[:2]) != (b, hkv) or keys.hi.shape[3] != d or keys.hi.dtype != k.dtype:
        raise ValueError(
            f"kernel_keys: cache of shape {tuple(keys.hi.shape)} ({keys.hi.dtype}) does not fit keys of shape "
            f"{tuple(k.shape)} ({k.dtype}); expected [B, Hkv, capacity, D] = [{b}, {hkv}, capacity, {d}]"
        )
    if keys.count < 0:  # the kernel would write before the cache's first kernel
        raise ValueError(f"kernel_keys: count {keys.count} < 0")
    total = complete_kernels(nk, keys.kernel_size, keys.kernel_stride)
    new = total - keys.count
    if new <= 0:
        return keys
    if total > keys.capacity:
        raise ValueError(f"kernel_keys: capacity {keys.capacity} kernels < {total} complete kernels of {nk} keys")
    k = last_dim_contiguous(k)
    _kernel_keys_kernel[(new, b * hkv)](
        k, keys.hi, keys.lo if keys.lo is not None else keys.hi, keys.count, keys.capacity,
        keys.kernel_size, keys.kernel_stride, 1.0 / keys.kernel_size,
        k.stride(0), k.stride(1), k.stride(2), hkv,
        KS=next_pow2(keys.kernel_size), D=d, DP=next_pow2(max(d, 16)), SPLIT=keys.lo is not None,
        num_warps=4,
        **chain_options(k.device),
    )
    keys.count = total
    return keys


def kernel_keys_triton(
    k: torch.Tensor, kernel_size: int, kernel_stride: int, spare: int = 0, split: bool = True
) -> KernelKeys:
    """All complete kernels of ``k`` (plus room for ``spare`` more)."""
    total = complete_kernels(k.shape[2], kernel_size, kernel_stride)
    return update_kernel_keys(allocate_kernel_keys(k, total + spare, kernel_size, kernel_stride, split), k)


def split_keys(params) -> bool:
    """Whether a top-k method's parameters score with the float32 kernel keys (hi and lo parts)."""
    return params.score_precision == "float32"
