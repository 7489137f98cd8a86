"""Top-k block routing in Triton, shared by ``infllmv2`` (max-pooled kernel scores) and ``nsa``
(overlap-weighted kernel scores): one KV head and a tile of queries per program, persistent grid.

Per tile: (1) the kernel scores ``q . kc * softmax_scale`` of every query head, chunk by chunk on tensor
cores, reduced to each row's softmax max and normaliser; (2) the same chunks again, turned into
probabilities, summed over the group's heads and (3) pooled onto the chunk's blocks in registers (max for
InfLLM-V2, overlap-weighted sum for NSA; a block's kernel shared with the block before comes from that
block's group, across chunks by a carried column), the block scores written to the program's scratch row
(one float per query and block, for the tile only; with ``POOL_FUSED`` off, or kernels longer than two
strides, the row holds kernel probabilities and each block gathers its kernels from it); (4) the exact
top-k of every query among its eligible blocks by a radix select on the score's 32-bit order (stopping
early once every row's threshold admits exactly its blocks), then, where the last slot's score is tied, on
the block index, so ties go to the more recent block exactly as in the reference; (5) the selection is
written as bits with the per-query counts. Each kernel probability is computed once per
query, so blocks sharing a kernel tie exactly as they do in the reference.
No float per query head, query and block is stored.

Decode (too few query tiles to fill the GPU) splits the work over the cached kernels instead: (a) each
program scores one chunk of kernels for one tile and writes the scores with the chunk's softmax max and
normaliser; (b) each program of a chunk of blocks combines the chunks' normalisers, turns its kernels'
scores into group-summed probabilities and pools them onto its blocks; (c) one program per tile runs
the same exact top-k and writes the bits and counts, and, when one tile holds every query, the fine
stage's visit list (so no union launch follows).
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.kernel_keys import KernelKeys
from dash_eval.kernels._triton.launch import (
    chain_options,
    dot_mode,
    interpreting,
    last_dim_contiguous,
    next_pow2,
    persistent_programs,
)
from dash_eval.kernels._triton.ops import chain_start, dim_mask, mma
from dash_eval.kernels._triton.selection import routing_visit_list, store_words, write_visit_list

POOL_MAX = 0
POOL_WEIGHTED = 1
DECODE_CHUNK_MIN = 64  # kernels per program of the decode score launch (at least)
DECODE_BLOCK_CHUNK = 32  # blocks per program of the decode pooling launch (at most)
DECODE_LIST = True  # decode's select launch writes the fine stage's visit list (False: a union launch does)
# Prefill geometry (module switches, so that scripts/gpu_variants.py can time variants; v17 in
# docs/perf-notes.md): rows (query heads x queries) per routing program, which share each load of the kernel
# keys; the largest scratch row (queries x kernels, float32) a program keeps; rows x kernels of one score
# chunk; block scores per select sub-tile (registers); the two score passes as software-pipelined loops.
ROUTE_ROWS = 128
ROUTE_SCRATCH = 1 << 16
ROUTE_TILE_SCORES = 16384
SELECT_ELEMENTS = 8192
ROUTE_PIPELINE = True  # never on the CPU interpreter, whose range() cannot take a computed bound
ROUTE_STAGES = 2
# With one 16-bit key tensor (score_precision="input") a stage holds half the bytes: 3 stages fit and were
# 2-3% faster than 2 on an H200 (v20; 4 no better).
ROUTE_STAGES_ONE_KEY = 3
ROUTE_PROGRAMS_PER_SM = 4  # persistent routing programs per SM (each with a scratch row; 2 vs 4: within 1%)
# Pooling in the probability pass (v22): each chunk of kernel probabilities is pooled onto its blocks in
# registers and the scratch row holds block scores; False: the scratch row holds kernel probabilities and
# each block gathers its ``W`` kernels from it (before v22). Needs ``kernel_size <= 2 * kernel_stride``.
POOL_FUSED = True
# The select's radix stops once every row of the sub-tile has exactly its blocks (the same selection;
# v19: nsa 64k routing 21.3 -> 16.5 ms on an H200).
SELECT_EARLY_EXIT = True


@dataclasses.dataclass
class TopkRoute:
    words: torch.Tensor  # [B, Hkv, Nq, nwords] int32
    active: torch.Tensor  # [B, Hkv, Nq] int32
    attended: torch.Tensor  # [B, Hkv, Nq] int32
    # Decode (all queries in one tile): the fine stage's visit list, written by the select launch in the
    # layout of ``selection.tile_union`` for tiles of ``tile_q`` queries, so no union launch is needed.
    tiles: tuple[torch.Tensor, torch.Tensor] | None = None
    tile_q: int | None = None


@triton.jit
def _kernel_scores(q, KHI, KLO, kc_base, c, nk, s_m, d, dmask, scale_log2,
                   KC: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr):
    m = c * KC + tl.arange(0, KC)
    kmask = (m < nk)[:, None] & dmask[None, :]
    kh = tl.load(KHI + kc_base + m[:, None] * s_m + d[None, :], mask=kmask, other=0.0)
    x = mma(q, tl.trans(kh), DOT_MODE)
    if SPLIT:
        kl = tl.load(KLO + kc_base + m[:, None] * s_m + d[None, :], mask=kmask, other=0.0)
        x += mma(q, tl.trans(kl), DOT_MODE)
    return x * scale_log2, m


@triton.jit
def _overlap(o, lead, kernel_size, kernel_stride, C: tl.constexpr):
    """Tokens that kernel ``j*r - lead + o`` shares with block ``j``, in strides (NSA's pooling weight)."""
    start = (o - lead) * kernel_stride
    return ((tl.minimum(start + kernel_size, C) - tl.maximum(start, 0)) // kernel_stride).to(tl.float32)


@triton.jit
def _select_and_store(score, qpos, q_ok, qabs, cols, bh, Nq, WORDS, ACTIVE, ATTENDED, n_words, nblocks,
                      init_blocks, local_blocks, topk, window,
                      TQ: tl.constexpr, C: tl.constexpr, NBP: tl.constexpr, NBP_BITS: tl.constexpr,
                      EARLY: tl.constexpr = False):
    """Forced blocks plus the exact top-k of ``score [TQ, NBP]`` per query; bits and counts written.
    ``EARLY``: the radix stops once every row's threshold prefix admits exactly the blocks wanted (the
    lower bits would only move the threshold between the want-th score and the next one below it, which
    selects the same blocks)."""
    cur = qabs // C
    forced = (cols[None, :] <= cur[:, None]) & (
        (cols[None, :] < init_blocks) | (cols[None, :] > cur[:, None] - local_blocks)
    )
    eligible = (cols[None, :] < cur[:, None]) & (~forced) & q_ok[:, None]
    bits = score.to(tl.int32, bitcast=True)
    order = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # integer order == float order (-inf lowest)
    want = tl.minimum(tl.sum(eligible.to(tl.int32), 1), topk)  # [TQ]
    # The want-th largest score by a radix select on its order as a 32-bit unsigned integer (ineligible
    # blocks sit at 0, below every float), then, only where that score is tied past the slots left, the
    # most recent of the tied blocks by a second radix on the block index: the same set as the 64-bit
    # (score, block) key selects, with 32-bit compares and usually 32 steps instead of 48.
    u = tl.where(eligible, (order ^ -2147483648).to(tl.uint32, bitcast=True), 0)
    one = tl.full((TQ,), 1, tl.uint32)
    thr = tl.zeros((TQ,), tl.uint32)
    if EARLY:
        # count(u >= thr) >= want holds throughout; once it is == want in every row, the set is final
        n_thr = tl.full((TQ,), NBP, tl.int32)
        shift = tl.full((TQ,), 31, tl.uint32)  # the bit tried, the same in every row (a name of its own:
        # the other branch's loop variable is a compile-time int)
        steps = 0
        while (steps < 32) & (tl.max(n_thr - want, 0) > 0):
            cand = thr | (one << shift)
            cnt = tl.sum((u >= cand[:, None]).to(tl.int32), 1)
            take = cnt >= want
            thr = tl.where(take, cand, thr)
            n_thr = tl.where(take, cnt, n_thr)
            shift = shift - 1
            steps += 1
    else:
        for bit in tl.static_range(31, -1, -1):
            cand = thr | (one << bit)
            cnt = tl.sum((u >= cand[:, None]).to(tl.int32), 1)
            thr = tl.where(cnt >= want, cand, thr)
    above = eligible & (u > thr[:, None])
    tie = eligible & (u == thr[:, None])
    need = want - tl.sum(above.to(tl.int32), 1)  # >= 1 where want >= 1
    pick = tie
    if tl.max(tl.sum(tie.to(tl.int32), 1) - need, 0) > 0:
        ci = tl.where(tie, cols[None, :], -1)
        ct = tl.zeros((TQ,), tl.int32)
        for bit in tl.static_range(NBP_BITS - 1, -1, -1):
            c_cand = ct | (1 << bit)  # names of their own: the loop above's are uint32
            c_cnt = tl.sum((ci >= c_cand[:, None]).to(tl.int32), 1)
            ct = tl.where(c_cnt >= need, c_cand, ct)
        pick = tie & (cols[None, :] >= ct[:, None])
    chosen = (above | pick) & (want > 0)[:, None]
    sel = (forced | chosen) & q_ok[:, None]

    store_words(sel, WORDS, bh, Nq, qpos, q_ok, n_words, 0, TQ, NBP)
    start = cols[None, :] * C
    sel_keys = tl.minimum(C, qabs[:, None] - start + 1)
    win_lo = tl.maximum(qabs[:, None] - window + 1, start)
    win_hi = tl.minimum(qabs[:, None], start + C - 1)
    win_keys = tl.where(window > 0, tl.maximum(win_hi - win_lo + 1, 0), 0)
    keys = tl.where(sel, sel_keys, win_keys)
    keys = tl.where(cols[None, :] < nblocks, keys, 0)
    tl.store(ACTIVE + bh * Nq + qpos, tl.sum((keys > 0).to(tl.int32), 1), mask=q_ok)
    tl.store(ATTENDED + bh * Nq + qpos, tl.sum(keys, 1), mask=q_ok)
    return sel


@triton.jit
def _normaliser_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, l_i,
                      D: tl.constexpr, KC: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr):
    """Pass 1 on one chunk of kernels: each row's running softmax max and normaliser."""
    x, m = _kernel_scores(q, KHI, KLO, kc_base, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE)
    x = tl.where(m[None, :] < nvis_row[:, None], x, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(x, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(x - m_use[:, None]), 1)
    return m_new, l_i


@triton.jit
def _probability_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l, scratch_q, colk,
                       TQ: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, KC: tl.constexpr,
                       SPLIT: tl.constexpr, DOT_MODE: tl.constexpr):
    """Pass 2 on one chunk: kernel probabilities summed over the group's heads, to the scratch row."""
    x, m = _kernel_scores(q, KHI, KLO, kc_base, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE)
    p = tl.where(m[None, :] < nvis_row[:, None], tl.exp2(x - m_i[:, None]) * inv_l[:, None], 0.0)
    ps = tl.sum(tl.reshape(p, (TQ, GP, KC)), 1)  # summed over the group's heads
    tl.store(scratch_q + (c * KC + colk)[None, :], ps)


@triton.jit
def _pooled_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l, scratch_q, carry,
                  inner_w, lead_w,
                  TQ: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, KC: tl.constexpr, R: tl.constexpr,
                  LEAD: tl.constexpr, POOL: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr):
    """Pass 2 on one chunk, pooled: the group-summed kernel probabilities pooled onto the chunk's ``KC / R``
    blocks in registers (block ``j`` takes kernels ``j*R .. j*R + R-1`` of this chunk and, with ``LEAD``,
    kernel ``j*R - 1``, the previous block's last: ``carry`` brings the previous chunk's), and the block
    scores written to the scratch row. Invisible kernels count 0, which changes neither a max of
    probabilities nor a weighted sum. Returns this chunk's last kernel probability per query."""
    NB: tl.constexpr = KC // R
    x, m = _kernel_scores(q, KHI, KLO, kc_base, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE)
    p = tl.where(m[None, :] < nvis_row[:, None], tl.exp2(x - m_i[:, None]) * inv_l[:, None], 0.0)
    ps = tl.reshape(tl.sum(tl.reshape(p, (TQ, GP, KC)), 1), (TQ, NB, R))  # [query, block, kernel of block]
    if POOL == 0:
        score = tl.max(ps, 2)
    else:
        score = tl.sum(ps * inner_w[None, None, :], 2)
    if LEAD == 1:
        last = tl.sum(tl.where((tl.arange(0, R) == R - 1)[None, None, :], ps, 0.0), 2)  # [TQ, NB]
        jl = tl.arange(0, NB)
        prev = tl.gather(last, tl.broadcast_to(tl.maximum(jl - 1, 0)[None, :], (TQ, NB)), 1)
        prev = tl.where(jl[None, :] == 0, carry[:, None], prev)
        if POOL == 0:
            score = tl.maximum(score, prev)
        else:
            score += prev * lead_w
        carry = tl.sum(tl.where(jl[None, :] == NB - 1, last, 0.0), 1)
    tl.store(scratch_q + (c * NB + tl.arange(0, NB))[None, :], score)
    return carry


