"""DashAttention routing in Triton: over the block summaries (``triton_summaries``), the scores, the exact
entmax threshold and the block selection computed on chip, one KV head and a tile of queries per program.

Memory: the summaries (``[B, Hkv, nblocks, D]``), the selection bits (``[B, Hkv, Nq, nblocks/32]``
int32), one threshold per query head and query, one mean log-probability per query, and a scratch row
buffer per program in flight (the grid is persistent, so that buffer is sized by the GPU, not by the
length). No float per query head, query and block is stored.

Threshold: Newton's method on ``g(tau) = (sum_j [x_j - tau]_+^e)^(1/e) - 1`` (``e = 1/(alpha-1)``,
``x = (alpha-1) z``) from ``tau = max(x) - 1``, where ``g >= 0``. ``g`` (an e-norm of a convex function)
is convex and decreasing, so the iterates rise monotonically to the root without overshooting, exactly
in one step on equal scores, and typically in 3-6 steps on real rows; the loop runs until every row's
step is below float resolution (a bound on iterations only guards against a stall). Each iteration is
one pass over the row held in registers.

Prefill runs in up to ``ROUTE_WIDTHS`` launches by causal width (``width_segments``): the latest queries
over a register row of every block, earlier ones over rows of half, a quarter, ... as many, so the scores,
the Newton passes and the selection of a query cover little more than its causal range (v23: routing -33%
at 32k).

Decode (a few queries, too few tiles to fill the GPU): three launches instead of one program per query
tile: the scores, block-parallel, into a scratch row per (head, query); the threshold, one program per real
(batch, query head, query) row, so that each row's Newton loop stops with that row and no padding row of a
GQA tile is iterated; the selection, one program per query tile and chunk of blocks, whose last program to
arrive (a per-tile counter) combines the chunks' sums into ``mean_log``, ``max_beta`` and the counts.

Precision: with 16-bit inputs the float32 summaries are split into a 16-bit high part and a 16-bit
residual, and the scores are ``q @ hi + q @ lo`` on tensor cores (about 16 mantissa bits of the
summary, products exact, float32 accumulation); float32 inputs use exact float32 dots.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.launch import (
    chain_options,
    dot_mode,
    interpreting,
    key_descriptors,
    last_dim_contiguous,
    launch_narrowing,
    next_pow2,
    persistent_programs,
    tma_pays,
)
from dash_eval.kernels._triton.ops import (
    chain_start,
    dim_mask,
    entmax_integer_power,
    entmax_powers,
    entmax_root,
    split_scores,
)
from dash_eval.kernels._triton.selection import routing_visit_list, store_words, tile_visit_list
from dash_eval.kernels.dash.triton_summaries import BlockSummaries

_MAX_NEWTON_ITERS = 60
# Decode's threshold launch takes Newton's two row sums in one reduction (v39: 23.9 -> 23.3 us a 2-KV step on an
# H200; prefill's routing was 1% slower with it, so it keeps two). Not on the CPU interpreter, which runs a
# reduction with a combine function element by element; tests launch it there directly, on a short row.
DECODE_TAU_PAIRED = True
_ROUTE_TILE_ELEMENTS = 16384  # rows x blocks held in registers per program (64 floats a thread at 8 warps)
# Decode (scores precomputed): the thresholds in a launch of one program per (batch, query head, query) row
# (``_DECODE_TAU_WARPS`` warps each), then the selection in a launch of one program per query tile and chunk
# of ``_DECODE_SELECT_CHUNK`` blocks. False: the routing kernel does both, one program per query tile (v8).
_DECODE_TAU_ROWS = True
_DECODE_TAU_WARPS = 8  # H200 sweep, 131k tokens: 1 / 2 / 4 / 8 warps 5.7 / 5.3 / 4.1 / 3.7 us (2 KV heads)
_DECODE_LIST = True  # the decode selection's last program writes the fine stage's visit list (False: a union launch)
# Prefill: the queries routed in up to this many launches, each over a register row as wide as its queries'
# causal range (``width_segments``); 1: one launch over every block.
ROUTE_WIDTHS = 4
ROUTE_PROGRAMS_PER_SM = 4  # prefill routing programs in flight per SM (persistent grid)
ROUTE_WARPS = 0  # warps per prefill routing program (0: 4, or 8 above 16,384 scores a tile)
# The selection (pbar over the group, bits, per-query stats) works on ``queries x blocks`` of a tile, a chain
# of reductions that latency bounds: at most this many per tile. H200, 32k, 8 KV heads (4 heads a group, where
# it binds: 8 queries a tile -> 4): routing 4.64 -> 4.26 ms; 16 heads a group (2 KV heads) are under it.
ROUTE_SELECT_ELEMENTS = 2048
# The block summaries of the prefill score products loaded through tensor descriptors (Hopper's TMA), where
# ``launch.tma_descriptor`` allows (chunks of at most 256 blocks); the interpreter runs both paths.
ROUTE_TMA = True
DECODE_TMA = True  # the same for decode's block-parallel score launch, where it pays (launch.tma_pays)
# blocks a program of decode's score launch. H200, 128k, 16 / 32 / 64 / 128 blocks: 2 KV heads 22.8 / 22.2 / 23.05 /
# 23.4 us a step, 8 KV 53.5 / 52.5 / 53.0 / 53.9 (v44)
_DECODE_SCORE_CHUNK = 32
_DECODE_SELECT_WARPS = 0  # warps of a selection program (0: 4, or 2 below 2,048 rows x blocks)
DECODE_SELECT_ONE = True  # a step of one query: the selection launch reads its rows alone, not the tile's padding
_DECODE_SELECT_CHUNK = 512  # 128 / 256 / 512 blocks: 3.4 / 3.7 / 3.9 us at 2 KV heads, 6.2 / 5.0 / 3.8 at 8


@dataclasses.dataclass
class DashRoute:
    words: torch.Tensor  # [B, Hkv, Nq, nwords] int32 selection bits (routed or forced)
    tau: torch.Tensor  # [B, Hq, Nq] float32
    mean_log: torch.Tensor  # [B, Hkv, Nq] float32
    max_beta: torch.Tensor  # [B, Hkv, Nq] float32 max |beta| of the query's prior-weighted blocks
    active: torch.Tensor  # [B, Hkv, Nq] int32 attended blocks
    attended: torch.Tensor  # [B, Hkv, Nq] int32 attended keys
    # Decode (all queries in one tile): the fine stage's visit list, written by the selection launch in the
    # layout of ``selection.tile_union`` for tiles of ``tile_q`` queries, so no union launch is needed.
    tiles: tuple[torch.Tensor, torch.Tensor] | None = None
    tile_q: int | None = None
    # prefill: the narrowest chunk of summaries a segment had to fall back to because the one it asked for (the
    # asked chunk, or the segment's width if narrower) did not fit in shared memory; None where none did
    narrowed_chunk: int | None = None


@triton.jit
def _add_pairs(a, b, c, d):
    return a + c, b + d


@triton.jit
def _entmax_newton(x, tau, ent_exp, tol, has_rows, ENT_POW: tl.constexpr, MAX_ITERS: tl.constexpr,
                   PAIRED: tl.constexpr = False):
    """Raise ``tau`` from a point where ``g >= 1`` to the root of ``g(tau) = ||[x - tau]_+||_e = 1``
    (``e = 1/(alpha-1)``; ``x`` is -inf off the candidates). ``g`` is convex and decreasing in ``tau``, so
    Newton's iterates rise monotonically to the root without overshooting; on ``k`` equal scores one
    step is exact. Stops once every row's step is below ``tol`` (relative) or non-positive (rounding).
    ``PAIRED``: an iteration's two row sums in one reduction (one set of the CTA's barriers, not two)."""
    it = 0
    go = has_rows
    while go:
        tt = tl.maximum(x - tau[:, None], 0.0)
        lower, upper = entmax_powers(tt, ent_exp, ENT_POW)
        if PAIRED:
            f, s1 = tl.reduce((upper, lower), 1, _add_pairs)
        else:
            f = tl.sum(upper, 1)
            s1 = tl.sum(lower, 1)
        gn = entmax_root(f, ent_exp, ENT_POW)
        step = tl.where(s1 > 0, (gn - 1.0) * f / (tl.maximum(gn, 1e-30) * tl.where(s1 > 0, s1, 1.0)), 0.0)
        tau = tau + tl.maximum(step, 0.0)
        it += 1
        big = tl.max(step - tol * tl.maximum(tl.abs(tau), 1.0), 0)
        go = (big > 0) & (it < MAX_ITERS)
    return tau


@triton.jit
def _dash_route_kernel(
    Q, KHI, KLO, WORDS, TAU, MEANLOG, MAXBETA, ACTIVE, ATTENDED, SCRATCH,
    Nq, q_off, q_lo, q_hi, nc, capacity, n_words, n_qtiles, total_tiles, n_bh,
    zscale, ent_exp, tol, init_blocks, local_blocks, inv_sigma,
    s_qb, s_qh, s_qn, HKV,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    C: tl.constexpr, NBP: tl.constexpr, CH: tl.constexpr, ENT_POW: tl.constexpr, SPLIT: tl.constexpr,
    DOT_MODE: tl.constexpr, MAX_ITERS: tl.constexpr, PRECOMPUTED: tl.constexpr,
    PDL: tl.constexpr = False, TMA: tl.constexpr = False,
):
    chain_start(PDL)
    M: tl.constexpr = GP * TQ
    NCH: tl.constexpr = NBP // CH
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    r = tl.arange(0, M)
    tq = r // GP
    g = r % GP
    d = tl.arange(0, DP)
    dmask = dim_mask(d, D, DP)
    cols = tl.arange(0, NBP)
    colc = tl.arange(0, CH)
    lane = tl.arange(0, TQ)
    scratch_rows = SCRATCH + (pid * M + r)[:, None] * NBP
    tile = pid
    while tile < total_tiles:
        qt = n_qtiles - 1 - tile // n_bh  # latest (longest) query tiles first
        bh = tile % n_bh
        b = bh // HKV
        h = bh % HKV
        pos = q_lo + qt * TQ + tq
        row_ok = (g < G) & (pos < q_hi)
        head = h * G + g
        abs_i = pos + q_off
        ncand_row = tl.where(row_ok, tl.minimum(abs_i // C, nc), 0)  # candidates: complete blocks j < b(i)
        ncand = tl.max(ncand_row, 0)
        q = tl.load(
            Q + b * s_qb + head[:, None] * s_qh + pos[:, None] * s_qn + d[None, :],
            mask=row_ok[:, None] & dmask[None, :], other=0.0,
        )
        kb_base = (bh * capacity) * D
        if PRECOMPUTED:  # scores written by _dash_scores_kernel (decode: spread over the whole GPU)
            pre_rows = SCRATCH + ((bh * n_qtiles + qt) * M + r)[:, None] * NBP
            x = tl.load(pre_rows + cols[None, :], mask=cols[None, :] < ncand, other=0.0)
        elif NCH == 1:
            x = split_scores(q, KHI, KLO, kb_base, cols, nc, D, d, dmask, SPLIT, DOT_MODE, TMA, bh, 0)
        else:
            tl.debug_barrier()  # the previous tile's reads of the scratch rows are done
            for c in range(0, NCH):
                if c * CH < ncand:
                    jc = c * CH + colc
                    xc = split_scores(q, KHI, KLO, kb_base, jc, nc, D, d, dmask, SPLIT, DOT_MODE, TMA, bh, c * CH)
                    tl.store(scratch_rows + jc[None, :], xc)
            tl.debug_barrier()
            x = tl.load(scratch_rows + cols[None, :], mask=cols[None, :] < ncand, other=0.0, cache_modifier=".cg")
        x = tl.where(cols[None, :] < ncand_row[:, None], x * zscale, float("-inf"))

        has = ncand_row > 0
        tau = tl.where(has, tl.max(x, 1) - 1.0, 0.0)
        tau = _entmax_newton(x, tau, ent_exp, tol, ncand > 0, ENT_POW, MAX_ITERS)
        qpos = q_lo + qt * TQ + lane
        q_ok = qpos < q_hi
        routed, forced, sel, log_p = _group_selection(x, tau, row_ok, qpos, q_ok, cols, q_off, ent_exp,
                                                      init_blocks, local_blocks, G, GP, TQ, NBP, C, ENT_POW)
        n_routed = tl.sum(routed.to(tl.int32), 1)
        mean_log = tl.sum(log_p, 1) / tl.maximum(n_routed, 1).to(tl.float32)
        dev = tl.where(routed & ~forced, tl.abs(log_p - mean_log[:, None]), 0.0)
        tl.store(MAXBETA + bh * Nq + qpos, tl.max(dev, 1) * inv_sigma, mask=q_ok)

        store_words(sel, WORDS, bh, Nq, qpos, q_ok, n_words, 0, TQ, NBP)
        tl.store(TAU + (b * HKV * G + head) * Nq + pos, tau, mask=row_ok)
        tl.store(MEANLOG + bh * Nq + qpos, mean_log, mask=q_ok)
        keys = tl.minimum(C, (qpos + q_off)[:, None] - cols[None, :] * C + 1)
        tl.store(ACTIVE + bh * Nq + qpos, tl.sum(sel.to(tl.int32), 1), mask=q_ok)
        tl.store(ATTENDED + bh * Nq + qpos, tl.sum(tl.where(sel, keys, 0), 1), mask=q_ok)
        tile += n_prog


@triton.jit
def _group_selection(x, tau, row_ok, qpos, q_ok, cols, q_off, ent_exp, init_blocks, local_blocks,
                     G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, N: tl.constexpr, C: tl.constexpr,
                     ENT_POW: tl.constexpr):
    """Stage 2 on blocks ``cols [N]``, given the rows' scaled scores ``x [GP * TQ, N]`` and thresholds: each
    head's entmax, ``pbar`` over the group, and per query the routed blocks (``pbar > 0`` in exact arithmetic:
    some head's ``x > tau``, which also holds where a tiny ``p`` underflows with alpha near 1), the forced ones,
    the selection, and ``log pbar`` on the routed blocks (0 elsewhere; at least float32's smallest normal)."""
    tt = tl.where(row_ok[:, None], tl.maximum(x - tau[:, None], 0.0), 0.0)
    _, p = entmax_powers(tt, ent_exp, ENT_POW)
    pbar = tl.sum(tl.reshape(p, (TQ, GP, N)), 1) / G  # [TQ, N]
    cur = (qpos + q_off) // C
    routed = tl.max(tl.reshape(tt, (TQ, GP, N)), 1) > 0
    forced = (cols[None, :] <= cur[:, None]) & (
        (cols[None, :] < init_blocks) | (cols[None, :] > cur[:, None] - local_blocks)
    )
    sel = (routed | forced) & q_ok[:, None]
    log_p = tl.where(routed, tl.log(tl.maximum(pbar, 1.1754943508222875e-38)), 0.0)
    return routed, forced, sel, log_p


@triton.jit
def _tile_rows(tile, n_qtiles, Nq, HKV, G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr):
    """The rows of query tile ``tile`` (``bh * n_qtiles + qt``): ``GP`` query heads x ``TQ`` queries, row
    ``r`` being head ``r % GP`` of query ``qt * TQ + r // GP``; ``row_ok`` masks padded heads and queries."""
    bh = tile // n_qtiles
    qt = tile % n_qtiles
    r = tl.arange(0, GP * TQ)
    g = r % GP
    pos = qt * TQ + r // GP
    row_ok = (g < G) & (pos < Nq)
    return bh, qt, bh // HKV, bh % HKV, r, g, pos, row_ok


@triton.jit
def _dash_scores_kernel(
    Q, KHI, KLO, SCORES, COUNT, Nq, q_off, nc, capacity, n_qtiles,
    s_qb, s_qh, s_qn, HKV,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    NBP: tl.constexpr, CH: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr, ZERO_COUNT: tl.constexpr,
    PDL: tl.constexpr = False, TMA: tl.constexpr = False,
):
    """Routing scores of one chunk of blocks for one query tile: the decode path's first stage, which
    spreads reading the summaries over many programs (one query tile alone cannot fill the GPU)."""
    chain_start(PDL)
    M: tl.constexpr = GP * TQ
    c = tl.program_id(0)
    tile = tl.program_id(1)  # bh * n_qtiles + qt
    bh, qt, b, h, r, g, pos, row_ok = _tile_rows(tile, n_qtiles, Nq, HKV, G, GP, TQ)
    d = tl.arange(0, DP)
    dmask = dim_mask(d, D, DP)
    q = tl.load(
        Q + b * s_qb + (h * G + g)[:, None] * s_qh + pos[:, None] * s_qn + d[None, :],
        mask=row_ok[:, None] & dmask[None, :], other=0.0,
    )
    jc = c * CH + tl.arange(0, CH)
    kb_base = (bh * capacity) * D
    x = split_scores(q, KHI, KLO, kb_base, jc, nc, D, d, dmask, SPLIT, DOT_MODE, TMA, bh, c * CH)
    tl.store(SCORES + (tile * M + r)[:, None] * NBP + jc[None, :], x)
    if ZERO_COUNT:  # the selection launch's arrival counter of this tile (that launch runs after this one)
        if c == 0:
            tl.store(COUNT + tile, 0)


@triton.jit
def _dash_tau_kernel(
    SCORES, TAU, Nq, q_off, nc, n_qtiles, zscale, ent_exp, tol, HKV,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, C: tl.constexpr, NBP: tl.constexpr,
    ENT_POW: tl.constexpr, MAX_ITERS: tl.constexpr, PAIRED: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """The exact threshold of one (batch, query head, query) row from its scores written by
    ``_dash_scores_kernel``: the decode path's second stage. One program per real row, so the Newton
    iterations of the rows run side by side on the whole GPU (instead of one program per KV head
    iterating a ``GP * TQ``-row tile, padding rows included, until its slowest row converges)."""
    chain_start(PDL)
    row = tl.program_id(0)  # (b * Hq + head) * Nq + pos: TAU's own layout
    pos = row % Nq
    bhead = row // Nq
    head = bhead % (HKV * G)
    bh = (bhead // (HKV * G)) * HKV + head // G
    qt = pos // TQ
    srow = (bh * n_qtiles + qt) * (GP * TQ) + (pos % TQ) * GP + head % G
    cols = tl.arange(0, NBP)[None, :]
    ncand = tl.minimum((pos + q_off) // C, nc)  # candidates: complete blocks j < b(i)
    x = tl.load(SCORES + srow * NBP + cols, mask=cols < ncand, other=0.0)
    x = tl.where(cols < ncand, x * zscale, float("-inf"))  # [1, NBP]
    tau = tl.where(ncand > 0, tl.max(x, 1) - 1.0, 0.0)
    tau = _entmax_newton(x, tau, ent_exp, tol, ncand > 0, ENT_POW, MAX_ITERS, PAIRED)
    tl.store(TAU + row + tl.arange(0, 1), tau)


@triton.jit
def _dash_select_kernel(
    SCORES, TAU, WORDS, MEANLOG, MAXBETA, ACTIVE, ATTENDED, PARTF, PARTI, COUNT, TLIST, TCOUNT,
    Nq, q_off, nc, n_words, n_qtiles, zscale, ent_exp, init_blocks, local_blocks, inv_sigma, HKV,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, M_ROWS: tl.constexpr, C: tl.constexpr, NBP: tl.constexpr,
    CH: tl.constexpr, ENT_POW: tl.constexpr, LIST: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Decode's third stage: the selection of one chunk of ``CH`` blocks for one query tile, given the
    thresholds: ``pbar``, the routed/forced bits (written), and per query the chunk's partial sums (routed
    blocks, sum of log pbar, max/min log pbar over routed non-forced blocks, selected blocks and keys). The
    last program of the tile to finish (an arrival counter, zeroed by the scores launch) combines the
    chunks into ``mean_log``, ``max_beta``, ``active`` and ``attended``, and with ``LIST`` (one tile holds
    every query) writes the fine stage's visit list from the words all chunks wrote, so no union launch
    follows. ``SCORES`` holds ``M_ROWS`` rows a tile (the score launch's tile of ``M_ROWS // GP`` queries); this
    launch's tiles are of ``TQ`` queries (one, for a step of one query, which skips the padding rows)."""
    chain_start(PDL)
    NCHUNK: tl.constexpr = NBP // CH
    c = tl.program_id(0)
    tile = tl.program_id(1)  # bh * n_qtiles + qt
    bh, qt, b, h, r, g, pos, row_ok = _tile_rows(tile, n_qtiles, Nq, HKV, G, GP, TQ)
    head = h * G + g
    ncand_row = tl.where(row_ok, tl.minimum((pos + q_off) // C, nc), 0)
    cols = c * CH + tl.arange(0, CH)
    cand = cols[None, :] < ncand_row[:, None]
    x = tl.load(SCORES + (tile * M_ROWS + r)[:, None] * NBP + cols[None, :], mask=cand, other=0.0)
    x = tl.where(cand, x * zscale, float("-inf"))
    tau = tl.load(TAU + (b * HKV * G + head) * Nq + pos, mask=row_ok, other=0.0)
    lane = tl.arange(0, TQ)
    qpos = qt * TQ + lane
    q_ok = qpos < Nq
    routed, forced, sel, log_p = _group_selection(x, tau, row_ok, qpos, q_ok, cols, q_off, ent_exp,
                                                  init_blocks, local_blocks, G, GP, TQ, CH, C, ENT_POW)
    free = routed & ~forced
    keys = tl.minimum(C, (qpos + q_off)[:, None] - cols[None, :] * C + 1)
    store_words(sel, WORDS, bh, Nq, qpos, q_ok, n_words, c * (CH // 32), TQ, CH)
    part = (tile * NCHUNK + c) * 3 * TQ + lane
    tl.store(PARTF + part, tl.sum(log_p, 1))
    tl.store(PARTF + part + TQ, tl.max(tl.where(free, log_p, float("-inf")), 1))
    tl.store(PARTF + part + 2 * TQ, tl.min(tl.where(free, log_p, float("inf")), 1))
    tl.store(PARTI + part, tl.sum(routed.to(tl.int32), 1))
    tl.store(PARTI + part + TQ, tl.sum(sel.to(tl.int32), 1))
    tl.store(PARTI + part + 2 * TQ, tl.sum(tl.where(sel, keys, 0), 1))
    tl.debug_barrier()  # every thread's partials are written before the arrival is counted
    if tl.atomic_add(COUNT + tile, 1, sem="acq_rel") == NCHUNK - 1:  # the tile's last chunk: combine
        at = (tile * NCHUNK + tl.arange(0, NCHUNK))[:, None] * 3 * TQ + lane[None, :]
        n_routed = tl.sum(tl.load(PARTI + at, cache_modifier=".cg"), 0)
        sum_log = tl.sum(tl.load(PARTF + at, cache_modifier=".cg"), 0)
        hi = tl.max(tl.load(PARTF + at + TQ, cache_modifier=".cg"), 0)
        lo = tl.min(tl.load(PARTF + at + 2 * TQ, cache_modifier=".cg"), 0)
        mean_log = sum_log / tl.maximum(n_routed, 1).to(tl.float32)
        # max |log pbar - mean_log| over routed non-forced blocks is reached at their max or min log pbar
        dev = tl.where(hi > float("-inf"), tl.maximum(hi - mean_log, mean_log - lo), 0.0)
        tl.store(MEANLOG + bh * Nq + qpos, mean_log, mask=q_ok)
        tl.store(MAXBETA + bh * Nq + qpos, dev * inv_sigma, mask=q_ok)
        tl.store(ACTIVE + bh * Nq + qpos, tl.sum(tl.load(PARTI + at + TQ, cache_modifier=".cg"), 0), mask=q_ok)
        tl.store(ATTENDED + bh * Nq + qpos, tl.sum(tl.load(PARTI + at + 2 * TQ, cache_modifier=".cg"), 0), mask=q_ok)
        if LIST:
            nblocks = (q_off + Nq + C - 1) // C
            tile_visit_list(WORDS, bh, qt, Nq, q_off, n_words, nblocks, C, 0, TLIST + bh * nblocks, TCOUNT + bh,
                            TQ, NBP // 32)


def route_tile(group: int, nblocks_pow2: int, nq: int) -> int:
    """Queries per routing program: as many as keep ``rows x blocks`` within the register budget and the
    selection's ``queries x blocks`` within ``ROUTE_SELECT_ELEMENTS``."""
    gp = next_pow2(group)
    tq = max(1, min(_ROUTE_TILE_ELEMENTS // gp, ROUTE_SELECT_ELEMENTS) // nblocks_pow2)
    tq = min(tq, max(1, 64 // gp), next_pow2(nq))
    return max(tq, -(-16 // gp))  # tl.dot needs 16 rows


def dash_route(
    q: torch.Tensor,
    summ: BlockSummaries,
    nk: int,
    *,
    alpha: float,
    scale: float,
    softmax_scale: float,
    init_blocks: int,
    local_blocks: int,
    block_size: int,
    sigma: float = 1e6,
    tile_q: int | None = None,
    chunk_blocks: int = 256,
    num_warps: int | None = None,
    precompute: bool | None = None,
) -> DashRoute:
    """Route the queries ``q: [B, Hq, Nq, D]`` (the last ``Nq`` of ``nk`` positions) onto blocks.

    Launch settings (``dash-eval bench --sweep`` varies them; ``None`` chooses): ``tile_q`` queries per routing
    program, the same in every launch by causal width when given (else ``route_tile`` per width);
    ``chunk_blocks`` blocks of scores per tensor-core product, rows wider than it going through the
    per-program scratch row; ``num_warps`` per program; ``precompute`` the decode path (a block-parallel score
    launch, then one threshold program per row and the chunked selection), chosen when too few query tiles
    would fill the GPU.
    """
    b, hq, nq, d = q.shape
    hkv = summ.kbar.shape[1]
    g = hq // hkv
    gp = next_pow2(g)
    nblocks = -(-nk // block_size)
    nbp = max(32, next_pow2(nblocks))
    nwords = -(-nblocks // 32)
    q = last_dim_contiguous(q)
    tile_q_given = tile_q is not None
    if tile_q is None:
        tile_q = route_tile(g, nbp, nq)
    n_qtiles = -(-nq // tile_q)
    total = n_qtiles * b * hkv
    m_rows = gp * tile_q
    dev = q.device
    chained = chain_options(dev)  # the launch keywords of programmatic dependent launch, for every launch below
    words = torch.empty(b, hkv, nq, nwords, dtype=torch.int32, device=dev)
    tau = torch.empty(b, hq, nq, dtype=torch.float32, device=dev)
    mean_log = torch.empty(b, hkv, nq, dtype=torch.float32, device=dev)
    max_beta = torch.empty(b, hkv, nq, dtype=torch.float32, device=dev)
    active = torch.empty(b, hkv, nq, dtype=torch.int32, device=dev)
    attended = torch.empty(b, hkv, nq, dtype=torch.int32, device=dev)
    # Too few query tiles to fill the GPU (decode): compute the scores in a first, block-parallel launch.
    precomputed = precompute
    if precomputed is None:
        precomputed = dev.type == "cuda" and total < persistent_programs(dev, per_sm=1) and nbp >= 256
    dp = next_pow2(max(d, 16))
    split_select = precomputed and _DECODE_TAU_ROWS
    if precomputed:
        scratch = torch.empty(total, m_rows, nbp, dtype=torch.float32, device=dev)
        count = torch.empty(total if split_select else 1, dtype=torch.int32, device=dev)
        ch_pre = min(_DECODE_SCORE_CHUNK, nbp)
        tma = DECODE_TMA and tma_pays(dev, (nbp // ch_pre) * total)
        khi, klo, tma = key_descriptors(summ.hi, summ.lo, summ.count, ch_pre, tma)
        _dash_scores_kernel[(nbp // ch_pre, total)](
            q, khi, klo, scratch, count, nq, nk - nq, summ.count,
            summ.kbar.shape[2], n_qtiles, q.stride(0), q.stride(1), q.stride(2), hkv,
            G=g, GP=gp, TQ=tile_q, D=d, DP=dp, NBP=nbp, CH=ch_pre, SPLIT=summ.lo is not None,
            DOT_MODE=dot_mode(q.dtype), ZERO_COUNT=split_select, TMA=tma, num_warps=4,
            **chained,
        )
        n_prog = total
    ent_exp = 1.0 / (alpha - 1.0)
    ent_pow = entmax_integer_power(ent_exp)
    zscale = (alpha - 1.0) * scale * softmax_scale
    tol = 2.0**-21
    if split_select:  # decode: thresholds one row per program, then the selection one block chunk per program
        _dash_tau_kernel[(b * hq * nq,)](
            scratch, tau, nq, nk - nq, summ.count, n_qtiles, zscale, ent_exp, tol, hkv,
            G=g, GP=gp, TQ=tile_q, C=block_size, NBP=nbp, ENT_POW=ent_pow, MAX_ITERS=_MAX_NEWTON_ITERS,
            PAIRED=DECODE_TAU_PAIRED and not interpreting(),
            num_warps=max(1, min(_DECODE_TAU_WARPS, nbp // 128)), num_stages=1,
            **chained,
        )
        ch_sel = min(nbp, _DECODE_SELECT_CHUNK)
        nchunk = nbp // ch_sel
        tq_sel = 1 if DECODE_SELECT_ONE and nq == 1 else tile_q  # a step of one query: its rows alone
        partf = torch.empty(total, nchunk, 3, tq_sel, dtype=torch.float32, device=dev)
        parti = torch.empty(total, nchunk, 3, tq_sel, dtype=torch.int32, device=dev)
        listed = _DECODE_LIST and n_qtiles == 1  # every query in one tile: the visit list is written here
        tlist, tcount = routing_visit_list(words, nblocks, listed)
        _dash_select_kernel[(nchunk, total)](
            scratch, tau, words, mean_log, max_beta, active, attended, partf, parti, count, tlist, tcount,
            nq, nk - nq, summ.count, nwords, n_qtiles, zscale, ent_exp, init_blocks, local_blocks, 1.0 / sigma, hkv,
            G=g, GP=gp, TQ=tq_sel, M_ROWS=m_rows, C=block_size, NBP=nbp, CH=ch_sel, ENT_POW=ent_pow, LIST=listed,
            num_warps=_DECODE_SELECT_WARPS or (4 if gp * tq_sel * ch_sel >= 2048 else 2), num_stages=1,
            **chained,
        )
        if listed:
            return DashRoute(words, tau, mean_log, max_beta, active, attended, (tlist, tcount), tile_q)
        return DashRoute(words, tau, mean_log, max_beta, active, attended)
    segments = [(0, nq, nbp)] if precomputed else width_segments(nq, nk, block_size, nbp, ROUTE_WIDTHS)
    if len(segments) > 1:  # a narrower segment writes only its own words; the later ones stay zero
        words.zero_()

    def launch_segment(q_lo: int, q_hi: int, width: int, seg_tq: int, n_prog: int, warps: int, ch: int) -> None:
        seg_tiles = -(-(q_hi - q_lo) // seg_tq)
        if precomputed:
            seg_scratch = scratch
        else:  # rows wider than a chunk of scores go through the program's scratch row
            shape = (n_prog, gp * seg_tq, width) if width > ch else (1,)
            seg_scratch = torch.empty(shape, dtype=torch.float32, device=dev)
        khi, klo, tma = key_descriptors(summ.hi, summ.lo, summ.count, ch, ROUTE_TMA and not precomputed)
        _dash_route_kernel[(n_prog,)](
            q, khi, klo, words, tau, mean_log, max_beta, active,
            attended, seg_scratch,
            nq, nk - nq, q_lo, q_hi, summ.count, summ.kbar.shape[2], nwords, seg_tiles, seg_tiles * b * hkv, b * hkv,
            zscale, ent_exp, tol, init_blocks, local_blocks, 1.0 / sigma,
            q.stride(0), q.stride(1), q.stride(2), hkv,
            G=g, GP=gp, TQ=seg_tq, D=d, DP=dp, C=block_size, NBP=width, CH=ch,
            ENT_POW=ent_pow, SPLIT=summ.lo is not None, DOT_MODE=dot_mode(q.dtype),
            MAX_ITERS=_MAX_NEWTON_ITERS, PRECOMPUTED=precomputed, num_warps=warps, num_stages=1,
            TMA=tma, **chained,
        )

    narrowed = []
    for q_lo, q_hi, width in segments:
        seg_tq = tile_q if tile_q_given else route_tile(g, width, q_hi - q_lo)
        rows = gp * seg_tq
        if not precomputed:
            n_prog = min(-(-(q_hi - q_lo) // seg_tq) * b * hkv, persistent_programs(dev, ROUTE_PROGRAMS_PER_SM))
        warps = num_warps or ROUTE_WARPS or (8 if rows * width > 16384 else 4)
        # a chunk of summaries too wide for shared memory (fp32 at head dim 256: 327,696 bytes at 256 blocks) is halved
        seg_ch = min(width, chunk_blocks)
        fits_key = ("dash_route", dev, q.dtype, summ.hi.dtype, summ.lo is None, dp, rows, width, seg_ch, warps,
                    ROUTE_TMA)
        run_segment = functools.partial(launch_segment, q_lo, q_hi, width, seg_tq, n_prog, warps)
        # decode's precomputed scores stage no summaries: a narrower chunk would not need less shared memory
        ran = launch_narrowing(run_segment, seg_ch, fits_key, least=seg_ch if precomputed else 16)
        if ran < seg_ch:
            narrowed.append(ran)
    return DashRoute(words, tau, mean_log, max_beta, active, attended, narrowed_chunk=min(narrowed, default=None))


def width_segments(nq: int, nk: int, block_size: int, nbp: int, most: int) -> list[tuple[int, int, int]]:
    """Prefill routing in up to ``most`` launches by causal width: ``(q_lo, q_hi, width)``, queries
    ``q_lo..q_hi-1`` (of the last ``nq`` of ``nk`` positions) routed over a register row of ``width`` blocks.
    A query at position ``i`` sees blocks ``0 .. i // block_size`` (its candidates and its own block), so
    ``width`` blocks serve every ``i < width * block_size``; halving the width for the earlier queries keeps
    the scores, the Newton passes and the selection on the causal part of each row (about 2/3 of the work
    of one full-width launch at 4 segments)."""
    q_off = nk - nq
    segments = []
    hi = nk
    width = nbp
    while hi > q_off:
        narrower = width // 2
        last = len(segments) + 1 >= most or narrower < 32
        lo = q_off if last else max(q_off, min(hi, narrower * block_size))
        if lo < hi:
            segments.append((lo - q_off, hi - q_off, width))
        hi, width = lo, narrower
    return segments
