"""The embedded default model, end to end on CPU (slow but runs in CI)."""

from __future__ import annotations

import pytest
import torch
from dash_eval.dash_models import get_tally, load_model

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def _needle_prompt(tokenizer, n_tokens: int, key: str, value: str, depth: float) -> str:
    needle = f" The special magic number for {key} is: {value}. "
    per = len(tokenizer(FILLER, add_special_tokens=False).input_ids)
    reps = max(1, (n_tokens - 80) // per)
    at = int(reps * depth)
    haystack = FILLER * at + needle + FILLER * (reps - at)
    question = f"What is the special magic number for {key} mentioned in the text above?"
    messages = [{"role": "user", "content": haystack + "\n" + question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + \
        f"The special magic number for {key} is:"


@pytest.fixture(scope="module")
def embedded():
    return load_model("default", method="full")


@pytest.mark.slow
@torch.no_grad()
def test_full_answers_a_2000_token_needle(embedded):
    model, tok = embedded
    prompt = _needle_prompt(tok, 2000, "Oslo", "7302519", depth=0.4)
    ids = tok(prompt, return_tensors="pt")
    assert 1850 <= ids.input_ids.shape[1] <= 2100
    out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    answer = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert "7302519" in answer
    summary = get_tally(model).summary("prefill")
    assert summary["sparsity"] == 0.0 and summary["queries"] > 0
