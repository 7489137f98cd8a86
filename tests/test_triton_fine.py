"""The Triton fine stage (block-sparse attention over bit-packed selections) on the CPU interpreter,
against the reference ``block_sparse_attention`` given the same selection, bias and window."""

from __future__ import annotations

import pytest
import torch

from tests.triton_interp import interpret_env, rel_err, triton_available  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.skipif(not triton_available, reason="triton is not importable"),
    pytest.mark.usefixtures("interpret_env"),
]

if triton_available:
    from dash_eval.kernels._triton import block_sparse, launch
    from dash_eval.kernels._triton.block_sparse import sparse_attention_from_words
    from dash_eval.kernels._triton.selection import FULL_MASK, pack_selection, tile_union, unpack_selection
    from dash_eval.kernels.common import block_sparse_attention, forced_blocks

TOL = {torch.float32: 2e-6, torch.bfloat16: 1.5e-2}

# (B, Hq, Hkv, Nq, Nk, D, block_size, window, bias, splits)
CASES = [
    (1, 8, 2, 100, 100, 64, 16, 0, False, 1),  # N off the block grid
    (2, 3, 1, 37, 37, 64, 16, 0, True, 1),  # G = 3 (padded to 4 rows), dense bias
    (1, 4, 4, 10, 10, 128, 16, 0, False, 1),  # below one block, G = 1
    (1, 8, 1, 50, 90, 128, 16, 20, False, 1),  # G = 8, queries are the last 50 keys, window
    (1, 8, 2, 1, 200, 64, 16, 0, True, 3),  # decode, split-K
    (1, 4, 1, 3, 77, 96, 32, 40, False, 2),  # head dim 96, block 32, few queries, window
]


def _case_id(c):
    b, hq, hkv, nq, nk, d, bs, w, bias, sp = c
    return f"B{b}-Nq{nq}-Nk{nk}-Hq{hq}-Hkv{hkv}-D{d}-C{bs}-W{w}{'-bias' if bias else ''}-S{sp}"


