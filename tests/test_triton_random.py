"""Random cases beyond the fixed grids of the other kernel tests: each seed draws a method, a shape (GQA 1-8,
lengths 1-300, decode or a partial query range, head dims 32-128, blocks of 16-64) and parameters, then
checks the Triton backend (CPU interpreter) against the reference: the output and the stats. The
seeds are fixed, so a failure reproduces by its id; a longer local run loops ``_draw`` over more seeds (750
such cases passed in session 12)."""

from __future__ import annotations

import random

import pytest
import torch

from tests.triton_interp import (  # noqa: F401  (fixture)
    assert_triton_matches_reference,
    interpret_env,
    triton_available,
)

pytestmark = [
    pytest.mark.skipif(not triton_available, reason="triton is not importable"),
    pytest.mark.usefixtures("interpret_env"),
]

TOL = {torch.float32: 5e-5, torch.bfloat16: 3e-2}


def _draw(seed: int):
    rng = random.Random(seed)
    method = rng.choice(["dash", "nsa", "infllmv2"])
    hkv, g = rng.choice([1, 2, 3]), rng.choice([1, 2, 3, 4, 8])
    b, d, bs = rng.choice([1, 1, 2]), rng.choice([32, 64, 96, 128]), rng.choice([16, 32, 64])
    nk = rng.randint(1, 300)
    nq = rng.choice([nk, 1, rng.randint(1, nk)])
    dtype = rng.choice([torch.float32, torch.bfloat16])
    params = {"block_size": bs}
    if method == "dash":
        params.update(alpha=rng.choice([1.1, 1.25, 1.5, 1.75, 2.0]), scale=rng.choice([0.5, 1.0, 4.0, 8.0]),
                      init_blocks=rng.choice([0, 1, 2]), local_blocks=rng.choice([1, 2, 3]))
        if rng.random() < 0.4:
            params["sigma"] = rng.choice([0.3, 1.0, 10.0])
        if rng.random() < 0.3:
            params["router"] = True
    else:
        stride = rng.choice([s for s in (8, 16) if bs % s == 0])
        params.update(kernel_stride=stride, kernel_size=stride * rng.choice([1, 2]), init_blocks=rng.choice([0, 1, 2]),
                      local_blocks=rng.choice([1, 2, 4]), topk=rng.choice([0, 1, 3, 6]))
        if method == "nsa":
            params["window"] = rng.choice([0, 16, 50, 128])
        if dtype == torch.bfloat16 and rng.random() < 0.3:
            params["score_precision"] = "input"
    return method, (b, hkv * g, hkv, nq, nk, d), dtype, params


SEEDS = list(range(1000, 1024))


def _case_id(seed):
    method, (b, hq, hkv, nq, nk, d), dtype, params = _draw(seed)
    return f"{seed}-{method}-B{b}-Hq{hq}-Hkv{hkv}-Nq{nq}-Nk{nk}-D{d}-{str(dtype)[6:]}"


@pytest.mark.parametrize("seed", SEEDS, ids=[_case_id(s) for s in SEEDS])
def test_random_case_matches_reference(seed, monkeypatch):
    """Up to 16 queries, the fine stage splits each tile over 1-3 programs, as a GPU's decode does."""
    from dash_eval.kernels._triton import topk_attention
    from dash_eval.kernels.dash import triton_attention

    method, (b, hq, hkv, nq, nk, d), dtype, params = _draw(seed)
    splits = 1 + seed % 3 if nq <= 16 else 1
    for module in (triton_attention, topk_attention):
        monkeypatch.setattr(module, "decode_splits", lambda q, k, c, visits=None: splits)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, nq, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, hkv, nk, d, generator=gen).to(dtype) for _ in range(2))
    if params.get("router"):
        params["router"] = torch.randn(hkv * d, generator=gen)
    assert_triton_matches_reference(q, k, v, method, TOL[dtype], **params)
