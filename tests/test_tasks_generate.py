"""Task generators: token lengths, needles in the prompt, determinism, bad input."""

from __future__ import annotations

import re

import pytest
from dash_eval.tasks import (
    UnknownNameError,
    count_tokens,
    generate_samples,
    haystack_names,
    render_prompt,
    score,
    task_names,
)
from dash_eval.tasks.base import largest_fitting, spread_depths
from dash_eval.tasks.haystacks import NOISE_SENTENCES
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ALL_TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery"]


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer built here: every word or punctuation mark is one token, unknown ones [UNK]."""
    words = sorted({w for s in NOISE_SENTENCES for w in re.findall(r"\w+|[^\w\s]", s)})
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def embedded_tokenizer():
    from dash_eval.dash_models import embedded_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path())


def test_names():
    assert set(ALL_TASKS) <= set(task_names())
    assert {"noise", "essay", "needle"} <= set(haystack_names())


@pytest.mark.parametrize("length", [1024, 2048, 4096, 8192], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("which", ["embedded", "word"])
def test_niah_single_hits_length(length, which, embedded_tokenizer, word_tokenizer):
    tok = embedded_tokenizer if which == "embedded" else word_tokenizer
    samples = generate_samples("niah_single", length=length, n=3, seed=1, tokenizer=tok)
    for s in samples:
        total = count_tokens(tok, s.prompt()) + s.max_new_tokens
        assert total == s.metadata["token_count"] + s.max_new_tokens
        assert 0.97 * length <= total <= length, (total, length)
        assert s.length == length


@pytest.mark.parametrize("task", ALL_TASKS)
@pytest.mark.parametrize("haystack", ["noise", "essay", "needle"])
def test_niah_variants_fit_and_contain_answers(task, haystack, embedded_tokenizer):
    samples = generate_samples(task, length=2048, n=4, seed=3, tokenizer=embedded_tokenizer, haystack=haystack)
    for s in samples:
        total = count_tokens(embedded_tokenizer, s.prompt()) + s.max_new_tokens
        assert 0.95 * 2048 <= total <= 2048
        for value in s.outputs:
            assert s.input.count(value) == 1, value
        assert score(task, " ".join(s.outputs), s.outputs) == 1.0
        assert score(task, "I do not know.", s.outputs) == 0.0
        assert s.metadata["task"] == task and s.metadata["haystack"] == haystack
    expected = {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4, "niah_multiquery": 4}[task]
    assert all(len(s.outputs) == expected for s in samples)


def test_partial_credit_for_several_values(embedded_tokenizer):
    (s,) = generate_samples("niah_multivalue", length=1024, n=1, seed=0, tokenizer=embedded_tokenizer)
    assert score("niah_multivalue", f"{s.outputs[0]} and {s.outputs[2]}", s.outputs) == 0.5


def test_depths_spread_and_recorded(embedded_tokenizer):
    samples = generate_samples("niah_single", length=1024, n=5, seed=0, tokenizer=embedded_tokenizer)
    assert sorted(s.metadata["depth"] for s in samples) == [0.0, 25.0, 50.0, 75.0, 100.0]
    # depth 0: the needle opens the context; depth 100: it closes it
    by_depth = {s.metadata["depth"]: s for s in samples}
    first = by_depth[0.0].input.split("\n\n")[1]
    last = by_depth[100.0].input.split("\n\n")[1]
    assert first.startswith("The special magic number")
    assert last.endswith(f"{by_depth[100.0].outputs[0]}.")


def test_spread_depths_prefixes():
    assert spread_depths(1) == [0.5]
    assert spread_depths(3) == [0.0, 1.0, 0.5]
    d = spread_depths(9)
    assert sorted(d) == [k / 8 for k in range(9)] and d[:3] == [0.0, 1.0, 0.5]


def test_deterministic_by_seed(word_tokenizer):
    a = generate_samples("niah_multikey", length=1024, n=3, seed=7, tokenizer=word_tokenizer, haystack="needle")
    b = generate_samples("niah_multikey", length=1024, n=3, seed=7, tokenizer=word_tokenizer, haystack="needle")
    c = generate_samples("niah_multikey", length=1024, n=3, seed=8, tokenizer=word_tokenizer, haystack="needle")
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert [s.input for s in a] != [s.input for s in c]
    assert len({s.outputs[0] for s in a}) == 3


def test_needle_types(embedded_tokenizer):
    (s,) = generate_samples(
        "niah_single", length=1024, n=1, seed=0, tokenizer=embedded_tokenizer, key_type="uuids", value_type="uuids"
    )
    uuid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert uuid.match(s.outputs[0]) and uuid.match(s.metadata["query"][0])
    (w,) = generate_samples("niah_single", length=1024, n=1, seed=0, tokenizer=embedded_tokenizer, value_type="words")
    assert re.match(r"^[a-z]+-[a-z]+$", w.outputs[0])


def test_chat_template_length(embedded_tokenizer):
    samples = generate_samples(
        "niah_single", length=1024, n=2, seed=0, tokenizer=embedded_tokenizer, chat_template=True
    )
    for s in samples:
        text = render_prompt(s.input, s.answer_prefix, embedded_tokenizer, chat_template=True)
        assert text.startswith("<|im_start|>") and text.endswith(s.answer_prefix)
        total = len(embedded_tokenizer(text, add_special_tokens=False)["input_ids"]) + s.max_new_tokens
        assert 0.97 * 1024 <= total <= 1024


def test_largest_fitting_is_exact():
    def cost(u: int) -> int:
        return 37 + 3 * u + (u // 10)

    for budget in (37, 40, 100, 1000, 5000):
        for guess in (1, 16, 10_000):
            u, c = largest_fitting(cost, budget, guess)
            assert c == cost(u) <= budget < cost(u + 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "niah_nope"}, "unknown task 'niah_nope'; known: cwe, fwe, niah_multikey"),
        ({"haystack": "ocean"}, "unknown haystack 'ocean'; known: essay, needle, noise"),
        ({"length": 100}, "length 100 leaves no room"),
        ({"length": 150}, "length 150 is too short for task 'niah_single'"),
        ({"length": 0}, "length must be an integer >= 1, got 0"),
        ({"n": 0}, "n must be an integer >= 1, got 0"),
        ({"seed": "x"}, "seed must be an integer >= 0, got 'x'"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"num_keys": 2, "num_queries": 3}, "num_queries must be <= num_keys=2, got 3"),
        ({"value_type": "colors"}, "value_type must be one of numbers, words, uuids; got 'colors'"),
        ({"depth": 3}, "unknown option(s) depth for task 'niah_single'; accepted: max_new_tokens"),
        ({"tokenizer": ""}, "tokenizer must be"),
    ],
)
def test_bad_input(kwargs, message, word_tokenizer):
    args = {"task": "niah_single", "length": 1024, "n": 2, "seed": 0, "tokenizer": word_tokenizer} | kwargs
    task = args.pop("task")
    with pytest.raises((ValueError, UnknownNameError)) as err:
        generate_samples(task, **args)
    assert message in str(err.value)


def test_registry_rejects_duplicates_and_lists_names():
    from dash_eval.tasks.registry import Registry

    reg: Registry[type] = Registry("widget")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(UnknownNameError, match="unknown widget 'b'; known: a"):
        reg.get("b")
    assert reg.get("a") is A and A.name == "a" and reg.names() == ["a"]
