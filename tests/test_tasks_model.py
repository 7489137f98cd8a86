"""The embedded model with full attention finds single needles at 2,048 tokens (plain transformers, greedy)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from dash_eval.tasks import generate_samples, render_prompt, score


def _forward(model, input_ids: list[int], cache):
    """One forward step that fills ``cache`` in place (transformers renamed ``past_key_values`` to ``cache``)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kwargs = {name: cache, "use_cache": True, "logits_to_keep": 1}
    return model(input_ids=torch.tensor([input_ids]), **kwargs).logits[0, -1]


@torch.no_grad()
def _greedy_continue(model, ids: list[int], cache, stop: str, tokenizer, max_new: int) -> str:
    """Greedy decoding of ``ids`` whose first ``cache.get_seq_length()`` tokens are already in ``cache``."""
    logits = _forward(model, ids[cache.get_seq_length() :], cache)
    generated: list[int] = []
    for _ in range(max_new):
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        generated.append(token)
        if any(ch in tokenizer.decode(generated) for ch in stop):
            break
        logits = _forward(model, [token], cache)
    return tokenizer.decode(generated, skip_special_tokens=True)


@pytest.mark.slow
def test_embedded_model_full_attention_niah_single_2048():
    from dash_eval.dash_models import embedded_model_path
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    # The instruct model is prompted through its chat template, and the length is measured that way.
    samples = generate_samples(
        "niah_single",
        length=2048,
        n=10,
        seed=0,
        tokenizer=tokenizer,
        haystack="noise",
        chat_template=True,
        max_new_tokens=16,
    )
    ids = [
        tokenizer(render_prompt(s.input, s.answer_prefix, tokenizer, True), add_special_tokens=False)["input_ids"]
        for s in samples
    ]
    assert all(len(x) + 16 <= 2048 and len(x) > 1900 for x in ids)

    # Every prompt shares the haystack before its needle with the deepest-needle prompt: prefill that one
    # once and reuse its cache up to the common prefix (exactly what a full prefill would compute).
    ref = max(range(len(samples)), key=lambda i: samples[i].metadata["depth"])
    ref_cache = DynamicCache()
    with torch.no_grad():
        _forward(model, ids[ref][:-1], ref_cache)
    scores = []
    for s, x in zip(samples, ids):
        common = 0
        while common < len(x) - 1 and common < len(ids[ref]) - 1 and x[common] == ids[ref][common]:
            common += 1
        cache = copy.deepcopy(ref_cache)
        cache.crop(common - cache.get_seq_length())  # negative: drop the tokens past the common prefix
        prediction = _greedy_continue(model, x, cache, ".\n", tokenizer, max_new=12)
        scores.append(score("niah_single", prediction, s.outputs))
    assert sum(scores) / len(scores) >= 0.9, scores
