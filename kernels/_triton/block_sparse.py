"""The fine stage: causal flash-attention forward over the selected blocks only.

One program owns one KV head and a tile of ``TQ`` query positions; its ``M = GP * TQ`` rows are the
GQA group's query heads for those positions (``GP`` = group size rounded up to a power of two), so
the group shares every key/value tile it loads and small groups still fill a tensor-core tile. The
program walks its tile's visit list (``selection.tile_union``) and masks per query inside each block:
the query's own bit, causality, and NSA's window.

Bias modes: 0 none, 1 a dense ``[B, Hkv, Nq, nblocks]`` float bias (the reference's format; used in
tests), 2 DashAttention's prior recomputed on the fly from the block summaries, the per-(head, query)
entmax thresholds and the per-query mean log-probability that the routing kernel wrote, so no float
per query and block is ever stored.

With ``splits > 1`` each program takes a slice of the visit list and writes an unnormalised partial
(flash-decoding); ``combine_partials`` merges them.

On Hopper (and the interpreter) the kernel reads its K and V tiles through tensor descriptors (TMA) where
``launch.tma_descriptor`` allows both; otherwise, masked pointer loads.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.launch import (
    chain_options,
    descriptor_pair,
    dot_mode,
    interpreting,
    last_dim_contiguous,
    launch_with_stages,
    next_pow2,
    num_sms,
)
from dash_eval.kernels._triton.ops import chain_start, dim_mask, entmax_integer_power, entmax_powers, mma
from dash_eval.kernels._triton.selection import FULL_FLAG, FULL_MASK, tile_union

LOG2E = 1.4426950408889634
# K and V tiles loaded through tensor descriptors (Hopper's TMA) where ``launch.tma_descriptor`` allows (v29:
# dash 32k prefill -4% to -8% on an H200; v35: decode's split launch too, with DECODE_STAGES). A module switch,
# so that scripts/gpu_variants.py can time both; the interpreter runs both paths.
FINE_TMA = True
# Software-pipeline stages of the fine stage's block loop (K and V tiles in flight; v2's sweep: 3 best; v29: 2,
# 4, 5 slower in prefill), and of decode's split launch (v35, 1 / 2 / 3 / 4 stages with TMA, the six 128k
# decode cases: 4 best or within 0.1 us of the best, dash 8 KV heads 56.4 -> 55.1 us).
FINE_STAGES = 3
DECODE_STAGES = 4
# |beta| <= (max log pbar - min log pbar) / sigma, and the kernels clamp pbar at float32's smallest normal
# before the log, so a prior with sigma >= PRIOR_LOG_RANGE / negligible_logit(dtype) never moves an output.
PRIOR_LOG_RANGE = 87.34  # -ln(1.1754943508222875e-38) = 87.3365


@dataclasses.dataclass
class DashPrior:
    """What the fine stage needs to rebuild DashAttention's prior ``beta`` for any (query, block)."""

    kbar: torch.Tensor  # [B, Hkv, nc, D] float32 block summaries
    tau: torch.Tensor  # [B, Hq, Nq] float32 entmax thresholds (on (alpha-1)*z)
    mean_log: torch.Tensor  # [B, Hkv, Nq] float32 mean log pbar over the routed blocks
    max_beta: torch.Tensor  # [B, Hkv, Nq] float32 max |beta| over the query's prior-weighted blocks
    route_scale: float  # (alpha - 1) * scale * softmax_scale
    alpha: float
    sigma: float
    init_blocks: int
    local_blocks: int


