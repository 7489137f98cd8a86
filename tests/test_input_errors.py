"""Bad input to the Python entry points: a ValueError naming the argument and what is accepted, raised before
any compute or weight loading (a user review's findings)."""

from __future__ import annotations

import math

import pytest
import torch
from dash_eval.kernels import sparse_attention

Q = torch.randn(1, 4, 32, 16, generator=torch.Generator().manual_seed(0))
KV = torch.randn(1, 2, 32, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, "abc", True])
def test_softmax_scale_must_be_a_finite_positive_number(value):
    with pytest.raises(ValueError, match=r"softmax_scale=.*accepted: a finite number > 0"):
        sparse_attention(Q, KV, KV, "full", softmax_scale=value)


def test_softmax_scale_takes_any_real_number_type():
    """As the method parameters do (``numbers.Real``): a NumPy float32 scale was refused, a float64 one taken."""
    np = pytest.importorskip("numpy")
    expect = sparse_attention(Q, KV, KV, "full", softmax_scale=0.2)
    for value in (np.float32(0.2), np.float64(0.2)):
        assert torch.allclose(sparse_attention(Q, KV, KV, "full", softmax_scale=value), expect)


def test_return_stats_must_be_a_bool():
    with pytest.raises(ValueError, match=r"return_stats='no'; accepted: True or False"):
        sparse_attention(Q, KV, KV, "full", return_stats="no")


def test_q_k_v_share_one_dtype():
    with pytest.raises(ValueError, match=r"q, k, v must have one dtype; got torch.float16, torch.float32"):
        sparse_attention(Q.half(), KV, KV, "dash", block_size=16)


def test_head_dim_zero():
    with pytest.raises(ValueError, match="head dim D must be at least 1"):
        sparse_attention(Q[..., :0], KV[..., :0], KV[..., :0], "full")


@pytest.mark.parametrize("router,needle", [
    (torch.randn(16, 2), r"router has shape \(16, 2\); this layer needs \[Hkv \* D\] = \[32\] or "
                         r"\[Hkv, D\] = \[2, 16\]"),
    (torch.randn(4, 8), r"router has shape \(4, 8\)"),
    (torch.zeros(32, dtype=torch.long), r"router must be a float tensor"),
    (torch.zeros(1, 2, 16), r"router must be a float tensor of shape \[Hkv \* D\] or \[Hkv, D\]"),
])
def test_router_shape_and_dtype(router, needle):
    with pytest.raises(ValueError, match=needle):
        sparse_attention(Q, KV, KV, "dash", block_size=8, router=router)
    # the two accepted layouts give the same output
    r = torch.randn(2, 16)
    a = sparse_attention(Q, KV, KV, "dash", block_size=8, scale=4.0, router=r)
    assert torch.equal(a, sparse_attention(Q, KV, KV, "dash", block_size=8, scale=4.0, router=r.reshape(-1)))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_router_values_must_be_finite(value):
    router = torch.zeros(32)
    router[3] = value
    with pytest.raises(ValueError, match=r"dash: parameter router has NaN or infinite values; accepted: finite"):
        sparse_attention(Q, KV, KV, "dash", block_size=8, router=router)


@pytest.mark.parametrize("sigma", [1e-40, 0.0, -1.0])
def test_sigma_below_the_float32_range_of_the_prior(sigma):
    with pytest.raises(ValueError, match=r"parameter sigma=.* must be a number >= 1e-30"):
        sparse_attention(Q, KV, KV, "dash", block_size=8, sigma=sigma)
    out = sparse_attention(Q, KV, KV, "dash", block_size=8, scale=4.0, sigma=1e-30)
    assert not out.isnan().any()


@pytest.mark.parametrize("kv_valid,needle", [
    ([[True] * 32], r"kv_valid must be a bool tensor of shape \[B, Nk\] = \[1, 32\], or None; got list"),
    (torch.ones(1, 32), r"kv_valid must be a bool tensor .* got torch.float32 \(1, 32\)"),
    (torch.ones(1, 32, dtype=torch.bool, device="meta"), r"kv_valid is a meta tensor, which holds no values"),
])
def test_kv_valid_must_be_a_bool_tensor(kv_valid, needle):
    with pytest.raises(ValueError, match=needle):
        sparse_attention(Q, KV, KV, "full", kv_valid=kv_valid)


