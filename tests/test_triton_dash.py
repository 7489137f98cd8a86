"""DashAttention on the Triton backend (CPU interpreter) against the reference: outputs, the routed
selection bit for bit, and the stats, for prefill and decode."""

from __future__ import annotations

import pytest
import torch

from tests.triton_interp import (  # noqa: F401  (fixture)
    assert_triton_matches_reference,
    interpret_env,
    rel_err,
    triton_available,
)

pytestmark = [
    pytest.mark.skipif(not triton_available, reason="triton is not importable"),
    pytest.mark.usefixtures("interpret_env"),
]

if triton_available:
    from dash_eval.kernels import sparse_attention
    from dash_eval.kernels._triton.selection import tile_union, unpack_selection
    from dash_eval.kernels.common import num_blocks
    from dash_eval.kernels.dash.naive import dash_block_summaries
    from dash_eval.kernels.dash.naive import dash_route as reference_route
    from dash_eval.kernels.dash.triton_routing import dash_route
    from dash_eval.kernels.dash.triton_summaries import block_summaries

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}

# (B, Hq, Hkv, Nq, Nk, D): lengths off the block grid and below one block, GQA 1, 3, 4, 8, decode.
SHAPES = [
    (1, 8, 2, 100, 100, 64),
    (2, 3, 1, 45, 45, 64),
    (1, 4, 4, 12, 12, 128),
    (1, 8, 1, 70, 70, 128),
    (1, 4, 1, 1, 150, 64),
    (2, 8, 2, 1, 97, 64),
]
PARAMS = [
    {"alpha": 1.5, "scale": 8.0},
    {"alpha": 2.0, "scale": 4.0, "init_blocks": 1, "local_blocks": 2},
    {"alpha": 1.25, "scale": 6.0, "sigma": 0.5, "router": True},
]


def _cases():
    for pi in range(len(PARAMS)):
        for b, hq, hkv, nq, nk, d in SHAPES:
            for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                if dtype == torch.bfloat16 and pi != 0 and (pi, nq, hq) != (2, 100, 8):
                    continue  # bf16 with a prior that moves outputs: one shape
                case_id = f"p{pi}-B{b}-Nq{nq}-Nk{nk}-Hq{hq}-Hkv{hkv}-D{d}-{tag}"
                yield pytest.param(pi, b, hq, hkv, nq, nk, d, dtype, id=case_id)


@pytest.mark.parametrize("pi,b,hq,hkv,nq,nk,d,dtype", list(_cases()))
def test_dash_triton_matches_reference(pi, b, hq, hkv, nq, nk, d, dtype):
    gen = torch.Generator().manual_seed(17 * pi + nk + hq)
    q = torch.randn(b, hq, nq, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, hkv, nk, d, generator=gen).to(dtype) for _ in range(2))
    params = dict(PARAMS[pi], block_size=16)
    if params.pop("router", False):
        params["router"] = torch.randn(hkv * d, generator=gen)
    assert_triton_matches_reference(q, k, v, "dash", TOL[dtype], **params)


def test_prior_is_dropped_only_where_it_cannot_move_an_output():
    """|beta| <= -ln(float32's smallest normal) / sigma (the kernels clamp pbar there before the log)."""
    import math

    from dash_eval.kernels._triton.block_sparse import PRIOR_LOG_RANGE, negligible_logit, prior_matters

    assert PRIOR_LOG_RANGE >= -math.log(torch.finfo(torch.float32).tiny)
    assert not prior_matters(1e6, torch.bfloat16) and not prior_matters(1e6, torch.float16)
    assert prior_matters(1e6, torch.float32) and prior_matters(1e4, torch.bfloat16)
    assert prior_matters(0.999 * PRIOR_LOG_RANGE / negligible_logit(torch.bfloat16), torch.bfloat16)