@triton.jit
def _attend_block(
    li, list_base, q, m_i, l_i, acc, K, V, BIAS, KBAR, word_rows, use_bias, tau, mean_log_rows,
    b, h, bh, pos, abs_i, row_ok, d, dmask, qk_scale, Nq, Nk, nblocks, nc, window,
    route_scale, ent_exp, inv_sigma, init_blocks, local_blocks, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    BLOCK_N: tl.constexpr, BIAS_MODE: tl.constexpr, ENT_POW: tl.constexpr, DOT_MODE: tl.constexpr, TMA: tl.constexpr,
):
    M: tl.constexpr = GP * TQ
    entry = tl.load(list_base + li)
    j = entry & FULL_MASK
    offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
    if TMA:  # K and V are tensor descriptors; rows past Nk read as zeros
        k = tl.reshape(K.load([b, h, j * BLOCK_N, 0]), (BLOCK_N, DP))
    else:
        kv_ok = (offs_n < Nk)[:, None] & dmask[None, :]
        k = tl.load(K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + d[None, :], mask=kv_ok, other=0.0)
    s = mma(q, tl.trans(k), DOT_MODE) * qk_scale
    if entry < FULL_FLAG:  # some query of the tile skips this block, or it reaches the diagonal
        word = tl.load(word_rows + j // 32, mask=row_ok, other=0)
        sel = ((word >> (j % 32)) & 1) != 0
        causal = offs_n[None, :] <= abs_i[:, None]
        in_window = offs_n[None, :] > abs_i[:, None] - window
        s = tl.where(causal & (sel[:, None] | in_window), s, float("-inf"))
    if BIAS_MODE == 1:
        brow = tl.load(BIAS + (bh * Nq + pos) * nblocks + j, mask=row_ok, other=0.0)
        s = s + brow[:, None] * 1.4426950408889634
    elif BIAS_MODE == 2:
        if use_bias:
            kb = tl.load(KBAR + (bh * nc + j) * D + d, mask=dmask & (j < nc), other=0.0)
            x = tl.sum(q.to(tl.float32) * kb[None, :], 1) * route_scale
            tt = tl.where(row_ok, tl.maximum(x - tau, 0.0), 0.0)
            _, p = entmax_powers(tt, ent_exp, ENT_POW)
            pbar_q = tl.sum(tl.reshape(p, (TQ, GP)), 1) / G
            pbar = tl.reshape(tl.broadcast_to(pbar_q[:, None], (TQ, GP)), (M,))
            # routed as the routing decides it (some head's x > tau; p itself may underflow near alpha = 1);
            # only candidates j < b(i): on a block past a row's own, the power can overflow to inf
            in_q = tl.max(tl.reshape(tt, (TQ, GP)), 1) > 0
            routed = tl.reshape(tl.broadcast_to(in_q[:, None], (TQ, GP)), (M,))
            cur = abs_i // BLOCK_N
            forced = (j <= cur) & ((j < init_blocks) | (j > cur - local_blocks))
            beta = (tl.log(tl.maximum(pbar, 1.1754943508222875e-38)) - mean_log_rows) * inv_sigma
            beta = tl.where(routed & (j < cur) & (~forced) & (j < nc), beta, 0.0)
            s = s + beta[:, None] * 1.4426950408889634

    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.exp2(m_i - m_use)
    p_att = tl.exp2(s - m_use[:, None])
    l_i = l_i * rescale + tl.sum(p_att, 1)
    acc = acc * rescale[:, None]
    if TMA:
        v = tl.reshape(V.load([b, h, j * BLOCK_N, 0]), (BLOCK_N, DP))
    else:
        v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + d[None, :], mask=kv_ok, other=0.0)
    acc += mma(p_att.to(v.dtype), v, DOT_MODE)
    return m_new, l_i, acc