def test_meta_tensors_are_refused():
    meta_q, meta_kv = Q.to("meta"), KV.to("meta")
    with pytest.raises(ValueError, match=r"meta tensors, which hold no values; accepted: tensors on a CPU or CUDA"):
        sparse_attention(meta_q, meta_kv, meta_kv, "dash", block_size=8)


def test_triton_backend_on_a_cpu_without_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from tests.triton_interp import triton_available

    assert triton_available
    from dash_eval.kernels._triton import launch

    monkeypatch.setattr(launch, "_INTERPRETED", False)
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors \(got cpu\).*backend='reference'"):
        sparse_attention(Q, KV, KV, "dash", backend="triton", block_size=16)


def test_router_file_values_must_be_finite():
    from dash_eval.dash_models.router import check_routers
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64)
    check_routers({0: torch.zeros(32), 1: torch.zeros(2, 16)}, 2, config)
    with pytest.raises(ValueError, match="router layer 1: indexer_q must hold finite float values"):
        check_routers({1: torch.full((32,), math.nan)}, 2, config)
    with pytest.raises(ValueError, match=r"router layer 0: indexer_q has shape \(16, 2\)"):
        check_routers({0: torch.zeros(16, 2)}, 2, config)
    with pytest.raises(ValueError, match=r"router must map layer indices to tensors"):
        check_routers([torch.zeros(32)], 2, config)


@pytest.mark.parametrize("kwargs,needle", [
    ({"device": "gpu"}, r"device='gpu': accepted: cpu, cuda, cuda:N, mps"),
    ({"dtype": torch.int64}, r"dtype=torch.int64; accepted"),
    ({"backend": "xyz"}, r"backend='xyz'; accepted: auto, reference, triton"),
    ({"router": "/nonexistent/router"}, r"router='/nonexistent/router': no such file or directory"),
    ({"layer_scales": {99: 1.0}}, r"layer_scales has layers \[99\] that the model lacks \(model layers: 0..29\)"),
    ({"pretrained": "/nonexistent/model"}, r"pretrained: no such directory '/nonexistent/model'; accepted"),
    ({"pretrained": None}, r"pretrained=None; accepted: a model directory"),
])
def test_load_model_checks_its_arguments_before_any_weight_loads(kwargs, needle, monkeypatch):
    import transformers
    from dash_eval.dash_models import load_model

    def no_weights(*args, **kw):
        raise AssertionError("weights were loaded although an argument is bad")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    kwargs = {"pretrained": "default", **kwargs}
    with pytest.raises(ValueError, match=needle):
        load_model(kwargs.pop("pretrained"), method="dash", **kwargs)


@pytest.mark.parametrize("args,needle", [
    ({"max_length": "abc"}, "model_args max_length='abc'; accepted: an integer >= 1"),
    ({"max_length": -5}, "model_args max_length=-5; accepted: an integer >= 1"),
    ({"batch_size": "abc"}, "model_args batch_size='abc'; accepted: an integer >= 1, 'auto' or 'auto:N'"),
    ({"max_batch_size": 0}, "model_args max_batch_size=0; accepted: an integer >= 1"),
])
def test_lm_eval_model_args_values(args, needle):
    from dash_eval.evals.lm_model import split_model_args

    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        split_model_args("dash", args)
    assert split_model_args("dash", {"max_length": "128", "batch_size": "auto:4"})[0] == {
        "max_length": 128, "batch_size": "auto:4"}


def test_apply_attention_on_something_that_is_not_a_causal_lm():
    from dash_eval.dash_models import apply_attention

    with pytest.raises(ValueError, match=r"model: a Linear; accepted: a Hugging Face causal LM"):
        apply_attention(torch.nn.Linear(2, 2), "dash")
