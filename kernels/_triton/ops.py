"""Small Triton device functions shared by the kernels."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


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
