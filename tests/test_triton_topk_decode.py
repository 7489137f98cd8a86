"""Decoding ``nsa`` and ``infllmv2`` with incrementally kept kernel keys (CPU interpreter): the kernel-key
cache against the reference's kernel keys, the kernel-parallel decode routing against the fused routing,
and cached decode steps (the patched models' path) against the reference over steps that cross kernel
and block boundaries."""

from __future__ import annotations

import pytest
import torch

from tests.triton_interp import interpret_env, rel_err, triton_available  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.skipif(not triton_available, reason="triton is not importable"),
    pytest.mark.usefixtures("interpret_env"),
]

if triton_available:
    from dash_eval.dash_models import decode_cache
    from dash_eval.kernels import get_method, sparse_attention
    from dash_eval.kernels._triton import topk_decode, topk_routing
    from dash_eval.kernels._triton.kernel_keys import (
        allocate_kernel_keys,
        kernel_keys_triton,
        update_kernel_keys,
    )
    from dash_eval.kernels._triton.selection import tile_union
    from dash_eval.kernels.compression import kernel_keys

# Small geometry with the defaults' ratios: 4 kernels per block, kernels two strides long.
GEOMETRY = {"block_size": 16, "kernel_size": 8, "kernel_stride": 4}
PARAMS = {
    "infllmv2": dict(GEOMETRY, init_blocks=1, local_blocks=1, topk=2),
    "nsa": dict(GEOMETRY, init_blocks=1, local_blocks=1, topk=1, window=12),
    "dash": {"block_size": 16, "scale": 4.0},
}


