"""Top-k routing of a decode step (a few queries against a long cache of kernel keys; too few query tiles
to fill the GPU): the work is split over the cached kernels instead of over query tiles, in three launches.
(a) each program scores one chunk of kernels for one tile and writes the scores with the chunk's softmax
max and normaliser; (b) each program of a chunk of blocks combines the chunks' normalisers, turns its
kernels' scores into group-summed probabilities and pools them onto its blocks; (c) one program per tile
runs the exact top-k (``topk_select``) and writes the bits and counts, and, when one tile holds every query,
the fine stage's visit list (so no union launch follows). ``topk_routing.topk_route`` decides when to
take this path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.kernel_keys import KernelKeys
from dash_eval.kernels._triton.launch import chain_options, dot_mode, key_descriptors, next_pow2, tma_pays
from dash_eval.kernels._triton.ops import chain_start, dim_mask
from dash_eval.kernels._triton.selection import routing_visit_list, write_visit_list
from dash_eval.kernels._triton.topk_select import POOL_MAX, TopkRoute, _kernel_scores, _overlap, _select_and_store
from dash_eval.kernels.compression import pooled_kernels

DECODE_CHUNK_MIN = 64  # kernels per program of the score launch (at least)
DECODE_BLOCK_CHUNK = 32  # blocks per program of the pooling launch (at most)
DECODE_LIST = True  # the select launch writes the fine stage's visit list (False: a union launch does)
DECODE_SELECT_WARPS = 0  # warps of the select program (0: 4, or 8 above 4,096 block scores a tile)
# A step of one query selects that query's row alone, not its routing tile's padding rows (a tile holds at
# least 16 rows of heads x queries: 4 queries at 4 heads a group). H200, 128k, 8 KV heads, two calls: nsa
# 32.0-32.3 -> 29.6-30.0 us, infllmv2 42.1-42.2 -> 39.5-39.6 (v41).
DECODE_SELECT_ONE = True
DECODE_TMA = True  # the score launch reads the kernel keys through tensor descriptors (Hopper's TMA), if it pays


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
    PDL: tl.constexpr = False, TMA: tl.constexpr = False,
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
        x, m = _kernel_scores(q, KHI, KLO, bh * capacity * D, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE,
                              TMA, bh)
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
    TQ: tl.constexpr, BS_ROWS: tl.constexpr, C: tl.constexpr, NBP: tl.constexpr, NBP_BITS: tl.constexpr,
    LIST: tl.constexpr, EARLY: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """Stage (c): the exact top-k of the pooled block scores of one tile (and, with ``LIST``, when the
    tile holds every query, the fine stage's visit list). ``BS`` holds ``BS_ROWS`` rows a tile, of which the
    first ``TQ`` are selected (one, for a step of one query)."""
    chain_start(PDL)
    tile = tl.program_id(0)
    bh = tile // n_qtiles
    qt = tile % n_qtiles
    lane = tl.arange(0, TQ)
    cols = tl.arange(0, NBP)
    qpos = qt * TQ + lane
    q_ok = qpos < Nq
    score = tl.load(BS + (tile * BS_ROWS + lane)[:, None] * NBP + cols[None, :])
    sel = _select_and_store(score, qpos, q_ok, qpos + q_off, cols, bh, Nq, WORDS, ACTIVE, ATTENDED, n_words,
                            nblocks, init_blocks, local_blocks, topk, window, TQ, C, NBP, NBP_BITS, EARLY)
    if LIST:  # the tile's visit list, as selection.tile_union writes it (one tile: every query in it)
        union = tl.max(sel.to(tl.int32), 0) != 0
        common = tl.min(tl.where(q_ok[:, None], sel.to(tl.int32), 1), 0) != 0
        write_visit_list(union, common, cols, q_off, tl.minimum(TQ, Nq) - 1 + q_off, window, nblocks, C,
                         TLIST + bh * nblocks, TCOUNT + bh)


def decode_route(
    q: torch.Tensor, keys: KernelKeys, nk: int, words: torch.Tensor, active: torch.Tensor, attended: torch.Tensor,
    *, pool: int, block_size: int, init_blocks: int, local_blocks: int, topk: int, window: int, tile_q: int,
    nbp: int, nkp: int, scale_log2: float, early: bool,
) -> TopkRoute:
    """The three decode launches for queries ``q`` (last-dim contiguous) in tiles of ``tile_q``, writing
    ``words``, ``active`` and ``attended`` (``topk_route``'s buffers); ``nbp`` / ``nkp``: blocks and cached
    kernels rounded up to powers of two."""
    kernel_size, kernel_stride = keys.kernel_size, keys.kernel_stride
    b, hq, nq, d = q.shape
    hkv = keys.hi.shape[1]
    n_kernels = keys.count
    g = hq // hkv
    gp = next_pow2(g)
    nblocks = -(-nk // block_size)
    nwords = words.shape[-1]
    khi, klo = keys.hi, keys.lo
    ratio = block_size // kernel_stride
    lead = pooled_kernels(pool == POOL_MAX, kernel_size, kernel_stride)
    width = lead + ratio  # kernels one block pools (compression.block_kernel_index)
    n_qtiles = -(-nq // tile_q)
    total = n_qtiles * b * hkv
    dev = q.device
    chained = chain_options(dev)  # the launch keywords of programmatic dependent launch, for every launch below
    m_rows = gp * tile_q
    dp = next_pow2(max(d, 16))
    kc_dec = max(DECODE_CHUNK_MIN, next_pow2(nkp // 256))
    n_chunks = max(1, -(-n_kernels // kc_dec))
    row_len = n_chunks * kc_dec
    cb = min(nbp, DECODE_BLOCK_CHUNK)
    xs = torch.empty(total, m_rows, row_len, dtype=torch.float32, device=dev)
    pm = torch.empty(total, n_chunks, m_rows, dtype=torch.float32, device=dev)
    pl = torch.empty_like(pm)
    bs = torch.empty(total, tile_q, nbp, dtype=torch.float32, device=dev)
    tma = DECODE_TMA and tma_pays(dev, n_chunks * total)
    khi_in, klo_in, tma = key_descriptors(khi, klo, n_kernels, kc_dec, tma)
    _decode_scores_kernel[(n_chunks, total)](
        q, khi_in, klo_in, xs, pm, pl,
        nq, nk - nq, n_kernels, keys.capacity, n_chunks, n_qtiles, row_len, scale_log2, kernel_size,
        kernel_stride, q.stride(0), q.stride(1), q.stride(2), hkv,
        G=g, GP=gp, TQ=tile_q, D=d, DP=dp, KC=kc_dec, SPLIT=klo is not None, DOT_MODE=dot_mode(q.dtype), TMA=tma,
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
    tq_sel = 1 if DECODE_SELECT_ONE and nq == 1 else tile_q
    _decode_select_kernel[(total,)](
        bs, words, active, attended, tlist, tcount,
        nq, nk - nq, nwords, nblocks, n_qtiles, init_blocks, local_blocks, topk, window,
        TQ=tq_sel, BS_ROWS=tile_q, C=block_size, NBP=nbp, NBP_BITS=nbp.bit_length() - 1, LIST=listed, EARLY=early,
        num_warps=DECODE_SELECT_WARPS or (4 if tq_sel * nbp <= 4096 else 8),
        **chained,
    )
    if listed:
        return TopkRoute(words, active, attended, (tlist, tcount), tile_q)
    return TopkRoute(words, active, attended)
