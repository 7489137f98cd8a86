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

Decode (too few query tiles to fill the GPU) splits the work over the cached kernels instead
(``topk_decode``); the select and the score helpers both paths use are in ``topk_select``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.kernel_keys import KernelKeys
from dash_eval.kernels._triton.launch import (
    chain_options,
    dot_mode,
    interpreting,
    key_descriptors,
    last_dim_contiguous,
    launch_narrowing,
    launch_with_stages,
    next_pow2,
    persistent_programs,
)
from dash_eval.kernels._triton.ops import chain_start, dim_mask
from dash_eval.kernels._triton.topk_decode import decode_route
from dash_eval.kernels._triton.topk_select import (  # noqa: F401 (POOL_WEIGHTED: the methods import it here)
    POOL_MAX,
    POOL_WEIGHTED,
    TopkRoute,
    _kernel_scores,
    _overlap,
    _select_and_store,
)
from dash_eval.kernels.compression import pooled_kernels

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
# each block gathers its ``W`` kernels from it (before v22). Needs at most one kernel before ``j*r``
# (``compression.pooled_kernels``): InfLLM-V2 always, NSA where ``kernel_size <= 2 * kernel_stride``.
POOL_FUSED = True
# The select's radix stops once every row of the sub-tile has exactly its blocks (the same selection;
# v19: nsa 64k routing 21.3 -> 16.5 ms on an H200).
SELECT_EARLY_EXIT = True
# The kernel keys of the two score passes loaded through tensor descriptors (Hopper's TMA), where
# ``launch.tma_descriptor`` allows; the interpreter runs both paths.
ROUTE_TMA = True


@triton.jit
def _normaliser_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, l_i,
                      D: tl.constexpr, KC: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr,
                      TMA: tl.constexpr, bh):
    """Pass 1 on one chunk of kernels: each row's running softmax max and normaliser."""
    x, m = _kernel_scores(q, KHI, KLO, kc_base, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE, TMA, bh)
    x = tl.where(m[None, :] < nvis_row[:, None], x, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(x, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(x - m_use[:, None]), 1)
    return m_new, l_i


@triton.jit
def _probability_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l, scratch_q, colk,
                       TQ: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, KC: tl.constexpr,
                       SPLIT: tl.constexpr, DOT_MODE: tl.constexpr, TMA: tl.constexpr, bh):
    """Pass 2 on one chunk: kernel probabilities summed over the group's heads, to the scratch row."""
    x, m = _kernel_scores(q, KHI, KLO, kc_base, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE, TMA, bh)
    p = tl.where(m[None, :] < nvis_row[:, None], tl.exp2(x - m_i[:, None]) * inv_l[:, None], 0.0)
    ps = tl.sum(tl.reshape(p, (TQ, GP, KC)), 1)  # summed over the group's heads
    tl.store(scratch_q + (c * KC + colk)[None, :], ps)