@pytest.fixture
def kernel_parallel(monkeypatch):
    """Every routing call takes the decode path, with chunks small enough that a short cache spans several."""
    monkeypatch.setattr(topk_routing, "kernel_parallel_pays", lambda *args: True)
    monkeypatch.setattr(topk_decode, "DECODE_CHUNK_MIN", 16)
    monkeypatch.setattr(topk_decode, "DECODE_BLOCK_CHUNK", 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_keys_appended_equal_recomputed(dtype):
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(2, 3, 75, 64, generator=gen).to(dtype)
    keys = allocate_kernel_keys(k, 20, kernel_size=8, kernel_stride=4)
    for n in (5, 8, 9, 30, 31, 32, 33, 75):  # below one kernel, on and off the kernel grid
        update_kernel_keys(keys, k[:, :, :n])
    full = kernel_keys_triton(k, 8, 4)
    ref = kernel_keys(k.float(), 8, 4)
    assert keys.count == full.count == ref.shape[2] == 17
    assert torch.equal(keys.hi[:, :, :17], full.hi)
    got = keys.hi[:, :, :17].float() + (0 if keys.lo is None else keys.lo[:, :, :17].float())
    assert rel_err(got, ref) < (1e-7 if dtype == torch.float32 else 2e-5)
    with pytest.raises(ValueError, match="capacity 20 kernels < 24"):
        update_kernel_keys(keys, torch.randn(2, 3, 100, 64).to(dtype))


@pytest.mark.parametrize("loads", ["tma", "pointers"])
@pytest.mark.parametrize("method", ["infllmv2", "nsa"])
def test_kernel_parallel_route_equals_fused(method, loads, kernel_parallel, monkeypatch):
    """Same selection and counts, bit for bit, from the decode launches and the fused per-tile kernel, with the
    kernel keys read through tensor descriptors (Hopper's TMA) or pointers."""
    monkeypatch.setattr(topk_decode, "DECODE_TMA", loads == "tma")
    monkeypatch.setattr(topk_routing, "ROUTE_TMA", loads == "tma")
    gen = torch.Generator().manual_seed(5)
    b, hq, hkv, nq, nk, d = 2, 6, 2, 3, 700, 64
    q = torch.randn(b, hq, nq, d, generator=gen).to(torch.bfloat16)
    k = torch.randn(b, hkv, nk, d, generator=gen).to(torch.bfloat16)
    keys = kernel_keys_triton(k, 8, 4)
    p = PARAMS[method]
    pool = topk_routing.POOL_WEIGHTED if method == "nsa" else topk_routing.POOL_MAX
    kw = dict(pool=pool, block_size=16, init_blocks=1, local_blocks=2, topk=3, softmax_scale=d**-0.5,
              window=p.get("window", 0))
    fused = topk_routing.topk_route(q, keys, nk, kernel_parallel=False, **kw)
    split = topk_routing.topk_route(q, keys, nk, **kw)
    assert torch.equal(fused.words, split.words)
    assert torch.equal(fused.active, split.active)
    assert torch.equal(fused.attended, split.attended)
    # Every query sits in one tile here, so the select launch also wrote the fine stage's visit list:
    # the same entries (blocks, full-block flags, NSA's window) as the union launch builds from the bits.
    assert fused.tiles is None and split.tiles is not None
    tlist, tcount = split.tiles
    ref_list, ref_count = tile_union(split.words, nk, block_size=16, tile_q=split.tile_q, window=kw["window"])
    assert torch.equal(tcount, ref_count)
    for bi in range(b):
        for h in range(hkv):
            n = int(tcount[bi, h, 0])
            assert torch.equal(tlist[bi, h, 0, :n], ref_list[bi, h, 0, :n])


def _decode_cases():
    for method in ("infllmv2", "nsa"):
        for hq, hkv, d, dtype in ((2, 2, 64, torch.float32), (6, 2, 128, torch.float32), (4, 1, 64, torch.bfloat16)):
            tag = "fp32" if dtype == torch.float32 else "bf16"
            yield pytest.param(method, hq, hkv, d, dtype, id=f"{method}-Hq{hq}-Hkv{hkv}-D{d}-{tag}")
    yield pytest.param("dash", 6, 2, 64, torch.float32, id="dash-Hq6-Hkv2-D64-fp32")  # the same cache path


@pytest.mark.parametrize("method,hq,hkv,d,dtype", list(_decode_cases()))
def test_cached_decode_steps_match_reference(method, hq, hkv, d, dtype, kernel_parallel):
    """A prefill of 58 keys, then one token at a time to 67: kernels complete at 60, 64, block 3 at 64."""
    gen = torch.Generator().manual_seed(hq * 7 + d)
    n0, n1 = 58, 67
    q = torch.randn(1, hq, n1, d, generator=gen).to(dtype)
    k, v = (torch.randn(1, hkv, n1, d, generator=gen).to(dtype) for _ in range(2))
    params = get_method(method).make_params(**PARAMS[method])
    scale = d**-0.5
    layer = torch.nn.Module()
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    state = None
    for n in range(n0, n1 + 1):
        nq = n0 if n == n0 else 1  # prefill, then decode steps
        qs = q[:, :, n - nq : n]
        out, stats = decode_cache.forward_with_cache(layer, method, qs, k[:, :, :n], v[:, :, :n], params, scale)
        ref, ref_stats = sparse_attention(qs, k[:, :, :n], v[:, :, :n], method, backend="reference",
                                          return_stats=True, **PARAMS[method])
        cached = layer.__dict__[decode_cache._ATTR].state
        state = cached if state is None else state
        assert cached is state, f"step {n}: the kernel-key cache was rebuilt instead of appended to"
        assert cached.count == (n // 16 if method == "dash" else (n - 8) // 4 + 1)
        assert not torch.isnan(out).any()
        assert rel_err(out, ref) < tol, f"step {n}"
        assert torch.equal(stats.active_blocks, ref_stats.active_blocks), f"step {n}"
        assert stats.attended_pairs == ref_stats.attended_pairs, f"step {n}"
        assert stats.routing_scores == ref_stats.routing_scores, f"step {n}"


def test_cache_rebuilt_when_the_sequence_does_not_continue(kernel_parallel):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 40, 64, generator=gen)
    k, v = (torch.randn(1, 1, 40, 64, generator=gen) for _ in range(2))
    params = get_method("nsa").make_params(**PARAMS["nsa"])
    layer = torch.nn.Module()
    decode_cache.forward_with_cache(layer, "nsa", q[:, :, :30], k[:, :, :30], v[:, :, :30], params, 0.125)
    first = layer.__dict__[decode_cache._ATTR].state
    decode_cache.forward_with_cache(layer, "nsa", q[:, :, 31:32], k[:, :, :32], v[:, :, :32], params, 0.125)
    assert layer.__dict__[decode_cache._ATTR].state is not first  # a token was skipped: rebuilt
    keys = layer.__dict__[decode_cache._ATTR].state
    with pytest.raises(ValueError, match="nsa: kernel_keys hold 7 kernels .* need 8 kernels"):
        from dash_eval.kernels.nsa.triton_attention import nsa_attention_triton

        nsa_attention_triton(q[:, :, 36:37], k[:, :, :37], v[:, :, :37], params, softmax_scale=0.125,
                             return_stats=False, kernel_keys=keys)


@pytest.mark.parametrize("method", ["dash", "nsa"])
@torch.no_grad()
def test_cached_decode_follows_a_beam_reorder(method, monkeypatch):
    """Beam search reorders the KV cache's rows between steps; the next step still looks like a continuation to
    the layers' decode caches, which must not keep the old rows' block summaries / kernel keys. Two different
    prompts swapped mid-generation, through the hook ``generate`` calls, against the reference backend."""
    from dash_eval.dash_models import patch as patch_module
    from dash_eval.dash_models import patch_attention
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    def on_cpu_too(query, backend, m, params):  # the decode-cache path, which a patched model takes on CUDA only
        kind = decode_cache._STATES.get(m)
        return kind is not None and backend != "reference" and kind.unsupported(query, params) is None

    monkeypatch.setattr(patch_module, "triton_cache_available", on_cpu_too)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, vocab_size=97, max_position_embeddings=128, pad_token_id=0)).eval()
    params = {"block_size": 16, "scale": 400.0} if method == "dash" else \
        dict(GEOMETRY, init_blocks=0, local_blocks=1, topk=1, window=4)
    ids = torch.randint(3, 97, (2, 70), generator=torch.Generator().manual_seed(1))
    logits = {}
    for backend in ("auto", "reference"):
        with patch_attention(model, method, backend=backend, **params):
            cache = DynamicCache(config=model.config)
            out = model(ids, past_key_values=cache)
            steps = []
            for step in range(5):
                token = out.logits[:, -1:].argmax(-1)
                if step == 2:  # rows swapped, as a beam search step may: blocks 0-3 now belong to the other row
                    cache = model._reorder_cache(cache, torch.tensor([1, 0]))
                    token = token.flip(0)
                out = model(token, past_key_values=cache)
                steps.append(out.logits[:, -1])
            logits[backend] = torch.stack(steps)
        assert "_reorder_cache" not in model.__dict__  # gone with the patch
    torch.testing.assert_close(logits["auto"], logits["reference"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change", ["params", "batch"])
def test_cache_rebuilt_when_params_or_batch_change(change, kernel_parallel):
    """A step that looks like a continuation (one new query, one more key) but under other parameters (another
    kernel size: other kernel keys) or for another batch is rebuilt from its keys, and matches the reference."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 2, 31, 64, generator=gen)
    k, v = (torch.randn(2, 1, 31, 64, generator=gen) for _ in range(2))
    first_kw = PARAMS["nsa"]
    second_kw = dict(first_kw, kernel_size=12) if change == "params" else first_kw
    rows = 2 if change == "params" else 1
    layer = torch.nn.Module()
    decode_cache.forward_with_cache(layer, "nsa", q[:, :, :30], k[:, :, :30], v[:, :, :30],
                                    get_method("nsa").make_params(**first_kw), 0.125)
    first = layer.__dict__[decode_cache._ATTR].state
    qs, ks, vs = q[:rows, :, 30:31], k[:rows], v[:rows]
    second = get_method("nsa").make_params(**second_kw)
    out, _ = decode_cache.forward_with_cache(layer, "nsa", qs, ks, vs, second, 0.125)
    assert layer.__dict__[decode_cache._ATTR].state is not first
    ref = sparse_attention(qs, ks, vs, "nsa", backend="reference", softmax_scale=0.125, **second_kw)
    assert rel_err(out, ref) < 2e-5