@triton.jit
def _sparse_attn_fwd_kernel(
    Q, K, V, Out, WORDS, TLIST, TCOUNT,
    BIAS, KBAR, TAU, MEANLOG, MAXBETA,
    PO, PM, PL,
    qk_scale, Nq, Nk, n_tiles, q_off, n_words, nblocks, nc, window, n_rows,
    route_scale, ent_exp, inv_sigma, init_blocks, local_blocks, bias_eps,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
    HKV,
    G: tl.constexpr, GP: tl.constexpr, TQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    BLOCK_N: tl.constexpr, BIAS_MODE: tl.constexpr, SPLITS: tl.constexpr, ENT_POW: tl.constexpr,
    DOT_MODE: tl.constexpr, PIPELINE: tl.constexpr,
    PDL: tl.constexpr = False, TMA: tl.constexpr = False,
):
    chain_start(PDL)
    M: tl.constexpr = GP * TQ
    t = n_tiles - 1 - tl.program_id(0)  # the longest (latest) tiles first
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b = bh // HKV
    h = bh % HKV

    r = tl.arange(0, M)
    tq = r // GP
    g = r % GP
    pos = t * TQ + tq
    row_ok = (g < G) & (pos < Nq)
    abs_i = pos + q_off
    head = h * G + g
    d = tl.arange(0, DP)
    dmask = dim_mask(d, D, DP)
    q = tl.load(
        Q + b * s_qb + head[:, None] * s_qh + pos[:, None] * s_qn + d[None, :],
        mask=row_ok[:, None] & dmask[None, :], other=0.0,
    )
    word_rows = WORDS + (bh * Nq + pos) * n_words  # rows of one query read the same words

    use_bias = False
    tau = tl.zeros((M,), tl.float32)
    mean_log_rows = tl.zeros((M,), tl.float32)
    if BIAS_MODE == 2:
        tau = tl.load(TAU + (b * HKV * G + head) * Nq + pos, mask=row_ok, other=0.0)
        mean_log_rows = tl.load(MEANLOG + bh * Nq + pos, mask=row_ok, other=0.0)
        # The prior only moves logits by |beta| <= max_beta; below the output's resolution it is skipped.
        use_bias = tl.max(tl.load(MAXBETA + bh * Nq + pos, mask=row_ok, other=0.0), 0) > bias_eps

    count = tl.load(TCOUNT + bh * n_tiles + t)
    if SPLITS == 1:
        lo = 0
        hi = count
    else:
        per = (count + SPLITS - 1) // SPLITS
        lo = tl.minimum(split * per, count)
        hi = tl.minimum(lo + per, count)

    m_i = tl.full((M,), float("-inf"), tl.float32)
    l_i = tl.zeros((M,), tl.float32)
    acc = tl.zeros((M, DP), tl.float32)
    list_base = TLIST + (bh * n_tiles + t) * nblocks
    if PIPELINE:
        for li in tl.range(lo, hi):
            m_i, l_i, acc = _attend_block(
                li, list_base, q, m_i, l_i, acc, K, V, BIAS, KBAR, word_rows, use_bias, tau, mean_log_rows,
                b, h, bh, pos, abs_i, row_ok, d, dmask, qk_scale, Nq, Nk, nblocks, nc, window,
                route_scale, ent_exp, inv_sigma, init_blocks, local_blocks, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                G, GP, TQ, D, DP, BLOCK_N, BIAS_MODE, ENT_POW, DOT_MODE, TMA,
            )
    else:  # the CPU interpreter cannot take a loaded loop bound in range()
        li = lo
        while li < hi:
            m_i, l_i, acc = _attend_block(
                li, list_base, q, m_i, l_i, acc, K, V, BIAS, KBAR, word_rows, use_bias, tau, mean_log_rows,
                b, h, bh, pos, abs_i, row_ok, d, dmask, qk_scale, Nq, Nk, nblocks, nc, window,
                route_scale, ent_exp, inv_sigma, init_blocks, local_blocks, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                G, GP, TQ, D, DP, BLOCK_N, BIAS_MODE, ENT_POW, DOT_MODE, TMA,
            )
            li += 1

    if SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(
            Out + b * s_ob + head[:, None] * s_oh + pos[:, None] * s_on + d[None, :],
            out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dmask[None, :],
        )
    else:
        prow = split * n_rows + (b * HKV * G + head) * Nq + pos
        tl.store(PO + prow[:, None] * DP + d[None, :], acc, mask=row_ok[:, None])
        tl.store(PM + prow, m_i, mask=row_ok)
        tl.store(PL + prow, l_i, mask=row_ok)


@triton.jit
def _combine_kernel(PO, PM, PL, Out, n_rows, Nq, s_ob, s_oh, s_on, HQ,
                    SPLITS: tl.constexpr, SP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                    DC: tl.constexpr = 0, PDL: tl.constexpr = False):
    """One row's output from its splits' partials, over ``DC`` of its ``DP`` columns (0: all of them) per
    program (``tl.program_id(1)``: which columns)."""
    chain_start(PDL)
    row = tl.program_id(0)  # (b * HQ + head) * Nq + pos
    s = tl.arange(0, SP)
    s_ok = s < SPLITS
    m = tl.load(PM + s * n_rows + row, mask=s_ok, other=float("-inf"))
    lsum = tl.load(PL + s * n_rows + row, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)
    m_use = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.where(s_ok, tl.exp2(m - m_use), 0.0)
    if DC == 0:
        d = tl.arange(0, DP)
    else:
        d = tl.program_id(1) * DC + tl.arange(0, DC)
    acc = tl.load(PO + (s * n_rows + row)[:, None] * DP + d[None, :], mask=s_ok[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], 0)
    den = tl.sum(lsum * w, 0)
    out = num / tl.where(den > 0, den, 1.0)
    bh = row // Nq
    pos = row % Nq
    b = bh // HQ
    head = bh % HQ
    tl.store(Out + b * s_ob + head * s_oh + pos * s_on + d, out.to(Out.dtype.element_ty), mask=d < D)


