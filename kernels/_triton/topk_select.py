"""Pieces the prefill and decode top-k routing (``topk_routing``, ``topk_decode``) share: the route they
return, the kernel scores of a chunk of kernel keys, NSA's overlap weights, and the exact top-k select
(a radix on the score's 32-bit order, then on the block index where the last slot is tied)."""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.ops import split_scores
from dash_eval.kernels._triton.selection import store_words

# How kernel scores become block scores: InfLLM-V2's max, or NSA's overlap-weighted sum.
POOL_MAX = 0
POOL_WEIGHTED = 1


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
                   KC: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr, TMA: tl.constexpr = False,
                   bh=0):
    m = c * KC + tl.arange(0, KC)
    x = split_scores(q, KHI, KLO, kc_base, m, nk, s_m, d, dmask, SPLIT, DOT_MODE, TMA, bh, c * KC)
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
