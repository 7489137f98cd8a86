"""Variable tracking, common words and frequent words: sizes, answers derivable from the prompt, bad input."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from dash_eval.tasks import count_tokens, generate_samples, resolve_tokenizer, score
from dash_eval.tasks.aggregation import zipf_counts


@pytest.fixture(scope="module")
def tok():
    return resolve_tokenizer("default")


@pytest.mark.parametrize("task", ["vt", "cwe", "fwe"])
@pytest.mark.parametrize("length", [1024, 4096])
def test_fits_length(task, length, tok):
    samples = generate_samples(task, length=length, n=2, seed=0, tokenizer=tok)
    for s in samples:
        total = count_tokens(tok, s.prompt()) + s.max_new_tokens
        assert 0.97 * length <= total <= length, (total, length)
        assert score(task, ", ".join(s.outputs), s.outputs) == 1.0
        assert score(task, "none", s.outputs) == 0.0


@pytest.mark.parametrize("haystack", ["noise", "essay"])
def test_vt_chain_resolves_to_answers(haystack, tok):
    for s in generate_samples("vt", length=2048, n=3, seed=2, tokenizer=tok, haystack=haystack, num_chains=2):
        assignments = dict(re.findall(r"VAR ([A-Z]{5}) = ((?:VAR [A-Z]{5})|\d+)\.", s.input))
        assert len(assignments) == 10

        def resolve(name: str, assignments: dict[str, str] = assignments) -> str:
            value = assignments[name]
            return resolve(value[4:]) if value.startswith("VAR ") else value

        value = re.search(r"assigned the value (\d+) in the text above", s.input).group(1)
        holders = sorted(n for n in assignments if resolve(n) == value)
        assert holders == sorted(s.outputs) and len(holders) == 5
        # statements of the asked chain appear in assignment order
        positions = [s.input.index(f"VAR {n} =") for n in s.outputs]
        assert positions == sorted(positions)


def test_cwe_answers_are_the_most_common_words(tok):
    for length in (2048, 8192):
        for s in generate_samples("cwe", length=length, n=2, seed=4, tokenizer=tok):
            listing = s.input.split("\n\n")[1]
            words = re.findall(r"\d+\. ([a-z]+)", listing)
            counts = Counter(words).most_common()
            top = {w for w, _ in counts[:10]}
            assert top == set(s.outputs)
            assert counts[9][1] > counts[10][1]
            assert counts[0][1] == s.metadata["freq_common"]


def test_fwe_answers_are_the_most_frequent_coded_words(tok):
    for s in generate_samples("fwe", length=4096, n=2, seed=4, tokenizer=tok):
        text = s.input.split("\n\n")[1]
        counts = Counter(text.split()).most_common()
        assert [w for w, _ in counts[:3]] == s.outputs
        assert counts[2][1] > counts[3][1]


def test_zipf_counts():
    counts = zipf_counts(1000, 2.0)
    assert sum(counts) == 1000 and counts == sorted(counts, reverse=True)
    assert counts[0] > 3 * counts[1] > 0


def test_determinism(tok):
    for task in ("vt", "cwe", "fwe"):
        a = generate_samples(task, length=1024, n=2, seed=9, tokenizer=tok)
        b = generate_samples(task, length=1024, n=2, seed=9, tokenizer=tok)
        c = generate_samples(task, length=1024, n=2, seed=10, tokenizer=tok)
        assert [s.to_json() for s in a] == [s.to_json() for s in b]
        assert [s.outputs for s in a] != [s.outputs for s in c]


@pytest.mark.parametrize(
    "task, kwargs, message",
    [
        ("cwe", {"haystack": "noise"}, "task 'cwe' takes no haystack, got haystack='noise'"),
        ("vt", {"haystack": "needle"}, "haystack for task 'vt' must be one of noise, essay; got 'needle'"),
        ("cwe", {"length": 400}, "length 400 is too short for task 'cwe'"),
        ("fwe", {"length": 100}, "length 100 is too short for task 'fwe'"),
        ("cwe", {"freq_common": 3, "freq_rare": 3}, "freq_rare must be < freq_common=3, got 3"),
        ("fwe", {"alpha": 1.0}, "alpha must be a number > 1, got 1.0"),
        ("vt", {"num_hops": 0}, "num_hops must be an integer >= 1, got 0"),
    ],
)
def test_bad_input(task, kwargs, message, tok):
    args = {"length": 1024, "n": 1, "seed": 0, "tokenizer": tok} | kwargs
    with pytest.raises(ValueError) as err:
        generate_samples(task, **args)
    assert message in str(err.value)
