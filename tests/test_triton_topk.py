"""NSA and InfLLM-V2 on the Triton backend (CPU interpreter) against the reference: outputs, stats and
the selection, including NSA's merged window, ties between blocks that share a kernel, and decode."""

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

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}

# (B, Hq, Hkv, Nq, Nk, D)
SHAPES = [
    (1, 8, 2, 100, 100, 64),
    (2, 3, 1, 45, 45, 64),
    (1, 4, 4, 12, 12, 128),
    (1, 8, 1, 1, 150, 64),
]
PARAMS = {
    "infllmv2": [
        {"kernel_size": 4, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1},
        {"kernel_size": 8, "kernel_stride": 4, "init_blocks": 0, "local_blocks": 2, "topk": 2},
    ],
    "nsa": [
        {"kernel_size": 4, "kernel_stride": 2, "init_blocks": 1, "local_blocks": 1, "topk": 1, "window": 0},
        {"kernel_size": 8, "kernel_stride": 4, "init_blocks": 1, "local_blocks": 2, "topk": 1, "window": 20},
    ],
}


def _cases():
    for method, settings in PARAMS.items():
        for pi in range(len(settings)):
            for b, hq, hkv, nq, nk, d in SHAPES:
                for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                    if dtype == torch.bfloat16 and (pi or nq == 1):
                        continue
                    case_id = f"{method}{pi}-B{b}-Nq{nq}-Nk{nk}-Hq{hq}-Hkv{hkv}-D{d}-{tag}"
                    yield pytest.param(method, pi, b, hq, hkv, nq, nk, d, dtype, id=case_id)


@pytest.mark.parametrize("method,pi,b,hq,hkv,nq,nk,d,dtype", list(_cases()))
def test_topk_triton_matches_reference(method, pi, b, hq, hkv, nq, nk, d, dtype):
    gen = torch.Generator().manual_seed(31 * pi + nk + hq)
    q = torch.randn(b, hq, nq, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, hkv, nk, d, generator=gen).to(dtype) for _ in range(2))
    params = dict(PARAMS[method][pi], block_size=16)
    assert_triton_matches_reference(q, k, v, method, TOL[dtype], **params)


@pytest.mark.parametrize("loads", ["tma", "pointers"])
@pytest.mark.parametrize("fused", [True, False], ids=["pooled-pass", "pooled-from-kernels"])
@pytest.mark.parametrize("method", ["infllmv2", "nsa"])
def test_topk_routing_tile_split_into_select_subtiles(method, fused, loads, monkeypatch):
    """A routing tile of 32 rows (8 queries x 4 heads) whose select runs on sub-tiles of 2 queries
    (``SELECT_ELEMENTS`` made small): the same output, selection and stats as the reference, with the pooling
    done in the probability pass (the default) or from a scratch row of kernel probabilities, and the kernel
    keys loaded through tensor descriptors (Hopper's TMA) or pointers."""
    from dash_eval.kernels._triton import launch
    from dash_eval.kernels._triton import topk_routing as tr

    monkeypatch.setattr(tr, "POOL_FUSED", fused)
    monkeypatch.setattr(tr, "ROUTE_TMA", loads == "tma")
    made = []
    make = launch.tma_descriptor
    def counted(t, shape):  # the routing's kernel-key descriptors only (3-d; the fine stage's K and V are 4-d)
        desc = make(t, shape)
        if len(shape) == 3:
            made.append(desc)
        return desc

    monkeypatch.setattr(launch, "tma_descriptor", counted)

    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 8, 37, 64, generator=gen)
    k, v = (torch.randn(1, 2, 230, 64, generator=gen) for _ in range(2))
    params = dict(PARAMS[method][1], block_size=16)
    monkeypatch.setattr(tr, "ROUTE_ROWS", 32)
    monkeypatch.setattr(tr, "SELECT_ELEMENTS", 32)
    nbp = 16
    assert tr.route_tile(4, 37, 64) == 8 and tr.select_tile(8, nbp) == 2
    out, stats = sparse_attention(q, k, v, method, backend="triton", return_stats=True, **params)
    ref, ref_stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
    assert rel_err(out, ref) < TOL[torch.float32]
    assert torch.equal(stats.active_blocks, ref_stats.active_blocks)
    assert stats.attended_pairs == ref_stats.attended_pairs
    assert len(made) == (2 if loads == "tma" else 0)  # hi and the residual's stand-in
    assert all(desc is not None for desc in made)