@pytest.mark.parametrize("nq", [90, 1], ids=["prefill", "decode-3-splits"])
def test_dropping_the_prior_on_the_host_changes_no_output_bit(nq, monkeypatch):
    """bf16 at the default sigma: the fine stage without the prior (the host's rule) against the fine stage
    with it, gated per tile by the routing's own bound (the rule switched off)."""
    import dash_eval.kernels.dash.triton_attention as ta
    from dash_eval.kernels._triton import block_sparse

    monkeypatch.setattr(ta, "decode_splits", lambda q, k, c, visits=None: 3 if nq == 1 else 1)
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(1, 8, nq, 64, generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(1, 2, 200, 64, generator=gen).to(torch.bfloat16) for _ in range(2))
    params = {"alpha": 1.25, "scale": 4.0, "block_size": 16}
    dropped = sparse_attention(q, k, v, "dash", backend="triton", **params)
    monkeypatch.setattr(block_sparse, "PRIOR_LOG_RANGE", 1e30)
    gated = sparse_attention(q, k, v, "dash", backend="triton", **params)
    assert torch.equal(dropped, gated)


def test_entmax_power_is_integer_only_where_exact():
    """``ENT_POW``: integer exponents 1/(alpha-1) by multiplications, others through exp2/log2."""
    from dash_eval.kernels._triton.ops import entmax_integer_power

    assert [entmax_integer_power(1 / (a - 1)) for a in (2.0, 1.5, 1.25, 1.2, 1.1, 1.0625)] == [1, 2, 4, 5, 10, 16]
    assert [entmax_integer_power(1 / (a - 1)) for a in (1.75, 1.333, 1.05, 1.9)] == [0, 0, 0, 0]


