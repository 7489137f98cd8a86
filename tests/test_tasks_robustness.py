"""The task generators at their edges (a review's findings): options that no length can hold fail at once
instead of hanging, ``tasks sample`` checks ``--output`` before generating and reads tokenizers offline only,
``cwe`` answers never occur in the prompt's wording, and ``dash_jsonl`` answers a record with the budget it
carries and reads malformed fields and non-UTF-8 files with an error naming the line."""

from __future__ import annotations

import json
import time

import pytest
from dash_eval.tasks import generate_samples, read_jsonl, resolve_tokenizer
from dash_eval.tasks.aggregation import CommonWords, FrequentWords, FweOptions, zipf_counts
from dash_eval.tasks.lm_eval_support import jsonl_docs, to_doc

from dash_eval.cli import main


@pytest.fixture(scope="module")
def tok():
    return resolve_tokenizer("default")


def _fwe(alpha: float, k: int) -> FrequentWords:
    return FrequentWords(FweOptions(alpha=alpha, num_answers=k), None, 1024)


def _min_units_by_scan(k: int, alpha: float) -> int:
    total = k + 1
    while True:
        counts = zipf_counts(total, alpha)
        if len(counts) > k and counts[k - 1] > counts[k]:
            return total
        total += 1


@pytest.mark.parametrize("alpha,k", [(a, k) for a in (1.01, 1.1, 1.5, 2.0, 3.0) for k in (1, 3, 8)] + [(5.0, 3)])
def test_fwe_min_units_equals_the_plain_scan(alpha, k):  # (5.0, 8): the plain scan alone takes minutes
    assert _fwe(alpha, k).min_units(10**6) == _min_units_by_scan(k, alpha)


@pytest.mark.parametrize("task,option,needle", [
    ("fwe", {"alpha": 1e9}, "the 3 most frequent words stand apart from the next only in a text of more than"),
    ("fwe", {"alpha": 9}, "accepted: a smaller alpha"),
    ("niah_multikey", {"num_keys": 20000}, "its needles alone take about"),
])
def test_options_no_length_can_hold_fail_at_once(tok, task, option, needle):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=needle):
        generate_samples(task, length=1024, n=1, seed=0, tokenizer=tok, **option)
    assert time.perf_counter() - start < 5  # were a hang (fwe) and minutes (niah_multikey)


@pytest.mark.parametrize("output,needle", [
    ("", "--output '': empty; give a file path"),
    ("{dir}", "is a directory; give a file path"),
    ("{file}/x.jsonl", "is a file, not a directory"),
])
def test_tasks_sample_checks_output_before_generating(tmp_path, monkeypatch, capsys, output, needle):
    import dash_eval.tasks as tasks_pkg

    monkeypatch.setattr(tasks_pkg, "generate_samples", lambda *a, **k: pytest.fail("generated before the check"))
    (tmp_path / "f").write_text("x")
    output = output.format(dir=tmp_path, file=tmp_path / "f")
    code = main(["tasks", "sample", "niah_single", "--length", "512", "--n", "1", "--tokenizer", "default",
                 "--output", output])
    assert code == 2 and needle in capsys.readouterr().err


def test_tokenizers_are_read_offline_only(monkeypatch):
    import transformers
    from dash_eval.tasks.base import _load_tokenizer

    calls = []

    def fake(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not cached")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(OSError):
        _load_tokenizer("no-such-org/no-such-model")
    assert calls == [{"local_files_only": True}]


def test_cwe_answers_never_occur_in_the_prompts_wording(tok):
    text, prefix = CommonWords.wording("", 10)
    wording = f"{text} {prefix}".lower()
    samples = generate_samples("cwe", length=1024, n=40, seed=0, tokenizer=tok)
    assert not [w for s in samples for w in s.outputs if w in wording]
    assert CommonWords.version == 2


def _jsonl(tmp_path, records: list[dict] | bytes):
    path = tmp_path / "data.jsonl"
    if isinstance(records, bytes):
        path.write_bytes(records)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_dash_jsonl_docs_carry_a_records_own_budget(tmp_path):
    path = _jsonl(tmp_path, [{"input": "a", "outputs": ["b"], "max_new_tokens": 30}, {"input": "c", "outputs": ["d"]}])
    docs = jsonl_docs({"jsonl": path})
    assert [d["max_new_tokens"] for d in docs] == [30, None]


def test_the_dash_model_answers_a_record_with_its_budget():
    from dash_eval.evals.lm_model import _apply_record_budgets
    from lm_eval.api.instance import Instance

    def request(budget):
        doc = {"input": "x", "max_new_tokens": budget}
        return Instance("generate_until", doc, ("ctx", {"until": ["\n"], "max_gen_toks": 128, "max_new_tokens": 64}),
                        0, ("dash_jsonl", 0, 1))

    with_budget, without = request(30), request(None)
    _apply_record_budgets([with_budget, without])
    assert with_budget.args == ("ctx", {"until": ["\n"], "max_gen_toks": 30})
    assert without.args == ("ctx", {"until": ["\n"], "max_gen_toks": 128, "max_new_tokens": 64})


@pytest.mark.parametrize("metadata,index,depth", [
    ({"index": "q-17", "depth": "deep"}, -1, None),
    ({"index": None, "depth": 0.25}, -1, 0.25),
    ({"index": 4, "depth": 1}, 4, 1.0),
])
def test_jsonl_index_and_depth_of_any_type(tmp_path, metadata, index, depth):
    path = _jsonl(tmp_path, [{"input": "a", "outputs": ["b"], "metadata": metadata}])
    (sample,) = read_jsonl(path)
    doc = to_doc(sample, "string_match_all")
    assert (doc["index"], doc["depth"]) == (index, depth)
    assert json.loads(doc["metadata"]) == metadata  # kept as given


def test_jsonl_that_is_not_utf8_names_the_line(tmp_path):
    good = json.dumps({"input": "a", "outputs": ["b"]}).encode() + b"\n"
    path = _jsonl(tmp_path, good + '{"input": "caf\xe9", "outputs": ["b"]}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"data.jsonl line 2: not UTF-8 text \(byte 0xe9 at column 15\)"):
        read_jsonl(path)
    assert len(read_jsonl(_jsonl(tmp_path, b"\xef\xbb\xbf" + good))) == 1  # a byte-order mark is skipped