def negligible_logit(dtype: torch.dtype) -> float:
    """A logit shift below which a query's output cannot change by a quarter of its dtype's resolution:
    shifting some logits by at most ``e`` scales softmax weights by ``exp(+-e)``, so the output moves by
    at most about ``2 e`` relative."""
    return {torch.float32: 2.0**-26, torch.float16: 2.0**-13}.get(dtype, 2.0**-10)


def prior_matters(sigma: float, dtype: torch.dtype) -> bool:
    """Whether DashAttention's prior can move an output of ``dtype`` at all: ``|beta| <= PRIOR_LOG_RANGE /
    sigma`` for every query and block, so with the default ``sigma=1e6`` it cannot in bf16 or fp16 and the
    fine stage runs without it (elsewhere the routing's per-query bound ``max_beta`` gates it per tile)."""
    return PRIOR_LOG_RANGE / sigma > negligible_logit(dtype)


def default_tile_q(group: int, nq: int, tile_rows: int = 64) -> int:
    """Query positions per tile so that the group's heads fill ``tile_rows`` rows (at least 16)."""
    gp = next_pow2(group)
    tq = min(max(1, tile_rows // gp), next_pow2(nq))
    return max(tq, -(-16 // gp))  # tl.dot needs at least 16 rows


# Decode's split fine stage: at least this many blocks of a tile's visit list per program, and at most this
# many programs per SM in all (v15: one per SM was slower for dash at 8 KV heads).
DECODE_SPLIT_BLOCKS = 2
DECODE_PROGRAMS_PER_SM = 2
# Programs of DECODE_DEEP_BLOCKS blocks, long enough loops for the pipeline to reach its steady state,
# wherever they still number DECODE_DEEP_PER_SM per SM (v32: infllmv2 8 KV heads, 96 blocks a tile: 2 / 4 / 8
# blocks a program 44.7 / 42.8 / 41.3 us a step; with fewer programs than that, 2-block programs won).
DECODE_DEEP_BLOCKS = 8
DECODE_DEEP_PER_SM = 0.5
# Columns of a row's output per combine program (0: the whole row); a decode step has few rows (one per query
# head), so narrower programs read the partials with more of the GPU (v40, H200: 0 / 64 / 32 / 16 columns, dash
# decode 128k 23.5 / 22.9 / 22.9 / 23.6 us at 2 KV heads, 54.0 / 52.9 / 52.8 / 53.0 at 8; top-k decode within 2%).
COMBINE_COLS = 64


def decode_splits(q: torch.Tensor, k: torch.Tensor, block_size: int, visits: int | None = None) -> int:
    """Programs per query tile for the fine stage: 1 in prefill; in decode, enough to fill the GPU, with
    at least ``DECODE_SPLIT_BLOCKS`` of the blocks a tile can visit each (``DECODE_DEEP_BLOCKS`` where the
    work is large enough). ``visits``: an upper bound of a tile's visit list when the method has one (top-k
    methods: ``topk`` plus the forced and window blocks per query), else every block counts."""
    b, hq, nq, _ = q.shape
    if nq > 16 or q.device.type != "cuda":
        return 1
    blocks = -(-k.shape[2] // block_size)
    if visits is not None:
        blocks = min(blocks, visits)
    sms = num_sms(q.device.index or 0)
    tiles = max(1, b * k.shape[1])
    per = DECODE_SPLIT_BLOCKS
    if (blocks // DECODE_DEEP_BLOCKS) * tiles >= DECODE_DEEP_PER_SM * sms:
        per = DECODE_DEEP_BLOCKS
    return max(1, min(blocks // per, DECODE_PROGRAMS_PER_SM * sms // tiles))


def routed_visit_list(route, tile_q: int | None) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, int | None]:
    """``(tiles, tile_q)`` for the fine stage: the visit list a decode routing launch wrote (``route.tiles``,
    for tiles of ``route.tile_q`` queries) when the caller asked for no other tile height, else ``None`` (the
    fine stage builds it with ``tile_union``)."""
    if route.tiles is not None and tile_q in (None, route.tile_q):
        return route.tiles, route.tile_q
    return None, tile_q


def sparse_attention_from_words(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    words: torch.Tensor,
    *,
    block_size: int,
    softmax_scale: float,
    window: int = 0,
    bias: torch.Tensor | None = None,
    prior: DashPrior | None = None,
    tile_q: int | None = None,
    splits: int = 1,
    num_warps: int | None = None,
    num_stages: int | None = None,
    tiles: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Block-sparse causal attention over the blocks whose bits are set in ``words``.

    Args:
        q: ``[B, Hq, Nq, D]``; k, v: ``[B, Hkv, Nk, D]``; queries are the last ``Nq`` positions.
        words: ``[B, Hkv, Nq, ceil(nblocks/32)] int32`` (``selection.pack_selection``); each query's
            current block must be set.
        bias: optional dense ``[B, Hkv, Nq, nblocks]`` logit bias (natural-log units).
        prior: DashAttention's prior, rebuilt on the fly (exclusive with ``bias``).
        window: also attend the last ``window`` keys of each query (NSA).
        splits: >1 splits each tile's visit list over programs (flash-decoding).
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    gp = next_pow2(g)
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    nblocks = -(-nk // block_size)
    if tile_q is None:
        tile_q = default_tile_q(g, nq)
    if tiles is None:
        tiles = tile_union(words, nk, block_size=block_size, tile_q=tile_q, window=window)
    tlist, tcount = tiles
    n_tiles = tlist.shape[2]
    out = torch.empty_like(q)
    dp = next_pow2(max(d, 16))
    f32 = torch.float32
    dummy = torch.empty(1, dtype=f32, device=q.device)  # never read by the kernels' unused branches
    bias_mode, ent_exp, route_scale, inv_sigma, init_b, local_b, nc = 0, 2.0, 0.0, 0.0, 0, 1, 0
    kbar = tau = mean_log = max_beta = dummy
    bias_eps = 0.0
    if bias is not None:
        bias_mode = 1
        bias = bias.to(f32).contiguous()
    elif prior is not None and prior_matters(prior.sigma, q.dtype):
        bias_mode = 2
        kbar, tau, mean_log = prior.kbar.contiguous(), prior.tau.contiguous(), prior.mean_log.contiguous()
        max_beta = prior.max_beta.contiguous()
        bias_eps = negligible_logit(q.dtype)
        nc = kbar.shape[2]
        ent_exp = 1.0 / (prior.alpha - 1.0)
        route_scale, inv_sigma = prior.route_scale, 1.0 / prior.sigma
        init_b, local_b = prior.init_blocks, prior.local_blocks
    if splits > 1:
        po = torch.empty(splits, b, hq, nq, dp, dtype=f32, device=q.device)
        pm = torch.empty(splits, b, hq, nq, dtype=f32, device=q.device)
        pl = torch.empty(splits, b, hq, nq, dtype=f32, device=q.device)
    else:
        po = pm = pl = dummy
    m_rows = gp * tile_q
    if num_warps is None:
        num_warps = 4 if m_rows * dp <= 64 * 128 else 8
    if num_stages is None:
        num_stages = FINE_STAGES if splits == 1 else DECODE_STAGES
    grid = (n_tiles, b * hkv, splits)
    chained = chain_options(q.device)  # programmatic dependent launch, for both launches
    k_in, v_in, tma = descriptor_pair(k, v, [1, 1, block_size, dp], FINE_TMA and d == dp)
    args = (
        q, k_in, v_in, out, words, tlist, tcount,
        bias if bias is not None else dummy, kbar, tau, mean_log, max_beta,
        po, pm, pl,
        softmax_scale * LOG2E, nq, nk, n_tiles, nk - nq, words.shape[-1], nblocks, nc, window, b * hq * nq,
        route_scale, ent_exp, inv_sigma, init_b, local_b, bias_eps,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        hkv,
    )
    consts = dict(
        G=g, GP=gp, TQ=tile_q, D=d, DP=dp, BLOCK_N=block_size, BIAS_MODE=bias_mode, SPLITS=splits,
        ENT_POW=entmax_integer_power(ent_exp), DOT_MODE=dot_mode(q.dtype), PIPELINE=not interpreting(), TMA=tma,
        num_warps=num_warps, **chained,
    )
    launch_with_stages(_sparse_attn_fwd_kernel, grid, args, consts, num_stages)
    if splits > 1:
        n_rows = b * hq * nq
        cols = min(COMBINE_COLS, dp) if COMBINE_COLS else 0
        _combine_kernel[(n_rows, dp // cols if cols else 1)](
            po, pm, pl, out, n_rows, nq, out.stride(0), out.stride(1), out.stride(2), hq,
            SPLITS=splits, SP=next_pow2(splits), D=d, DP=dp, DC=cols, num_warps=4,
            **chained,
        )
    return out