def _inputs(case, dtype, seed=0):
    b, hq, hkv, nq, nk, d, bs, window, use_bias, splits = case
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, nk, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, nk, d, generator=gen).to(dtype)
    nb = -(-nk // bs)
    qblock = torch.arange(nk - nq, nk) // bs
    sel = (torch.rand(b, hkv, nq, nb, generator=gen) < 0.4) & (torch.arange(nb)[None, :] <= qblock[:, None])
    sel |= forced_blocks(qblock, nb, 0, 1)
    bias = torch.where(sel, torch.randn(b, hkv, nq, nb, generator=gen), 0.0) if use_bias else None
    return q, k, v, sel, bias


@pytest.mark.parametrize("loads", ["tma", "pointers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fine_stage_matches_reference(case, dtype, loads, monkeypatch):
    """Both ways of loading K and V tiles: tensor descriptors (Hopper's TMA, where the head dim is a power
    of two) and masked pointer loads (other GPUs, other head dims)."""
    q, k, v, sel, bias = _inputs(case, dtype)
    bs, window, splits = case[6], case[7], case[9]
    scale = q.shape[-1] ** -0.5
    monkeypatch.setattr(block_sparse, "FINE_TMA", loads == "tma")
    descriptors = []
    make = launch.tma_descriptor
    monkeypatch.setattr(launch, "tma_descriptor", lambda t, shape: descriptors.append(make(t, shape)) or
                        descriptors[-1])
    ref = block_sparse_attention(q.float(), k.float(), v.float(), sel, bias, block_size=bs, softmax_scale=scale,
                                 window=window)
    out = sparse_attention_from_words(q, k, v, pack_selection(sel), block_size=bs, softmax_scale=scale,
                                      window=window, bias=bias, splits=splits)
    power_of_two = q.shape[-1] & (q.shape[-1] - 1) == 0
    assert len(descriptors) == (2 if loads == "tma" and power_of_two else 0)
    assert all(desc is not None for desc in descriptors)
    assert out.dtype == dtype
    assert not torch.isnan(out).any()
    assert rel_err(out, ref) < TOL[dtype]


def test_pack_roundtrip_and_tile_union():
    gen = torch.Generator().manual_seed(3)
    sel = torch.rand(2, 3, 45, 70, generator=gen) < 0.2
    words = pack_selection(sel)
    assert words.shape == (2, 3, 45, 3) and words.dtype == torch.int32
    assert torch.equal(unpack_selection(words, 70), sel)
    tlist, tcount = tile_union(words, 70 * 16, block_size=16, tile_q=8)
    for t in range(tlist.shape[2]):
        union = sel[:, :, t * 8 : t * 8 + 8].any(2)  # [B, Hkv, nblocks]
        for bi in range(2):
            for h in range(3):
                n = int(tcount[bi, h, t])
                expect = torch.nonzero(union[bi, h]).flatten().to(torch.int32)
                assert torch.equal(tlist[bi, h, t, :n] & FULL_MASK.value, expect)


def test_decode_splits_fill_the_gpu_within_the_visit_bound(monkeypatch):
    """Decode's split count (``decode_splits``) on a stand-in 132-SM CUDA device: prefill and the CPU take one
    program per tile; decode at most two programs per SM in all, at least two blocks of the visit bound each, and
    eight (a full pipeline) where that still gives half a program per SM."""
    from types import SimpleNamespace

    from dash_eval.kernels._triton import block_sparse

    monkeypatch.setattr(block_sparse, "num_sms", lambda index: 132)

    def splits(nq, hkv, nk, visits=None, device="cuda"):
        q = SimpleNamespace(shape=(1, 32, nq, 128), device=SimpleNamespace(type=device, index=0))
        return block_sparse.decode_splits(q, SimpleNamespace(shape=(1, hkv, nk, 128)), 64, visits=visits)

    assert splits(1, 2, 131072) == 132  # dash: every block counts, 2 x 132 programs over 2 KV heads
    assert splits(1, 8, 131072) == 33
    assert splits(1, 2, 131072, visits=25) == 12  # nsa's bound: topk 13 + 3 forced + 9 window blocks
    assert splits(1, 8, 131072, visits=96) == 12  # infllmv2's 96 at 8 KV heads: 96 programs of 8 blocks
    assert splits(1, 2, 131072, visits=96) == 48  # at 2 KV heads 8-block programs would be 24: 2 blocks each
    assert splits(1, 8, 131072, visits=25) == 12  # nsa at 8 KV heads: 3 x 8 deep programs are too few
    assert splits(1, 2, 100, visits=1) == 1
    assert splits(64, 2, 131072) == 1  # prefill
    assert splits(1, 2, 131072, device="cpu") == 1


def test_tma_descriptor_follows_the_hardware_rules():
    """Descriptors only where TMA can take the tensor; elsewhere the fine stage falls back to pointer loads
    and gives the same output."""
    from dash_eval.kernels._triton.launch import tma_descriptor

    base = torch.randn(1, 2, 40, 65)
    assert tma_descriptor(base[..., :64].contiguous(), [1, 1, 16, 64]) is not None
    assert tma_descriptor(base[..., 1:], [1, 1, 16, 64]) is None  # base 4 bytes past a 16-byte boundary
    assert tma_descriptor(base[..., :64], [1, 1, 16, 64]) is None  # row stride 260 bytes
    assert tma_descriptor(base[..., :64].contiguous(), [1, 1, 24, 64]) is None  # block not a power of two
    assert tma_descriptor(torch.zeros(1, 0, 16, 64), [1, 1, 16, 64]) is None  # empty
    q, k, v, sel, _ = _inputs(CASES[0], torch.float32)
    scale = q.shape[-1] ** -0.5
    padded = torch.zeros(*k.shape[:-1], k.shape[-1] + 1)
    padded[..., 1:] = k
    shifted = padded[..., 1:]  # the same keys, misaligned
    words = pack_selection(sel)
    out = sparse_attention_from_words(q, shifted, v, words, block_size=16, softmax_scale=scale)
    same = sparse_attention_from_words(q, k, v, words, block_size=16, softmax_scale=scale)
    assert torch.allclose(out, same, atol=1e-6)


def test_launch_falls_back_to_the_pipeline_stages_that_fit(monkeypatch):
    """A launch refused for shared memory (Triton's OutOfResources) retries with one stage fewer, remembers what
    fit for that specialisation, and raises when even one stage does not."""
    from triton.runtime.errors import OutOfResources

    monkeypatch.setattr(launch, "_STAGES_THAT_FIT", {})
    monkeypatch.setattr(launch, "_SHRUNK", set())

    class Kernel:
        def __init__(self, fits):
            self.fits, self.tried = fits, []

        def __getitem__(self, grid):
            def run(*args, num_stages, **kwargs):
                self.tried.append(num_stages)
                if num_stages > self.fits:
                    raise OutOfResources(1000 * num_stages, 1000 * self.fits, "shared memory")
            return run

    x = torch.zeros(4, dtype=torch.bfloat16)
    kernel = Kernel(fits=2)
    launch.launch_with_stages(kernel, (1,), (x,), {"D": 128}, 4)
    launch.launch_with_stages(kernel, (1,), (x,), {"D": 128}, 4)
    assert kernel.tried == [4, 3, 2, 2]  # the second launch starts where the first succeeded
    launch.launch_with_stages(kernel, (1,), (x.float(),), {"D": 128}, 4)  # another specialisation: tries again
    assert kernel.tried[4:] == [4, 3, 2]
    launch.launch_with_stages(kernel, (1,), (x.float(),), {"D": 128}, 4)
    assert kernel.tried[7:] == [2]
    fits = Kernel(fits=4)
    launch.launch_with_stages(fits, (1,), (x,), {"D": 64}, 4)
    assert fits.tried == [4]
    with pytest.raises(OutOfResources):
        launch.launch_with_stages(Kernel(fits=0), (1,), (x,), {"D": 256}, 3)
