"""``score_precision`` of ``nsa`` and ``infllmv2``: "float32" (METHODS.md) or "input" (kernel keys rounded to
the inputs' dtype before scoring, as the published kernels do). The Triton routing (prefill and decode, CPU
interpreter) must select exactly the reference's blocks under either setting, on inputs where the two
settings select differently; sweep cells at the default keep the identity they had before the parameter."""

from __future__ import annotations

import pytest
import torch

from tests.triton_interp import interpret_env, rel_err, triton_available  # noqa: F401  (fixture)

GEOMETRY = {"block_size": 16, "kernel_size": 8, "kernel_stride": 4}


def test_bad_score_precision_names_the_field_and_the_choices():
    from dash_eval.kernels import get_method

    for method in ("nsa", "infllmv2"):
        with pytest.raises(ValueError, match=rf"{method}: parameter score_precision='bf16' must be one of "
                                             r"'float32', 'input'"):
            get_method(method).make_params(score_precision="bf16")
    with pytest.raises(ValueError, match="unknown parameter.*score_precision"):
        get_method("dash").make_params(score_precision="input")


@pytest.mark.parametrize("method", ["nsa", "infllmv2"])
def test_float32_inputs_score_the_same_either_way(method):
    from dash_eval.kernels import sparse_attention

    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 90, 64, generator=gen)
    k, v = (torch.randn(1, 2, 90, 64, generator=gen) for _ in range(2))
    kw = dict(GEOMETRY, topk=2, local_blocks=1)
    a = sparse_attention(q, k, v, method, backend="reference", **kw)
    b = sparse_attention(q, k, v, method, backend="reference", score_precision="input", **kw)
    assert torch.equal(a, b)