@pytest.mark.parametrize("paired", [False, True], ids=["two-sums", "paired-sums"])
@pytest.mark.parametrize("alpha", [1.5, 1.75])
def test_decode_threshold_launch_finds_the_entmax_threshold(alpha, paired):
    """Decode's threshold launch alone (``PAIRED``: Newton's two sums in one reduction, as on the GPU, which the
    routing tests above leave out on the CPU interpreter) on two rows of 40 candidate scores, padded to 64:
    entmax from its thresholds is the reference's entmax of the rows."""
    from dash_eval.kernels._triton.ops import entmax_integer_power
    from dash_eval.kernels.dash import triton_routing as tr
    from dash_eval.kernels.entmax import entmax

    gen = torch.Generator().manual_seed(3)
    g, nbp, c, ncand, scale = 2, 64, 16, 40, 3.0
    scores = torch.randn(g, nbp, generator=gen)
    tau = torch.full((g,), float("nan"))
    ent_exp = 1.0 / (alpha - 1.0)
    # one query at position ncand * C (so blocks 0..ncand-1 are its candidates), one KV head of two query heads
    tr._dash_tau_kernel[(g,)](
        scores, tau, 1, ncand * c, ncand, 1, (alpha - 1.0) * scale, ent_exp, 2.0**-21, 1,
        G=g, GP=g, TQ=1, C=c, NBP=nbp, ENT_POW=entmax_integer_power(ent_exp), MAX_ITERS=tr._MAX_NEWTON_ITERS,
        PAIRED=paired,
    )
    x = (alpha - 1.0) * scale * scores[:, :ncand]
    mine = torch.clamp(x - tau[:, None], min=0) ** ent_exp
    ref = entmax(scale * scores[:, :ncand], alpha)
    assert 0 < int((ref > 0).sum()) < g * ncand  # a sparse distribution, not one block or all
    assert torch.allclose(mine, ref, atol=1e-5), (mine - ref).abs().max()


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.75, 1.2])
@pytest.mark.parametrize("chunk", [32, 256], ids=["scratch-rows", "one-chunk"])
def test_dash_routing_selects_the_reference_blocks(alpha, chunk):
    """600 keys = 38 blocks of 16: a 32-block chunk sends the scores through the per-program scratch row. Alpha
    1.5, 2, 1.2: entmax's power by multiplications (exponents 2, 1, 5); 1.75 the general power."""
    scale = 24.0 if alpha < 1.25 else 8.0  # alpha near 1 is denser at the same scale
    gen = torch.Generator().manual_seed(5)
    b, hq, hkv, nq, nk, d, c = 1, 8, 2, 48, 600, 64, 16
    q = torch.randn(b, hq, nq, d, generator=gen)
    k = torch.randn(b, hkv, nk, d, generator=gen)
    sm = d**-0.5
    pos = torch.arange(nk - nq, nk)
    selected, _, _ = reference_route(
        q.view(b, hkv, hq // hkv, nq, d), dash_block_summaries(k, None, c, sm), pos, num_blocks(nk, c),
        alpha=alpha, scale=scale, sigma=1e6, init_blocks=0, local_blocks=1, block_size=c, softmax_scale=sm,
    )
    route = dash_route(q, block_summaries(k, None, c, sm), nk, alpha=alpha, scale=scale, softmax_scale=sm,
                       init_blocks=0, local_blocks=1, block_size=c, chunk_blocks=chunk)
    mine = unpack_selection(route.words, num_blocks(nk, c))
    assert 0.05 < selected.float().mean() < 0.9  # a real selection, neither empty nor everything
    assert torch.equal(mine, selected)


def test_width_segments_cover_every_query_once():
    from dash_eval.kernels.dash.triton_routing import width_segments

    assert width_segments(1100, 1100, 16, 128, 4) == [(1024, 1100, 128), (512, 1024, 64), (0, 512, 32)]
    assert width_segments(1100, 1100, 16, 128, 1) == [(0, 1100, 128)]
    assert width_segments(100, 1100, 16, 128, 4) == [(24, 100, 128), (0, 24, 64)]  # a chunk of late queries
    for nq, nk, c, most in ((32768, 32768, 64, 4), (700, 4000, 16, 3), (5, 5, 16, 4)):
        nbp = max(32, 1 << (-(-nk // c) - 1).bit_length())
        segs = width_segments(nq, nk, c, nbp, most)
        assert len(segs) <= most and segs[0][1] == nq and segs[-1][0] == 0
        assert all(a[0] == b[1] for a, b in zip(segs, segs[1:]))  # contiguous, latest first
        # every query's own block (the widest column it needs) lies inside its segment's row
        assert all((nk - nq + hi - 1) // c < width for lo, hi, width in segs)


def test_route_tile_bounds_rows_and_selection():
    """Queries per routing program: rows x blocks within the register budget, queries x blocks within the
    selection's, at least the 16 rows a tensor-core product needs, at most the queries there are."""
    from dash_eval.kernels.dash import triton_routing as tr

    assert [tr.route_tile(16, w, 32768) for w in (64, 256, 512, 1024)] == [4, 4, 2, 1]  # rows bind
    assert [tr.route_tile(4, w, 32768) for w in (64, 256, 512, 1024)] == [16, 8, 4, 4]  # selection binds
    assert tr.route_tile(4, 512, 3) == 4 and tr.route_tile(16, 512, 1) == 1
    for g in (1, 3, 4, 8, 16):
        for w in (32, 128, 512, 2048):
            tq = tr.route_tile(g, w, 1 << 20)
            gp = 1 << (g - 1).bit_length()
            assert gp * tq >= 16 and (tq * w <= tr.ROUTE_SELECT_ELEMENTS or gp * tq == 16)


@pytest.mark.parametrize("loads", ["tma", "pointers"])
@pytest.mark.parametrize("chunk", [32, 256], ids=["scratch-rows", "one-chunk"])
def test_dash_routing_by_causal_width_matches_one_launch(chunk, loads, monkeypatch):
    """1,100 keys = 69 blocks of 16: prefill routed in three launches (rows of 128, 64 and 32 blocks) gives
    the selection, thresholds and per-query stats of one 128-wide launch, and the reference's selection;
    the block summaries loaded through tensor descriptors (Hopper's TMA) or pointers."""
    import dash_eval.kernels.dash.triton_routing as tr
    from dash_eval.kernels._triton import launch

    monkeypatch.setattr(tr, "ROUTE_TMA", loads == "tma")
    made = []
    make = launch.tma_descriptor
    monkeypatch.setattr(launch, "tma_descriptor", lambda t, shape: made.append(make(t, shape)) or made[-1])

    gen = torch.Generator().manual_seed(23)
    b, hq, hkv, nk, d, c = 1, 8, 2, 1100, 64, 16
    q = torch.randn(b, hq, nk, d, generator=gen)
    k = torch.randn(b, hkv, nk, d, generator=gen)
    sm = d**-0.5
    kw = dict(alpha=1.5, scale=8.0, softmax_scale=sm, init_blocks=1, local_blocks=1, block_size=c,
              chunk_blocks=chunk)
    summ = block_summaries(k, None, c, sm)
    monkeypatch.setattr(tr, "ROUTE_WIDTHS", 1)
    whole = dash_route(q, summ, nk, **kw)
    monkeypatch.setattr(tr, "ROUTE_WIDTHS", 4)
    assert len(tr.width_segments(nk, nk, c, 128, tr.ROUTE_WIDTHS)) == 3
    parts = dash_route(q, summ, nk, **kw)
    for name in ("words", "active", "attended"):
        assert torch.equal(getattr(parts, name), getattr(whole, name)), name
    # a narrower row sums in another order: thresholds agree to float rounding, and log pbar of blocks just
    # above the threshold (pbar ~ (x - tau)^2) moves the mean log-probability by a little more
    torch.testing.assert_close(parts.tau, whole.tau, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.mean_log, whole.mean_log, rtol=0, atol=1e-3)
    torch.testing.assert_close(parts.max_beta, whole.max_beta, rtol=1e-3, atol=1e-9)
    selected, _, _ = reference_route(
        q.view(b, hkv, hq // hkv, nk, d), dash_block_summaries(k, None, c, sm), torch.arange(nk),
        num_blocks(nk, c), alpha=1.5, scale=8.0, sigma=1e6, init_blocks=1, local_blocks=1, block_size=c,
        softmax_scale=sm,
    )
    assert torch.equal(unpack_selection(parts.words, num_blocks(nk, c)), selected)
    assert len(made) == (8 if loads == "tma" else 0)  # hi and its stand-in residual, for 1 + 3 launches
    assert all(desc is not None for desc in made)


def _refuse_wide_route_chunks(monkeypatch) -> list[tuple[int, int]]:
    """The dash routing kernel as a GPU with little shared memory runs it: a launch with more than 16 summaries a
    chunk is refused (``OutOfResources``), the others run; the widths remembered as fitting are forgotten first.
    Returns the list of ``(row width, chunk)`` of every launch tried."""
    import dash_eval.kernels.dash.triton_routing as tr
    from dash_eval.kernels._triton import launch
    from triton.runtime.errors import OutOfResources

    chunks = []
    kernel = tr._dash_route_kernel

    class SmallSharedMemory:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                chunks.append((kwargs["NBP"], kwargs["CH"]))
                if kwargs["CH"] > 16:
                    raise OutOfResources(1000 * kwargs["CH"], 16000, "shared memory")
                return kernel[grid](*args, **kwargs)

            return run

    monkeypatch.setattr(tr, "_dash_route_kernel", SmallSharedMemory())
    monkeypatch.setattr(launch, "_WIDTH_THAT_FITS", {})
    return chunks


def test_dash_routing_narrows_its_chunk_to_fit_shared_memory(monkeypatch):
    """A routing launch the GPU refuses for shared memory (float32 summaries at head dim 256 stage 327,696 bytes in
    chunks of 256 blocks, over sm_90's 232,448) runs again with half the blocks per chunk, rows wider than the
    chunk then going through the scratch row; the selection is still the reference's."""
    import dash_eval.kernels.dash.triton_routing as tr
    from dash_eval.kernels._triton import launch

    kernel = tr._dash_route_kernel
    chunks = _refuse_wide_route_chunks(monkeypatch)
    gen = torch.Generator().manual_seed(29)
    b, hq, hkv, nk, d, c = 1, 4, 2, 600, 32, 16
    q = torch.randn(b, hq, nk, d, generator=gen)
    k = torch.randn(b, hkv, nk, d, generator=gen)
    sm = d**-0.5
    route = dash_route(q, block_summaries(k, None, c, sm), nk, alpha=1.5, scale=8.0, softmax_scale=sm,
                       init_blocks=1, local_blocks=1, block_size=c)
    selected, _, _ = reference_route(
        q.view(b, hkv, hq // hkv, nk, d), dash_block_summaries(k, None, c, sm), torch.arange(nk),
        num_blocks(nk, c), alpha=1.5, scale=8.0, sigma=1e6, init_blocks=1, local_blocks=1, block_size=c,
        softmax_scale=sm,
    )
    assert torch.equal(unpack_selection(route.words, num_blocks(nk, c)), selected)
    # 38 blocks: one launch of 64-block rows (the queries past block 32), one of 32; each halved to 16
    assert chunks == [(64, 64), (64, 32), (64, 16), (32, 32), (32, 16)], chunks
    again = dash_route(q, block_summaries(k, None, c, sm), nk, alpha=1.5, scale=8.0, softmax_scale=sm,
                       init_blocks=1, local_blocks=1, block_size=c)
    assert chunks[5:] == [(64, 16), (32, 16)], chunks  # the widths that fit, remembered
    assert torch.equal(again.words, route.words)
    assert route.narrowed_chunk == again.narrowed_chunk == 16  # what ran, for `bench --sweep`'s label
    # where every chunk fits, the segments' widths (64 and 32 blocks) only cap it: nothing was narrowed
    monkeypatch.setattr(tr, "_dash_route_kernel", kernel)
    monkeypatch.setattr(launch, "_WIDTH_THAT_FITS", {})
    fits = dash_route(q, block_summaries(k, None, c, sm), nk, alpha=1.5, scale=8.0, softmax_scale=sm,
                      init_blocks=1, local_blocks=1, block_size=c)
    assert fits.narrowed_chunk is None and torch.equal(fits.words, route.words)


def test_dash_triton_falls_back_on_unsupported_block_size():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 30, 32, generator=gen) for h in (4, 2, 2))
    out = sparse_attention(q, k, v, "dash", backend="triton", block_size=12, scale=4.0)
    ref = sparse_attention(q, k, v, "dash", backend="reference", block_size=12, scale=4.0)
    assert torch.equal(out, ref)


def test_dash_decode_scores_launch_matches_fused_routing():
    """The decode path computes the scores in a block-parallel launch first; same selection and thresholds."""
    gen = torch.Generator().manual_seed(9)
    b, hq, hkv, nq, nk, d, c = 2, 8, 2, 1, 2100, 64, 16
    q = torch.randn(b, hq, nq, d, generator=gen).to(torch.bfloat16)
    k = torch.randn(b, hkv, nk, d, generator=gen).to(torch.bfloat16)
    summ = block_summaries(k, None, c, d**-0.5)
    kw = dict(alpha=1.5, scale=8.0, softmax_scale=d**-0.5, init_blocks=0, local_blocks=1, block_size=c)
    fused = dash_route(q, summ, nk, precompute=False, **kw)
    split = dash_route(q, summ, nk, precompute=True, **kw)
    assert torch.equal(fused.words, split.words)
    assert torch.equal(fused.attended, split.attended)
    torch.testing.assert_close(fused.tau, split.tau, rtol=0, atol=1e-5)


# Decode forced onto the GPU's path (scores launch, one threshold program per row, then the selection):
# (B, Hq, Hkv, Nq, Nk, D, block, dtype, params index). GQA 1, 3, 4 (3 and 4 pad their 16-row tiles with
# query positions past Nq), one to a few queries, one or several score chunks (Nk 1100 / 16 = 69 blocks).
DECODE_CASES = [
    (1, 4, 4, 1, 300, 64, 16, torch.float32, 0),
    (2, 6, 2, 1, 330, 128, 32, torch.float32, 1),
    (1, 8, 2, 1, 1100, 64, 16, torch.float32, 2),
    (1, 8, 2, 1, 2100, 64, 16, torch.float32, 1),
    (2, 8, 2, 1, 250, 128, 16, torch.bfloat16, 0),
    (1, 3, 1, 1, 520, 64, 32, torch.bfloat16, 0),
    (1, 16, 1, 5, 400, 64, 16, torch.float32, 0),
    (1, 8, 2, 1, 700, 64, 16, torch.bfloat16, 2),  # bf16 with a prior that moves outputs
]


def _decode_id(case):
    b, hq, hkv, nq, nk, d, c, dtype, pi = case
    return f"p{pi}-B{b}-Nq{nq}-Nk{nk}-Hq{hq}-Hkv{hkv}-D{d}-C{c}-{'fp32' if dtype == torch.float32 else 'bf16'}"


@pytest.mark.parametrize("mode", ["chunks-32", "one-chunk", "v8"])
@pytest.mark.parametrize("case", DECODE_CASES, ids=[_decode_id(c) for c in DECODE_CASES])
def test_dash_decode_path_matches_reference(case, mode, monkeypatch):
    """The decode path end to end (``precompute=True``, as a CUDA decode step takes it) against the reference:
    output, routed selection and stats; and every routing output against the fused kernel's. Modes: the
    thresholds one row per program and the selection split over chunks of 32 blocks (several per row here) or
    of the default 512 (one); v8: both in the routing kernel, one program per query tile. The first two also split
    the fine stage over 3 programs a tile, as a GPU's decode step does (the CPU takes one)."""
    import functools

    import dash_eval.kernels.dash.triton_attention as ta
    import dash_eval.kernels.dash.triton_routing as tr

    monkeypatch.setattr(tr, "_DECODE_TAU_ROWS", mode != "v8")
    monkeypatch.setattr(tr, "DECODE_TMA", mode != "v8")  # v8 mode: the score launch's pointer loads
    if mode == "chunks-32":
        monkeypatch.setattr(tr, "_DECODE_SELECT_CHUNK", 32)
    if mode != "v8":
        monkeypatch.setattr(ta, "decode_splits", lambda q, k, c, visits=None: 3)
    b, hq, hkv, nq, nk, d, c, dtype, pi = case
    gen = torch.Generator().manual_seed(nk + 7 * hq + pi)
    q = torch.randn(b, hq, nq, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, hkv, nk, d, generator=gen).to(dtype) for _ in range(2))
    params = dict(PARAMS[pi], block_size=c)
    if params.pop("router", False):
        params["router"] = torch.randn(hkv * d, generator=gen)
    monkeypatch.setattr(ta, "dash_route", functools.partial(dash_route, precompute=True))
    out, stats = sparse_attention(q, k, v, "dash", backend="triton", return_stats=True, **params)
    ref, ref_stats = sparse_attention(q, k, v, "dash", backend="reference", return_stats=True, **params)
    assert out.dtype == dtype and not torch.isnan(out).any()
    assert rel_err(out, ref) < TOL[dtype]
    assert stats.attended_pairs == ref_stats.attended_pairs
    assert torch.equal(stats.active_blocks, ref_stats.active_blocks)

    # The routing outputs themselves, against the reference and against the fused (prefill) kernel.
    sm = d**-0.5
    router = params.get("router")
    kw = dict(alpha=params["alpha"], scale=params["scale"], softmax_scale=sm, init_blocks=params.get("init_blocks", 0),
              local_blocks=params.get("local_blocks", 1), block_size=c, sigma=params.get("sigma", 1e6))
    summ = block_summaries(k, router, c, sm)
    split = dash_route(q, summ, nk, precompute=True, **kw)
    fused = dash_route(q, summ, nk, precompute=False, **kw)
    nblocks = num_blocks(nk, c)
    pos = torch.arange(nk - nq, nk)
    selected, bias, pbar = reference_route(
        q.float().view(b, hkv, hq // hkv, nq, d), dash_block_summaries(k, router, c, sm), pos, nblocks,
        **{key: kw[key] for key in ("alpha", "scale", "sigma", "init_blocks", "local_blocks", "block_size")},
        softmax_scale=sm,
    )
    assert torch.equal(unpack_selection(split.words, nblocks), selected)
    assert torch.equal(split.words, fused.words)
    assert torch.equal(split.active, selected.sum(-1).to(torch.int32))
    assert torch.equal(split.attended, fused.attended)
    torch.testing.assert_close(split.tau, fused.tau, rtol=1e-5, atol=1e-5)
    routed = pbar > 0
    ref_mean_log = torch.where(routed, pbar.clamp(min=1e-38).log(), 0.0).sum(-1) / routed.sum(-1).clamp(min=1)
    torch.testing.assert_close(split.mean_log, ref_mean_log, rtol=1e-4, atol=1e-4 if dtype == torch.float32 else 2e-2)
    torch.testing.assert_close(split.mean_log, fused.mean_log, rtol=1e-5, atol=1e-5)
    # max |log pbar - mean_log| is set by the smallest routed pbar = (x - tau)^e, whose log moves ~e/(x - tau)
    # times as much as tau: the threshold's last-bit differences show at ~1e-4 here.
    ref_max_beta = bias[..., : pbar.shape[-1]].abs().amax(-1)
    torch.testing.assert_close(split.max_beta, ref_max_beta, rtol=1e-3, atol=1e-4 if dtype == torch.float32 else 2e-2)
    # Every query in one routing tile (all cases but Nq = 5 at 16 heads per KV head), the selection launch's
    # last program also wrote the fine stage's visit list: the same entries as the union launch builds.
    assert fused.tiles is None and (split.tiles is not None) == (mode != "v8" and nq == 1)
    if split.tiles is not None:
        tlist, tcount = split.tiles
        ref_list, ref_count = tile_union(split.words, nk, block_size=c, tile_q=split.tile_q)
        assert torch.equal(tcount, ref_count)
        for bi in range(b):
            for h in range(hkv):
                n = int(tcount[bi, h, 0])
                assert torch.equal(tlist[bi, h, 0, :n], ref_list[bi, h, 0, :n])
    torch.testing.assert_close(split.max_beta, fused.max_beta, rtol=1e-4, atol=1e-5)


def test_bench_sweep_labels_the_chunk_that_ran(monkeypatch):
    """``dash-eval bench --sweep`` (its ``sweep_configs``, run here on the interpreter with each timing replaced by
    one call): every routing and fine-stage configuration runs, and a routing chunk the GPU refused (here: any over
    16 blocks) is labelled with the chunk that ran."""
    from dash_eval.kernels import bench

    _refuse_wide_route_chunks(monkeypatch)
    monkeypatch.setattr(bench, "_median_ms", lambda fn, graph=False: (fn(), 1.0)[1])
    case = bench.Case("tiny", "dash", 150, q_heads=4, kv_heads=2, head_dim=16, params={"block_size": 8, "scale": 8.0})
    q, k, v = bench.structured_inputs(case, torch.float32, torch.device("cpu"))
    lines = []
    bench.sweep_configs(bench.SparseRun(case, q, k, v, case.head_dim**-0.5), lines.append)
    route = [ln for ln in lines if "sweep route" in ln]
    assert len(route) == 4, route
    assert all("chunk=256 (narrowed to 16)" in ln and ln.endswith("1.000 ms") for ln in route), route
    fine = [ln for ln in lines if "sweep fine" in ln]
    assert len(fine) == 16 and all(ln.endswith("1.000 ms") for ln in fine), fine



@pytest.mark.parametrize("method,tokens", [("nsa", 16), ("infllmv2", 31), ("nsa", 40)])
def test_bench_decode_step_of_a_cache_shorter_than_a_kernel(method, tokens):
    """``dash-eval bench --decode`` of ``nsa`` / ``infllmv2`` rewrites the cache's newest kernel key every timed step;
    with fewer cached tokens than ``kernel_size`` (32) there is none, and the step wrote one before the cache (kernel
    index -1: the interpreter's IndexError or heap corruption, memory outside the cache on a GPU)."""
    from dash_eval.kernels import bench

    case = bench.Case("tiny", method, tokens, q_heads=4, kv_heads=2, head_dim=32, queries=1)
    q, k, v = bench.structured_inputs(case, torch.float32, torch.device("cpu"))
    run = bench.SparseRun(case, q, k, v, case.head_dim**-0.5)
    count = run.kernel_keys.count
    for _ in range(2):
        out, _ = run.forward(return_stats=True)
    assert run.kernel_keys.count == count == (0 if tokens < 32 else (tokens - 32) // 16 + 1)
    assert run.check(out, lambda line: None).startswith("ok")


def test_bench_batch_reaches_the_inputs_and_the_visited_count(monkeypatch):
    """``dash-eval bench`` with several sequences: each its own random draw, and ``visited`` a fraction of the whole
    batch's causal range, so a batch of the same selection twice walks what one copy walks."""
    from types import SimpleNamespace

    from dash_eval.kernels import bench
    from dash_eval.kernels._triton.selection import pack_selection

    case = bench.Case("b", "dash", 96, q_heads=32, kv_heads=2, head_dim=16, batch=3)
    q, k, v = bench.structured_inputs(case, torch.float32, torch.device("cpu"))
    assert q.shape == (3, 32, 96, 16) and k.shape == v.shape == (3, 2, 96, 16)
    assert not torch.equal(q[0], q[1]) and not torch.equal(k[1], k[2])
    assert [c.batch for c in bench.SHAPE_SETS["decode-batch"]] == [4] * 6 + [16] * 6

    # 96 queries, blocks of 8: every query its own block and block 0; a tile (4 queries at 16 heads a group) walks 2
    # blocks, or 1 where its queries' own block is block 0
    n, bs = 96, 8
    sel = torch.zeros(1, 2, n, n // bs, dtype=torch.bool)
    sel[..., 0] = True
    sel[:, :, torch.arange(n), torch.arange(n) // bs] = True
    walked = (2 * (n // 4) - 2) * 4 * bs * 2  # tiles x blocks, times 4 queries, block size and 2 KV heads
    causal = n * (n + 1) // 2 * 2
    for batch in (1, 2):
        words = pack_selection(sel.repeat(batch, 1, 1, 1))
        monkeypatch.setattr(bench, "_words", lambda run, words=words: words)
        run = SimpleNamespace(q=q[:1].repeat(batch, 1, 1, 1), k=k[:1].repeat(batch, 1, 1, 1),
                              params=SimpleNamespace(block_size=bs))
        assert bench._visited(run) == walked / causal


@pytest.mark.parametrize("method", ["dash", "nsa"])
def test_bench_decode_copies_route_alike_on_their_own_storage(monkeypatch, method):
    """A decode case is timed cycling through copies of its inputs, so that L2 does not serve a step whose reads
    fit in it (do_bench_cudagraph does not flush L2): each copy holds its own storage and decode caches and gives
    the same output; the copy count reads 3x the L2 size per round, within 32 copies and 8 GiB."""
    from types import SimpleNamespace

    from dash_eval.kernels import bench

    case = bench.Case("tiny", method, 200, q_heads=4, kv_heads=2, head_dim=32, queries=1,
                      params={"block_size": 16, "scale": 4.0} if method == "dash" else {"topk": 2})
    q, k, v = bench.structured_inputs(case, torch.float32, torch.device("cpu"))
    run = bench.SparseRun(case, q, k, v, case.head_dim**-0.5)
    other = run.copy()
    assert other.params is run.params
    assert other.k.data_ptr() != run.k.data_ptr() and other.v.data_ptr() != run.v.data_ptr()
    cache = (lambda r: r.summaries.kbar) if method == "dash" else (lambda r: r.kernel_keys.hi)
    assert cache(other).data_ptr() != cache(run).data_ptr()
    torch.testing.assert_close(other.forward(), run.forward(), rtol=0, atol=0)
    calls = []
    monkeypatch.setattr(bench, "_median_ms", lambda fn, graph=False: (calls.append(graph), fn(), 6.0)[2])
    assert bench._per_call_ms([run.forward, other.forward, run.forward]) == 2.0 and calls == [True]

    l2 = 50 * 2**20
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(L2_cache_size=l2))
    assert bench._graph_copies(3 * l2, 3 * l2) == 1  # dense decode of a long cache: one round already evicts
    assert bench._graph_copies(l2, l2) == 3
    assert bench._graph_copies(l2 / 100, 4 * l2) == 32  # a sparse step reading 1% of L2
    assert bench._graph_copies(l2 / 100, 2**30) == 8  # at most 8 GiB of copies
    assert bench._graph_copies(l2 / 100, 2**34) == 1
