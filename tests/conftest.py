"""Test-session setup.

Without a GPU, Triton kernels can only run on Triton's CPU interpreter, and Triton decides between
interpreter and compiler when a kernel module is first imported. Whichever test imports a kernel
module first (directly or through the backend registry), it must already be in interpreter mode, so
the variable is set here, before any test module loads.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402 - after the interpreter switch above

# The shared kernel assertions (tests/triton_interp.py) report their values on failure, as test modules do.
pytest.register_assert_rewrite("tests.triton_interp")


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama (2 layers, 6 query / 2 KV heads, head dim 16), one per test module."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        head_dim=16, vocab_size=97, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()