def _reference_selection(method, q, k, precision, topk):
    from dash_eval.kernels.compression import kernel_keys
    from dash_eval.kernels.infllmv2.naive import infllmv2_select
    from dash_eval.kernels.nsa.naive import nsa_select

    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    kc = kernel_keys(k.float(), GEOMETRY["kernel_size"], GEOMETRY["kernel_stride"])
    if precision == "input":
        kc = kc.to(k.dtype).float()
    select = nsa_select if method == "nsa" else infllmv2_select
    qg = q.view(b, hkv, hq // hkv, nq, d)
    return select(qg, kc, torch.arange(nk - nq, nk), nk, init_blocks=1, local_blocks=1, topk=topk,
                  softmax_scale=d**-0.5, **GEOMETRY)


def _inputs(b, nq):
    gen = torch.Generator().manual_seed(17)
    q = torch.randn(b, 4, nq, 64, generator=gen).to(torch.bfloat16)
    # keys near a shared direction: kernel scores close together, so the rounding of the kernel keys moves
    # some blocks across the top-k boundary
    k = torch.randn(b, 1, 640, 64, generator=gen) * 0.3 + torch.randn(b, 1, 1, 64, generator=gen)
    return q, k.to(torch.bfloat16)


@pytest.mark.skipif(not triton_available, reason="triton is not importable")
@pytest.mark.usefixtures("interpret_env")
@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
@pytest.mark.parametrize("method", ["nsa", "infllmv2"])
def test_triton_routing_follows_the_score_precision(method, decode, monkeypatch):
    from dash_eval.kernels._triton import topk_decode, topk_routing
    from dash_eval.kernels._triton.kernel_keys import kernel_keys_triton
    from dash_eval.kernels._triton.selection import unpack_selection

    if decode:  # the decode launches (kernel-parallel scores, chunked pooling, one select per tile)
        monkeypatch.setattr(topk_routing, "kernel_parallel_pays", lambda *args: True)
        monkeypatch.setattr(topk_decode, "DECODE_CHUNK_MIN", 16)
    q, k = _inputs(*((4, 8) if decode else (1, 640)))
    topk, nk = 3, k.shape[2]
    pool = topk_routing.POOL_WEIGHTED if method == "nsa" else topk_routing.POOL_MAX
    nblocks = nk // GEOMETRY["block_size"]
    picked = {}
    for precision in ("float32", "input"):
        keys = kernel_keys_triton(k, GEOMETRY["kernel_size"], GEOMETRY["kernel_stride"],
                                  split=precision == "float32")
        assert (keys.lo is None) == (precision == "input")
        route = topk_routing.topk_route(q, keys, nk, pool=pool, block_size=GEOMETRY["block_size"], init_blocks=1,
                                        local_blocks=1, topk=topk, softmax_scale=64**-0.5)
        got = unpack_selection(route.words, nblocks)
        expect = _reference_selection(method, q, k, precision, topk)
        assert torch.equal(got, expect), (precision, torch.nonzero(got ^ expect)[:5].tolist())
        picked[precision] = got
    # the inputs discriminate: the two precisions select differently somewhere
    assert not torch.equal(picked["float32"], picked["input"])


@pytest.mark.skipif(not triton_available, reason="triton is not importable")
@pytest.mark.usefixtures("interpret_env")
@pytest.mark.parametrize("method", ["nsa", "infllmv2"])
def test_cached_decode_with_input_precision(method, monkeypatch):
    """The patched models' decode path keeps kernel keys without the residual and matches the reference;
    a cache built for the other precision is refused, naming both settings."""
    from dash_eval.dash_models import decode_cache
    from dash_eval.kernels import get_backend, get_method, sparse_attention
    from dash_eval.kernels._triton import topk_decode, topk_routing
    from dash_eval.kernels._triton.kernel_keys import kernel_keys_triton

    monkeypatch.setattr(topk_routing, "kernel_parallel_pays", lambda *args: True)
    monkeypatch.setattr(topk_decode, "DECODE_CHUNK_MIN", 16)
    kw = dict(GEOMETRY, init_blocks=1, local_blocks=1, topk=2, score_precision="input")
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(1, 4, 70, 64, generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(1, 2, 70, 64, generator=gen).to(torch.bfloat16) for _ in range(2))
    params = get_method(method).make_params(**kw)
    layer = torch.nn.Module()
    for n in range(62, 71):
        nq = 62 if n == 62 else 1
        qs = q[:, :, n - nq : n]
        out, stats = decode_cache.forward_with_cache(layer, method, qs, k[:, :, :n], v[:, :, :n], params, 0.125)
        ref, ref_stats = sparse_attention(qs, k[:, :, :n], v[:, :, :n], method, backend="reference",
                                          return_stats=True, softmax_scale=0.125, **kw)
        assert layer.__dict__[decode_cache._ATTR].state.lo is None
        assert rel_err(out, ref) < 2e-2, f"step {n}"
        assert torch.equal(stats.active_blocks, ref_stats.active_blocks), f"step {n}"
    split = kernel_keys_triton(k, GEOMETRY["kernel_size"], GEOMETRY["kernel_stride"])
    with pytest.raises(ValueError, match="built with the float32 residual; score_precision='input' needs them "
                                         "without"):
        get_backend(method, "triton")(q[:, :, 69:], k, v, params, softmax_scale=0.125, return_stats=False,
                                      kernel_keys=split)


def test_sweep_cells_at_the_default_keep_their_identity():
    """A cell whose score_precision is at its default hashes and is named as before the parameter existed;
    set to "input", it is another cell, and its name says so."""
    import dataclasses

    from dash_eval.evals.sweep_cells import expand_cells
    from dash_eval.evals.sweep_config import config_hash, parse_config

    raw = {
        "name": "precision",
        "model": {"pretrained": "default"},
        "tasks": [{"task": "niah_single", "lengths": [512], "samples": 2, "seed": 0}],
        "methods": [{"method": "nsa"}, {"method": "nsa", "label": "nsa-input", "score_precision": "input"}],
        "output": "results/precision",
    }
    config = parse_config(raw, check_model=False)
    default_cell, input_cell = expand_cells(config)
    assert default_cell.params["score_precision"] == "float32"
    assert "score_precision" not in default_cell.spec(config)["params"]
    # the cell as it was before the parameter existed: the same parameters less it
    before = dataclasses.replace(default_cell, params={k: v for k, v in default_cell.params.items()
                                                       if k != "score_precision"})
    assert default_cell.hash(config) == config_hash(before.spec(config))
    assert default_cell.name(config) == before.name(config)
    assert input_cell.hash(config) != default_cell.hash(config)
    assert "score_precision=input" in input_cell.name(config)


@pytest.mark.parametrize("method", ["nsa", "infllmv2"])
def test_reference_attends_the_blocks_its_score_precision_selects(method):
    """The reference itself (``sparse_attention(backend="reference")``) follows ``score_precision``: on bf16 inputs
    where the two settings select differently, each output is the block-sparse softmax over that setting's
    selection. The Triton tests above compare against ``_reference_selection``, not against the reference's own
    driver, so a driver that ignored the setting passed them."""
    from dash_eval.kernels import sparse_attention
    from dash_eval.kernels.common import block_sparse_attention

    q, k = _inputs(1, 640)
    v = torch.randn(k.shape, generator=torch.Generator().manual_seed(4)).to(k.dtype)
    extra = {"window": 0} if method == "nsa" else {}
    kw = dict(GEOMETRY, init_blocks=1, local_blocks=1, topk=3, **extra)
    outs = {}
    for precision in ("float32", "input"):
        out = sparse_attention(q, k, v, method, backend="reference", score_precision=precision, **kw)
        selected = _reference_selection(method, q, k, precision, 3)
        expect = block_sparse_attention(q, k, v, selected, block_size=GEOMETRY["block_size"])
        assert torch.equal(out, expect), precision
        outs[precision] = out
    assert not torch.equal(outs["float32"], outs["input"])  # the inputs discriminate