@triton.jit
def _topk_route_kernel(
    Q, KHI, KLO, WORDS, ACTIVE, ATTENDED, SCRATCH,
    Nq, q_off, nk, capacity, n_words, nblocks, n_qtiles, total_tiles, n_bh,
    scale_log2, kernel_size, kernel_stride, ratio, lead, init_blocks, local_blocks, topk, window,
    s_qb, s_qh, s_qn, HKV,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, TS: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    C: tl.constexpr, NBP: tl.constexpr, NBP_BITS: tl.constexpr, SROW: tl.constexpr,
    KC: tl.constexpr, W: tl.constexpr,
    POOL: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr, PIPELINE: tl.constexpr,
    EARLY: tl.constexpr = False, FUSED: tl.constexpr = False, R: tl.constexpr = 1, LEAD: tl.constexpr = 0,
    PDL: tl.constexpr = False,
):
    """Prefill: a tile of ``TQ`` queries x the group's heads per program for the two score passes (the
    kernel keys read once per tile serve ``GP * TQ`` rows), then pooling and the select on sub-tiles of
    ``TS`` queries (a ``TS x NBP`` register tile each)."""
    chain_start(PDL)
    M: tl.constexpr = GP * TQ
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    r = tl.arange(0, M)
    tq = r // GP
    g = r % GP
    d = tl.arange(0, DP)
    dmask = dim_mask(d, D, DP)
    cols = tl.arange(0, NBP)
    colk = tl.arange(0, KC)
    scratch_q = SCRATCH + (pid * TQ + tl.arange(0, TQ))[:, None] * SROW
    # the pooled pass's weights (NSA): kernels j*R .. j*R + R-1 of block j, and kernel j*R - 1
    inner_w = _overlap(LEAD + tl.arange(0, R), lead, kernel_size, kernel_stride, C)
    lead_w = _overlap(0, lead, kernel_size, kernel_stride, C)
    tile = pid
    while tile < total_tiles:
        qt = n_qtiles - 1 - tile // n_bh
        bh = tile % n_bh
        b = bh // HKV
        h = bh % HKV
        pos = qt * TQ + tq
        row_ok = (g < G) & (pos < Nq)
        abs_i = pos + q_off
        # kernel m is visible to query i when m * stride + kernel_size - 1 <= i
        nvis_row = tl.where(row_ok, tl.minimum(tl.maximum((abs_i - kernel_size + 1) // kernel_stride + 1, 0), nk), 0)
        nvis_row = tl.where(abs_i - kernel_size + 1 >= 0, nvis_row, 0)
        n_chunks = (tl.max(nvis_row, 0) + KC - 1) // KC
        q = tl.load(
            Q + b * s_qb + (h * G + g)[:, None] * s_qh + pos[:, None] * s_qn + d[None, :],
            mask=row_ok[:, None] & dmask[None, :], other=0.0,
        )
        kc_base = bh * capacity * D
        m_i = tl.full((M,), float("-inf"), tl.float32)
        l_i = tl.zeros((M,), tl.float32)
        if PIPELINE:
            for c in tl.range(0, n_chunks):
                m_i, l_i = _normaliser_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, l_i,
                                             D, KC, SPLIT, DOT_MODE)
        else:  # the CPU interpreter cannot take a computed loop bound in range()
            c = 0
            while c < n_chunks:
                m_i, l_i = _normaliser_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, l_i,
                                             D, KC, SPLIT, DOT_MODE)
                c += 1
        inv_l = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        tl.debug_barrier()  # the previous tile's reads of the scratch row are done
        if FUSED:
            carry = tl.zeros((TQ,), tl.float32)  # kernel -1 of block 0: none
            if PIPELINE:
                for c in tl.range(0, n_chunks):
                    carry = _pooled_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l,
                                          scratch_q, carry, inner_w, lead_w, TQ, GP, D, KC, R, LEAD, POOL, SPLIT,
                                          DOT_MODE)
            else:
                c = 0
                while c < n_chunks:
                    carry = _pooled_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l,
                                          scratch_q, carry, inner_w, lead_w, TQ, GP, D, KC, R, LEAD, POOL, SPLIT,
                                          DOT_MODE)
                    c += 1
            # the block after the last chunk, whose only visible kernel can be its lead kernel
            tail = n_chunks * (KC // R)
            tail_score = carry if POOL == 0 else carry * lead_w
            tl.store(scratch_q + tail, tail_score[:, None], mask=tail < SROW)
        else:
            if PIPELINE:
                for c in tl.range(0, n_chunks):
                    _probability_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l,
                                       scratch_q, colk, TQ, GP, D, KC, SPLIT, DOT_MODE)
            else:
                c = 0
                while c < n_chunks:
                    _probability_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l,
                                       scratch_q, colk, TQ, GP, D, KC, SPLIT, DOT_MODE)
                    c += 1
        tl.debug_barrier()

        for s in tl.static_range(TQ // TS):
            lane = s * TS + tl.arange(0, TS)
            qpos = qt * TQ + lane
            q_ok = qpos < Nq
            qabs = qpos + q_off
            nvis_q = tl.where(qabs - kernel_size + 1 >= 0,
                              tl.minimum((qabs - kernel_size + 1) // kernel_stride + 1, nk), 0)
            scratch_s = SCRATCH + (pid * TQ + lane)[:, None] * SROW
            if FUSED:  # block scores, written by the pooled pass; a block with no visible kernel was not
                vis = tl.maximum(cols * ratio - lead, 0)[None, :] < nvis_q[:, None]
                score = tl.load(scratch_s + cols[None, :], mask=vis, other=0.0, cache_modifier=".cg")
                if POOL == 0:
                    score = tl.where(vis, score, float("-inf"))
            else:
                if POOL == 0:
                    score = tl.full((TS, NBP), float("-inf"), tl.float32)
                else:
                    score = tl.zeros((TS, NBP), tl.float32)
                for o in tl.static_range(W):
                    mk = cols * ratio - lead + o
                    ok = (mk >= 0)[None, :] & (mk[None, :] < nvis_q[:, None])
                    ps = tl.load(scratch_s + mk[None, :], mask=ok, other=0.0, cache_modifier=".cg")
                    if POOL == 0:
                        score = tl.maximum(score, tl.where(ok, ps, float("-inf")))
                    else:
                        score += ps * _overlap(o, lead, kernel_size, kernel_stride, C)

            _select_and_store(score, qpos, q_ok, qabs, cols, bh, Nq, WORDS, ACTIVE, ATTENDED, n_words, nblocks,
                              init_blocks, local_blocks, topk, window, TS, C, NBP, NBP_BITS, EARLY)
        tile += n_prog


@triton.jit
def _query_rows(Q, tile, n_qtiles, Nq, q_off, kernel_size, kernel_stride, nk, s_qb, s_qh, s_qn, HKV,
                G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr):
    """The tile's rows (query heads x queries): loaded queries and the kernels each row sees."""
    M: tl.constexpr = GP * TQ
    bh = tile // n_qtiles
    qt = tile % n_qtiles
    b = bh // HKV
    h = bh % HKV
    r = tl.arange(0, M)
    tq = r // GP
    g = r % GP
    pos = qt * TQ + tq
    row_ok = (g < G) & (pos < Nq)
    abs_i = pos + q_off
    nvis_row = tl.where(row_ok & (abs_i - kernel_size + 1 >= 0),
                        tl.minimum((abs_i - kernel_size + 1) // kernel_stride + 1, nk), 0)
    d = tl.arange(0, DP)
    dmask = dim_mask(d, D, DP)
    q = tl.load(
        Q + b * s_qb + (h * G + g)[:, None] * s_qh + pos[:, None] * s_qn + d[None, :],
        mask=row_ok[:, None] & dmask[None, :], other=0.0,
    )
    return q, nvis_row, bh, qt, d, dmask


@triton.jit
def _decode_scores_kernel(
    Q, KHI, KLO, XS, PM, PL,
    Nq, q_off, nk, capacity, n_chunks, n_qtiles, row_len, scale_log2, kernel_size, kernel_stride,
    s_qb, s_qh, s_qn, HKV,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    KC: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Stage (a): scores of one chunk of kernels for one tile, with the chunk's max and normaliser."""
    chain_start(PDL)
    M: tl.constexpr = GP * TQ
    c = tl.program_id(0)
    tile = tl.program_id(1)
    q, nvis_row, bh, qt, d, dmask = _query_rows(Q, tile, n_qtiles, Nq, q_off, kernel_size, kernel_stride, nk,
                                                s_qb, s_qh, s_qn, HKV, G, GP, TQ, D, DP)
    r = tl.arange(0, M)
    part = (tile * n_chunks + c) * M + r
    if c * KC < tl.max(nvis_row, 0):
        x, m = _kernel_scores(q, KHI, KLO, bh * capacity * D, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE)
        x = tl.where(m[None, :] < nvis_row[:, None], x, float("-inf"))
        tl.store(XS + (tile * M + r)[:, None] * row_len + m[None, :], x)
        m_c = tl.max(x, 1)
        m_use = tl.where(m_c == float("-inf"), 0.0, m_c)
        tl.store(PM + part, m_c)
        tl.store(PL + part, tl.sum(tl.exp2(x - m_use[:, None]), 1))
    else:
        tl.store(PM + part, tl.full((M,), float("-inf"), tl.float32))
        tl.store(PL + part, tl.zeros((M,), tl.float32))


@triton.jit
def _decode_pool_kernel(
    XS, PM, PL, BS,
    Nq, q_off, nk, n_chunks, n_qtiles, row_len, kernel_size, kernel_stride, ratio, lead,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, NCP: tl.constexpr, CB: tl.constexpr,
    NBP: tl.constexpr, C: tl.constexpr, W: tl.constexpr, POOL: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Stage (b): the chunks' normalisers combined, group-summed kernel probabilities pooled onto a chunk
    of blocks."""
    chain_start(PDL)
    M: tl.constexpr = GP * TQ
    cb = tl.program_id(0)
    tile = tl.program_id(1)
    qt = tile % n_qtiles
    r = tl.arange(0, M)
    g = r % GP
    pos = qt * TQ + r // GP
    row_ok = (g < G) & (pos < Nq)
    abs_i = pos + q_off
    nvis_row = tl.where(row_ok & (abs_i - kernel_size + 1 >= 0),
                        tl.minimum((abs_i - kernel_size + 1) // kernel_stride + 1, nk), 0)
    ch = tl.arange(0, NCP)
    part = (tile * n_chunks + ch)[:, None] * M + r[None, :]
    pm = tl.load(PM + part, mask=(ch < n_chunks)[:, None], other=float("-inf"))
    pl = tl.load(PL + part, mask=(ch < n_chunks)[:, None], other=0.0)
    m_i = tl.max(pm, 0)
    m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
    l_i = tl.sum(pl * tl.exp2(pm - m_i[None, :]), 0)
    inv_l = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)

    lane = tl.arange(0, TQ)
    qabs = qt * TQ + lane + q_off
    nvis_q = tl.where(qabs - kernel_size + 1 >= 0, tl.minimum((qabs - kernel_size + 1) // kernel_stride + 1, nk), 0)
    cols = cb * CB + tl.arange(0, CB)
    xs_row = XS + (tile * M + r)[:, None] * row_len
    if POOL == 0:
        score = tl.full((TQ, CB), float("-inf"), tl.float32)
    else:
        score = tl.zeros((TQ, CB), tl.float32)
    for o in tl.static_range(W):
        mk = cols * ratio - lead + o
        ok_row = (mk >= 0)[None, :] & (mk[None, :] < nvis_row[:, None])
        x = tl.load(xs_row + mk[None, :], mask=ok_row, other=float("-inf"))
        p = tl.where(ok_row, tl.exp2(x - m_i[:, None]) * inv_l[:, None], 0.0)
        ps = tl.sum(tl.reshape(p, (TQ, GP, CB)), 1)  # summed over the group's heads
        ok = (mk >= 0)[None, :] & (mk[None, :] < nvis_q[:, None])
        if POOL == 0:
            score = tl.maximum(score, tl.where(ok, ps, float("-inf")))
        else:
            score += ps * _overlap(o, lead, kernel_size, kernel_stride, C)
    tl.store(BS + (tile * TQ + lane)[:, None] * NBP + cols[None, :], score)


@triton.jit
def _decode_select_kernel(
    BS, WORDS, ACTIVE, ATTENDED, TLIST, TCOUNT,
    Nq, q_off, n_words, nblocks, n_qtiles, init_blocks, local_blocks, topk, window,
    TQ: tl.constexpr, C: tl.constexpr, NBP: tl.constexpr, NBP_BITS: tl.constexpr, LIST: tl.constexpr,
    EARLY: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """Stage (c): the exact top-k of the pooled block scores of one tile (and, with ``LIST``, when the
    tile holds every query, the fine stage's visit list)."""
    chain_start(PDL)
    tile = tl.program_id(0)
    bh = tile // n_qtiles
    qt = tile % n_qtiles
    lane = tl.arange(0, TQ)
    cols = tl.arange(0, NBP)
    qpos = qt * TQ + lane
    q_ok = qpos < Nq
    score = tl.load(BS + (tile * TQ + lane)[:, None] * NBP + cols[None, :])
    sel = _select_and_store(score, qpos, q_ok, qpos + q_off, cols, bh, Nq, WORDS, ACTIVE, ATTENDED, n_words,
                            nblocks, init_blocks, local_blocks, topk, window, TQ, C, NBP, NBP_BITS, EARLY)
    if LIST:  # the tile's visit list, as selection.tile_union writes it (one tile: every query in it)
        union = tl.max(sel.to(tl.int32), 0) != 0
        common = tl.min(tl.where(q_ok[:, None], sel.to(tl.int32), 1), 0) != 0
        write_visit_list(union, common, cols, q_off, tl.minimum(TQ, Nq) - 1 + q_off, window, nblocks, C,
                         TLIST + bh * nblocks, TCOUNT + bh)


def route_tile(group: int, nq: int, kernels_pow2: int) -> int:
    """Queries per routing tile: ``ROUTE_ROWS`` rows (the group's heads x queries) share each load of the
    kernel keys, within a scratch row of at most ``ROUTE_SCRATCH`` floats per program; 16 rows at least
    (``tl.dot``)."""
    gp = next_pow2(group)
    tq = max(1, min(ROUTE_ROWS // gp, ROUTE_SCRATCH // kernels_pow2))
    tq = min(tq, next_pow2(nq))
    return max(tq, -(-16 // gp))


def select_tile(tile_q: int, nblocks_pow2: int) -> int:
    """Queries per select sub-tile: a ``queries x blocks`` register tile of at most ``SELECT_ELEMENTS``."""
    return max(1, min(tile_q, SELECT_ELEMENTS // nblocks_pow2))


def kernel_parallel_pays(device: torch.device, tiles: int, kernels_pow2: int) -> bool:
    """Decode: too few query tiles to fill the GPU, enough kernels to split."""
    return device.type == "cuda" and tiles < persistent_programs(device, per_sm=1) and kernels_pow2 >= 512


def topk_route(
    q: torch.Tensor,
    keys: KernelKeys,
    nk: int,
    *,
    pool: int,
    block_size: int,
    init_blocks: int,
    local_blocks: int,
    topk: int,
    softmax_scale: float,
    window: int = 0,
    tile_q: int | None = None,
    chunk_kernels: int = 128,
    num_warps: int | None = None,
    kernel_parallel: bool | None = None,
) -> TopkRoute:
    """Forced blocks plus the ``topk`` best other past blocks per query (METHODS.md infllmv2 / nsa).

    ``keys``: the kernel keys of the first ``nk`` keys (``kernel_keys.kernel_keys_triton``, or a decode
    cache's); ``pool``: ``POOL_MAX`` (InfLLM-V2) or ``POOL_WEIGHTED`` (NSA's overlap weights).
    ``kernel_parallel``: split the kernels over programs (decode); ``None`` decides by the GPU's fill.
    """
    kernel_size, kernel_stride = keys.kernel_size, keys.kernel_stride
    b, hq, nq, d = q.shape
    hkv = keys.hi.shape[1]
    n_kernels = keys.count
    g = hq // hkv
    gp = next_pow2(g)
    nblocks = -(-nk // block_size)
    nbp = max(32, next_pow2(nblocks))
    if nbp > 1 << 16:  # the select holds a query's row of block scores in registers
        raise ValueError(f"topk routing: {nblocks} blocks of block_size={block_size}; at most {1 << 16}")
    nwords = -(-nblocks // 32)
    nkp = max(16, next_pow2(max(n_kernels, 1)))
    q = last_dim_contiguous(q)
    khi, klo = keys.hi, keys.lo
    ratio = block_size // kernel_stride
    lead = kernel_size // kernel_stride - 1
    width = lead + ratio  # kernels overlapping one block (compression.block_kernel_index)
    if tile_q is None:
        tile_q = route_tile(g, nq, nkp)
    n_qtiles = -(-nq // tile_q)
    total = n_qtiles * b * hkv
    dev = q.device
    chained = chain_options(dev)  # the launch keywords of programmatic dependent launch, for every launch below
    words = torch.empty(b, hkv, nq, nwords, dtype=torch.int32, device=dev)
    active = torch.empty(b, hkv, nq, dtype=torch.int32, device=dev)
    attended = torch.empty(b, hkv, nq, dtype=torch.int32, device=dev)
    m_rows = gp * tile_q
    kc_chunk = min(nkp, chunk_kernels, max(16, ROUTE_TILE_SCORES // m_rows))  # a rows x kernels score tile
    dp = next_pow2(max(d, 16))
    scale_log2 = softmax_scale * 1.4426950408889634
    if kernel_parallel is None:
        kernel_parallel = kernel_parallel_pays(dev, total, nkp)
    if kernel_parallel:
        kc_dec = max(DECODE_CHUNK_MIN, next_pow2(nkp // 256))
        n_chunks = max(1, -(-n_kernels // kc_dec))
        row_len = n_chunks * kc_dec
        cb = min(nbp, DECODE_BLOCK_CHUNK)
        xs = torch.empty(total, m_rows, row_len, dtype=torch.float32, device=dev)
        pm = torch.empty(total, n_chunks, m_rows, dtype=torch.float32, device=dev)
        pl = torch.empty_like(pm)
        bs = torch.empty(total, tile_q, nbp, dtype=torch.float32, device=dev)
        _decode_scores_kernel[(n_chunks, total)](
            q, khi, klo if klo is not None else khi, xs, pm, pl,
            nq, nk - nq, n_kernels, keys.capacity, n_chunks, n_qtiles, row_len, scale_log2, kernel_size,
            kernel_stride, q.stride(0), q.stride(1), q.stride(2), hkv,
            G=g, GP=gp, TQ=tile_q, D=d, DP=dp, KC=kc_dec, SPLIT=klo is not None, DOT_MODE=dot_mode(q.dtype),
            num_warps=4,
            **chained,
        )
        _decode_pool_kernel[(nbp // cb, total)](
            xs, pm, pl, bs,
            nq, nk - nq, n_kernels, n_chunks, n_qtiles, row_len, kernel_size, kernel_stride, ratio, lead,
            G=g, GP=gp, TQ=tile_q, NCP=next_pow2(n_chunks), CB=cb, NBP=nbp, C=block_size, W=width, POOL=pool,
            num_warps=4,
            **chained,
        )
        listed = DECODE_LIST and n_qtiles == 1  # every query in one tile: the visit list is written here
        tlist, tcount = routing_visit_list(words, nblocks, listed)
        _decode_select_kernel[(total,)](
            bs, words, active, attended, tlist, tcount,
            nq, nk - nq, nwords, nblocks, n_qtiles, init_blocks, local_blocks, topk, window,
            TQ=tile_q, C=block_size, NBP=nbp, NBP_BITS=nbp.bit_length() - 1, LIST=listed, EARLY=SELECT_EARLY_EXIT,
            num_warps=4 if tile_q * nbp <= 4096 else 8,
            **chained,
        )
        if listed:
            return TopkRoute(words, active, attended, (tlist, tcount), tile_q)
        return TopkRoute(words, active, attended)
    n_prog = min(total, persistent_programs(dev, ROUTE_PROGRAMS_PER_SM))
    one_key = ROUTE_STAGES_ONE_KEY  # pipeline stages when only 16-bit high parts are read
    # pooled in the probability pass: whole blocks per score chunk, lead kernels from the previous block only
    fused = POOL_FUSED and lead <= 1 and ratio & (ratio - 1) == 0 and kc_chunk % ratio == 0
    srow = max(nkp, nbp)  # a scratch row: kernel probabilities, or (fused) block scores and the tail block
    scratch = torch.empty(n_prog, tile_q, srow, dtype=torch.float32, device=dev)
    tile_s = select_tile(tile_q, nbp)
    if num_warps is None:
        num_warps = 8 if max(m_rows * kc_chunk, tile_s * nbp) >= 8192 else 4
    _topk_route_kernel[(n_prog,)](
        q, khi, klo if klo is not None else khi, words, active, attended, scratch,
        nq, nk - nq, n_kernels, keys.capacity, nwords, nblocks, n_qtiles, total, b * hkv,
        scale_log2, kernel_size, kernel_stride, ratio, lead, init_blocks, local_blocks,
        topk, window,
        q.stride(0), q.stride(1), q.stride(2), hkv,
        G=g, GP=gp, TQ=tile_q, TS=tile_s, D=d, DP=dp, C=block_size, NBP=nbp, NBP_BITS=nbp.bit_length() - 1,
        SROW=srow, KC=kc_chunk,
        W=width, POOL=pool, SPLIT=klo is not None, DOT_MODE=dot_mode(q.dtype),
        PIPELINE=ROUTE_PIPELINE and not interpreting(), EARLY=SELECT_EARLY_EXIT,
        FUSED=fused, R=ratio if fused else 1, LEAD=lead if fused else 0,
        num_warps=num_warps, num_stages=ROUTE_STAGES if klo is not None or khi.element_size() > 2 else one_key,
        **chained,
    )
    return TopkRoute(words, active, attended)