@triton.jit
def _pooled_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l, scratch_q, carry,
                  inner_w, lead_w,
                  TQ: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, KC: tl.constexpr, R: tl.constexpr,
                  LEAD: tl.constexpr, POOL: tl.constexpr, SPLIT: tl.constexpr, DOT_MODE: tl.constexpr,
                  TMA: tl.constexpr, bh):
    """Pass 2 on one chunk, pooled: the group-summed kernel probabilities pooled onto the chunk's ``KC / R``
    blocks in registers (block ``j`` takes kernels ``j*R .. j*R + R-1`` of this chunk and, with ``LEAD``,
    kernel ``j*R - 1``, the previous block's last: ``carry`` brings the previous chunk's), and the block
    scores written to the scratch row. Invisible kernels count 0, which changes neither a max of
    probabilities nor a weighted sum. Returns this chunk's last kernel probability per query."""
    NB: tl.constexpr = KC // R
    x, m = _kernel_scores(q, KHI, KLO, kc_base, c, nk, D, d, dmask, scale_log2, KC, SPLIT, DOT_MODE, TMA, bh)
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
    PDL: tl.constexpr = False, TMA: tl.constexpr = False,
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
                                             D, KC, SPLIT, DOT_MODE, TMA, bh)
        else:  # the CPU interpreter cannot take a computed loop bound in range()
            c = 0
            while c < n_chunks:
                m_i, l_i = _normaliser_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, l_i,
                                             D, KC, SPLIT, DOT_MODE, TMA, bh)
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
                                          DOT_MODE, TMA, bh)
            else:
                c = 0
                while c < n_chunks:
                    carry = _pooled_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l,
                                          scratch_q, carry, inner_w, lead_w, TQ, GP, D, KC, R, LEAD, POOL, SPLIT,
                                          DOT_MODE, TMA, bh)
                    c += 1
            # the block after the last chunk, whose only visible kernel can be its lead kernel
            tail = n_chunks * (KC // R)
            tail_score = carry if POOL == 0 else carry * lead_w
            tl.store(scratch_q + tail, tail_score[:, None], mask=tail < SROW)
        else:
            if PIPELINE:
                for c in tl.range(0, n_chunks):
                    _probability_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l,
                                       scratch_q, colk, TQ, GP, D, KC, SPLIT, DOT_MODE, TMA, bh)
            else:
                c = 0
                while c < n_chunks:
                    _probability_chunk(c, q, KHI, KLO, kc_base, nk, d, dmask, scale_log2, nvis_row, m_i, inv_l,
                                       scratch_q, colk, TQ, GP, D, KC, SPLIT, DOT_MODE, TMA, bh)
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
    lead = pooled_kernels(pool == POOL_MAX, kernel_size, kernel_stride)
    width = lead + ratio  # kernels one block pools (compression.block_kernel_index)
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
        return decode_route(q, keys, nk, words, active, attended, pool=pool, block_size=block_size,
                            init_blocks=init_blocks, local_blocks=local_blocks, topk=topk, window=window,
                            tile_q=tile_q, nbp=nbp, nkp=nkp, scale_log2=scale_log2, early=SELECT_EARLY_EXIT)
    n_prog = min(total, persistent_programs(dev, ROUTE_PROGRAMS_PER_SM))
    # pipeline stages: a stage holds half the bytes when only the 16-bit high parts are read
    stages = ROUTE_STAGES if klo is not None or khi.element_size() > 2 else ROUTE_STAGES_ONE_KEY
    srow = max(nkp, nbp)  # a scratch row: kernel probabilities, or (fused) block scores and the tail block
    scratch = torch.empty(n_prog, tile_q, srow, dtype=torch.float32, device=dev)
    tile_s = select_tile(tile_q, nbp)
    after_keys = (  # the arguments after Q, KHI, KLO
        words, active, attended, scratch,
        nq, nk - nq, n_kernels, keys.capacity, nwords, nblocks, n_qtiles, total, b * hkv,
        scale_log2, kernel_size, kernel_stride, ratio, lead, init_blocks, local_blocks,
        topk, window,
        q.stride(0), q.stride(1), q.stride(2), hkv,
    )
    consts = dict(
        G=g, GP=gp, TQ=tile_q, TS=tile_s, D=d, DP=dp, C=block_size, NBP=nbp, NBP_BITS=nbp.bit_length() - 1,
        SROW=srow, W=width, POOL=pool, SPLIT=klo is not None, DOT_MODE=dot_mode(q.dtype),
        PIPELINE=ROUTE_PIPELINE and not interpreting(), EARLY=SELECT_EARLY_EXIT, **chained,
    )

    def launch_at(kc: int) -> None:
        # pooled in the probability pass: whole blocks per score chunk, lead kernels from the previous block only
        fused = POOL_FUSED and lead <= 1 and ratio & (ratio - 1) == 0 and kc % ratio == 0
        warps = num_warps or (8 if max(m_rows * kc, tile_s * nbp) >= 8192 else 4)
        khi_in, klo_in, tma = key_descriptors(khi, klo, n_kernels, kc, ROUTE_TMA)
        consts.update(KC=kc, FUSED=fused, R=ratio if fused else 1, LEAD=lead if fused else 0, num_warps=warps,
                      TMA=tma)
        launch_with_stages(_topk_route_kernel, (n_prog,), (q, khi_in, klo_in, *after_keys), consts, stages)

    # a score chunk too wide for shared memory even at one pipeline stage (fp32 keys at head dim 256) is halved
    fits_key = ("topk_route", dev, q.dtype, khi.dtype, klo is None, dp, m_rows, kc_chunk, stages, num_warps, nbp,
                ratio, lead, ROUTE_TMA)
    launch_narrowing(launch_at, kc_chunk, fits_key)
    return TopkRoute(words, active, attended)
