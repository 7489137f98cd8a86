"""Small Triton device functions shared by the kernels."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


def entmax_integer_power(ent_exp: float, limit: int = 16) -> int:
    """The kernels' ``ENT_POW`` for entmax's exponent ``e = 1/(alpha-1)``: ``e`` itself where it is an integer
    from 1 to ``limit`` (alpha 2, 1.5, 1.25, 1.2, ...), else 0 (the general power, through exp2 and log2)."""
    e = round(ent_exp)
    return e if 1 <= e <= limit and abs(ent_exp - e) <= 1e-9 * e else 0


@triton.jit
def entmax_powers(tt, ent_exp, ENT_POW: tl.constexpr):
    """``(tt ** (e - 1), tt ** e)`` for ``tt >= 0``, both 0 where ``tt == 0``: by ``e - 1`` multiplications where
    ``e`` is the integer ``ENT_POW`` (exact, on the FMA units), else through ``exp2`` and ``log2`` (two
    multi-function-unit operations an element, which ran alpha 1.25 / 2 routing 5-7x slower than 1.5's squares)."""
    if ENT_POW == 0:
        lower = tl.where(tt > 0, tl.exp2((ent_exp - 1.0) * tl.log2(tl.maximum(tt, 1e-30))), 0.0)
    elif ENT_POW == 1:
        lower = tl.where(tt > 0, 1.0, 0.0)
    else:
        lower = tt
        for _ in tl.static_range(ENT_POW - 2):
            lower = lower * tt
    return lower, lower * tt


@triton.jit
def entmax_root(f, ent_exp, ENT_POW: tl.constexpr):
    """``f ** (1 / e)`` for ``f >= 0`` (square roots where ``e`` is 2 or 4)."""
    if ENT_POW == 1:
        r = f
    elif ENT_POW == 2:
        r = tl.sqrt(f)
    elif ENT_POW == 4:
        r = tl.sqrt(tl.sqrt(f))
    else:
        r = tl.exp2(tl.log2(tl.maximum(f, 1e-30)) / ent_exp)
    return r


@triton.jit
def chain_start(PDL: tl.constexpr):
    """The first statement of every kernel of this package. Launched with programmatic dependent launch
    (``PDL``, ``launch.chained``), a kernel may start before the previous kernel in the stream has
    finished: it waits here until that kernel completed and its writes are visible (which, as every
    kernel waits, holds for all earlier kernels too), then lets the next kernel launch early."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def mma(a, b, DOT_MODE: tl.constexpr):
    """``a @ b`` with float32 accumulation. ``DOT_MODE``: 0 native (tensor cores on 16-bit inputs),
    1 exact float32 (``ieee``; float32 inputs), 2 16-bit inputs upcast first (the CPU interpreter,
    whose dot cannot multiply bfloat16)."""
    if DOT_MODE == 0:
        return tl.dot(a, b)
    elif DOT_MODE == 1:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def split_scores(q, HI, LO, base, j, n_valid, s_j, d, dmask, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr,
                 TMA: tl.constexpr = False, row=0, j0=0):
    """Scores of the rows ``q`` against keys ``j`` (rows ``base + j * s_j`` of ``HI``; keys ``j >= n_valid``
    count as zero): ``q @ hi^T``, plus ``q @ lo^T`` with ``SPLIT`` (a float32 key held as a 16-bit high part
    and a 16-bit residual, so that the tensor-core products stay exact and the sum keeps about 16 mantissa
    bits of the key). With ``TMA``, ``HI`` and ``LO`` are ``[rows, n_valid, D]`` tensor descriptors and the
    keys are ``j0 ..`` of descriptor row ``row`` (``base``, ``j`` and ``s_j`` unused)."""
    if TMA:
        kh = tl.reshape(HI.load([row, j0, 0]), (j.shape[0], d.shape[0]))
    else:
        kmask = (j < n_valid)[:, None] & dmask[None, :]
        kh = tl.load(HI + base + j[:, None] * s_j + d[None, :], mask=kmask, other=0.0)
    x = mma(q, tl.trans(kh), DOT_MODE)
    if SPLIT:
        if TMA:
            kl = tl.reshape(LO.load([row, j0, 0]), (j.shape[0], d.shape[0]))
        else:
            kl = tl.load(LO + base + j[:, None] * s_j + d[None, :], mask=kmask, other=0.0)
        x += mma(q, tl.trans(kl), DOT_MODE)
    return x


@triton.jit
def dim_mask(d, D: tl.constexpr, DP: tl.constexpr):
    """``d < D`` over the padded head dim; a compile-time all-true mask when ``D == DP``, so that masked
    loads and stores along the head dim stay 16-byte vectors."""
    if D == DP:
        return tl.full([DP], 1, tl.int1)
    else:
        return d < D


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """float32 ``x`` rounded to ``DTYPE`` to nearest, ties to even, as torch rounds. bfloat16 by integer
    arithmetic: the CPU interpreter's conversion to bfloat16 truncates, whatever rounding it is asked for."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & -65536  # keep the high 16 bits, rounded
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
    else:
        return x.to(DTYPE)