@pytest.mark.parametrize("method", ["infllmv2", "nsa"])
def test_topk_default_geometry_selects_a_strict_subset(method):
    """Block 64, kernels 32/16 (the shared kernel between neighbours makes max-pooled ties), 400 keys."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, h, 400, 64, generator=gen) for h in (4, 1, 1))
    params = {"init_blocks": 1, "local_blocks": 1, "topk": 1}
    if method == "nsa":
        params["window"] = 64
    out, stats = sparse_attention(q, k, v, method, backend="triton", return_stats=True, **params)
    ref, ref_stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
    assert 0.2 < stats.sparsity < 0.9
    assert rel_err(out, ref) < TOL[torch.float32]
    assert torch.equal(stats.active_blocks, ref_stats.active_blocks)


@pytest.mark.parametrize("tq,nq", [(4, 3), (1, 1)], ids=["tile", "one-query"])
@pytest.mark.parametrize("early", [False, True], ids=["all-bits", "early-exit"])
@pytest.mark.parametrize("values", [3, 1000], ids=["many-ties", "few-ties"])
def test_exact_topk_select_on_tied_scores(values, early, tq, nq):
    """The select launch alone on block scores drawn from ``values`` levels (so many exact ties, -inf and 0
    among them): forced blocks plus the ``topk`` best eligible ones, ties to the more recent block (the radix
    on the score, then on the block index where the last slot is tied). ``one-query``: a decode step's select
    of its one query's row out of a routing tile of 4 rows."""
    from dash_eval.kernels._triton import topk_decode
    from dash_eval.kernels._triton.launch import next_pow2
    from dash_eval.kernels._triton.selection import tile_union, unpack_selection
    from dash_eval.kernels.common import forced_blocks, topk_recent

    gen = torch.Generator().manual_seed(values)
    c, nblocks, topk, init_b, local_b = 16, 70, 9, 1, 2
    rows = 4  # the routing tile's rows of block scores; the select reads the first tq
    nbp = next_pow2(nblocks)
    q_off = nblocks * c - nq - 5  # the last queries sit in the last-but-one block
    levels = torch.cat([torch.tensor([float("-inf"), 0.0]), torch.rand(values - 2 if values > 2 else 1, generator=gen)])
    scores = levels[torch.randint(0, levels.numel(), (1, rows, nbp), generator=gen)]
    words = torch.zeros(1, 1, nq, -(-nblocks // 32), dtype=torch.int32)
    active = torch.zeros(1, 1, nq, dtype=torch.int32)
    attended = torch.zeros_like(active)
    tlist = torch.zeros(1, 1, 1, nblocks, dtype=torch.int32)
    tcount = torch.zeros(1, 1, 1, dtype=torch.int32)
    topk_decode._decode_select_kernel[(1,)](
        scores, words, active, attended, tlist, tcount, nq, q_off, words.shape[-1], nblocks, 1, init_b, local_b,
        topk, 0, TQ=tq, BS_ROWS=rows, C=c, NBP=nbp, NBP_BITS=nbp.bit_length() - 1, LIST=True, EARLY=early,
    )
    ref_list, ref_count = tile_union(words, q_off + nq, block_size=c, tile_q=tq)
    assert torch.equal(tcount, ref_count) and torch.equal(tlist[..., : int(tcount)], ref_list[..., : int(tcount)])
    pos = torch.arange(q_off, q_off + nq)
    cur = pos // c
    forced = forced_blocks(cur, nblocks, init_b, local_b)
    eligible = (torch.arange(nblocks)[None, :] < cur[:, None]) & ~forced
    chosen = topk_recent(scores[0, :nq, :nblocks], eligible, topk)  # the reference's rule: ties to the recent
    assert (chosen.sum(-1) == topk).all()
    for i in range(nq):
        expect = forced[i] | chosen[i]
        got = unpack_selection(words[0, 0, i], nblocks)
        assert torch.equal(got, expect), (i, torch.nonzero(got ^ expect).flatten().tolist())


@pytest.mark.parametrize("method", ["infllmv2", "nsa"])
def test_topk_blocks_of_one_kernel_stride(method, monkeypatch):
    """Blocks one kernel stride long (kernels two strides long): a block's own kernel ends a stride past the
    block, so just after a block completes its only visible kernel is the one it shares with the block
    before. With 16-kernel score chunks, the last routing tile's queries (up to 286) see at most kernels 0-15
    (one chunk), and block 16, eligible for queries 272-286 with kernel 15 its only visible one, lies past
    that chunk: the pooled pass scores it as the tail block. Keys of kernel 15 (tokens 240-271) are made to
    match those queries, so block 16 is among their best."""
    from dash_eval.kernels._triton import topk_routing as tr

    monkeypatch.setattr(tr, "ROUTE_TILE_SCORES", 16)  # 16 kernels per score chunk
    gen = torch.Generator().manual_seed(23)
    q = torch.randn(1, 4, 287, 64, generator=gen)
    k, v = (torch.randn(1, 1, 287, 64, generator=gen) for _ in range(2))
    topic = torch.randn(64, generator=gen)
    k[:, :, 240:272] += topic
    q[:, :, 271:287] += topic
    params = {"block_size": 16, "kernel_size": 32, "kernel_stride": 16, "init_blocks": 0, "local_blocks": 1,
              "topk": 3}
    if method == "nsa":
        params["window"] = 0
    out, stats = sparse_attention(q, k, v, method, backend="triton", return_stats=True, **params)
    ref, ref_stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
    assert rel_err(out, ref) < TOL[torch.float32]
    assert torch.equal(stats.active_blocks, ref_stats.active_blocks)


@pytest.mark.parametrize("method", ["infllmv2", "nsa", "dash"])
def test_head_dim_below_the_padded_tile(method):
    """Head dim 8, which the kernels pad to 16: the keys go through pointer loads (a descriptor's box would be
    narrower than the padded tile), and the output matches the reference."""
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(1, 4, 70, 8, generator=gen)
    k, v = (torch.randn(1, 2, 70, 8, generator=gen) for _ in range(2))
    params = {"block_size": 16, "scale": 4.0} if method == "dash" else dict(PARAMS[method][1], block_size=16)
    out = sparse_attention(q, k, v, method, backend="triton", **params)
    ref = sparse_attention(q, k, v, method, backend="reference", **params)
    assert rel_err(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize("block_size", [16, 64], ids=["pooled-in-chunk", "chunk-below-block"])
def test_routing_narrows_its_score_chunk_to_fit_shared_memory(block_size, monkeypatch):
    """A routing launch refused for shared memory even at one pipeline stage (as fp32 keys at head dim 256 are on
    an H100, with 128-kernel chunks) runs again with half the kernels per score chunk, until it fits; the width
    that fit is remembered, and the selection is the reference's. With blocks of 64 and a kernel stride of 2 the
    16-kernel chunk is narrower than a block, so pooling leaves the score pass (FUSED off)."""
    from dash_eval.kernels._triton import launch
    from dash_eval.kernels._triton import topk_routing as tr
    from triton.runtime.errors import OutOfResources

    launched = []
    real = tr.launch_with_stages

    def small_shared_memory(kernel, grid, args, kwargs, stages):
        launched.append((kwargs["KC"], kwargs["FUSED"]))
        if kwargs["KC"] > 16:
            raise OutOfResources(1000 * kwargs["KC"], 16000, "shared memory")
        real(kernel, grid, args, kwargs, stages)

    monkeypatch.setattr(tr, "launch_with_stages", small_shared_memory)
    monkeypatch.setattr(launch, "_WIDTH_THAT_FITS", {})
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 4, 150, 32, generator=gen)
    k, v = (torch.randn(1, 2, 150, 32, generator=gen) for _ in range(2))
    params = {"block_size": block_size, "kernel_size": 4, "kernel_stride": 2, "topk": 1, "local_blocks": 1}
    for method in ("nsa", "infllmv2"):
        out, stats = sparse_attention(q, k, v, method, backend="triton", return_stats=True, **params)
        ref, ref_stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
        assert rel_err(out, ref) < TOL[torch.float32]
        assert torch.equal(stats.active_blocks, ref_stats.active_blocks)
    # halved down to 16; the second method starts there
    assert [kc for kc, _ in launched] == [128, 64, 32, 16, 16], launched
    assert [fused for _, fused in launched] == [True, True, True, block_size == 16, block_size == 16], launched


def test_routing_over_shared_memory_falls_back_to_the_reference(monkeypatch):
    """Where even the narrowest score chunk at one pipeline stage exceeds the GPU's shared memory, the routing
    raises OutOfResources (remembering nothing): the method then runs the reference, with a warning."""
    from dash_eval.kernels._triton import launch
    from dash_eval.kernels._triton import topk_routing as tr
    from triton.runtime.errors import OutOfResources

    widths = []

    def refuse(kernel, grid, args, kwargs, stages):
        widths.append(kwargs["KC"])
        raise OutOfResources(262152, 232448, "shared memory")

    monkeypatch.setattr(tr, "launch_with_stages", refuse)
    monkeypatch.setattr(launch, "_WIDTH_THAT_FITS", {})
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 40, 32, generator=gen)
    k, v = (torch.randn(1, 2, 40, 32, generator=gen) for _ in range(2))
    params = {"block_size": 16, "topk": 1, "local_blocks": 1, "kernel_size": 4, "kernel_stride": 2}
    with pytest.warns(RuntimeWarning, match="shared memory"):
        out = sparse_attention(q, k, v, "nsa", backend="triton", **params)
    assert torch.equal(out, sparse_attention(q, k, v, "nsa", backend="reference", **params))
    assert widths == [32, 16] and launch._WIDTH_THAT_FITS == {}, widths
