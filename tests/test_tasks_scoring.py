"""Scorers and RULER-format JSONL: round trips, broken files, atomic writes."""

from __future__ import annotations

import json

import pytest
from dash_eval.tasks import Sample, UnknownNameError, generate_samples, read_jsonl, score, write_jsonl


def test_string_match_all_is_fraction_case_insensitive():
    assert score("string_match_all", "Answer: ALPHA and beta", ["alpha", "Beta"]) == 1.0
    assert score("string_match_all", "alpha only", ["alpha", "beta", "gamma", "delta"]) == 0.25
    assert score("string_match_all", "nothing", ["alpha"]) == 0.0


def test_string_match_part_is_any():
    assert score("string_match_part", "it was Paris", ["paris", "london"]) == 1.0
    assert score("string_match_part", "it was Rome", ["paris", "london"]) == 0.0


def test_prediction_control_characters_cleaned():
    # a control character between the two halves must not glue or break matching of either side
    assert score("string_match_all", "  12345\x0067890  ", ["12345", "67890"]) == 1.0


def test_score_by_task_name_and_errors():
    assert score("niah_single", "the number is 1234567.", ["1234567"]) == 1.0
    with pytest.raises(UnknownNameError, match="unknown task or metric 'exact'; metrics: string_match_all"):
        score("exact", "x", ["x"])
    with pytest.raises(ValueError, match="outputs must be a non-empty list of strings"):
        score("string_match_all", "x", [])
    with pytest.raises(ValueError, match="outputs must be a non-empty list of strings"):
        score("string_match_all", "x", "x")


@pytest.fixture(scope="module")
def samples():
    return generate_samples("niah_multivalue", length=1024, n=3, seed=5, tokenizer="default", haystack="noise")


def test_jsonl_round_trip_same_scores(tmp_path, samples):
    path = write_jsonl(samples, tmp_path / "out" / "niah.jsonl")
    back = read_jsonl(path)
    assert [s.to_json() for s in back] == [s.to_json() for s in samples]
    record = json.loads(path.read_text().splitlines()[0])
    assert {"index", "input", "outputs", "length", "answer_prefix"} <= set(record)
    preds = [" ".join(s.outputs[:2]) for s in samples]
    assert [score("string_match_all", p, s.outputs) for p, s in zip(preds, back)] == [
        score("niah_multivalue", p, s.outputs) for p, s in zip(preds, samples)
    ]
    assert all(score("string_match_all", p, s.outputs) == 0.5 for p, s in zip(preds, back))


def test_reads_minimal_ruler_records(tmp_path):
    path = tmp_path / "ruler.jsonl"
    path.write_text(
        json.dumps({"index": 4, "input": "Q?", "outputs": ["a"], "length": 4096, "length_w_model_temp": 4120})
        + "\n\n"
        + json.dumps({"input": "Q2?", "outputs": ["b", "c"], "answer_prefix": " Answer:"})
        + "\n"
    )
    a, b = read_jsonl(path)
    assert (a.length, a.metadata["index"], a.answer_prefix, a.prompt()) == (4096, 4, "", "Q?")
    assert (b.length, b.prompt()) == (None, "Q2? Answer:")
    assert Sample("Q", ["x"], 8, "A:").prompt() == "Q A:"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a"]', "line 2: expected a JSON object, got list"),
        ('{"outputs": ["a"]}', "line 2: missing field 'input'"),
        ('{"input": "q"}', "line 2: missing field 'outputs'"),
        ('{"input": "q", "outputs": "a"}', "line 2: field 'outputs' must be a non-empty list of strings"),
        ('{"input": "q", "outputs": []}', "line 2: field 'outputs' must be a non-empty list of strings"),
        ('{"input": 3, "outputs": ["a"]}', "line 2: field 'input' must be a string"),
        ('{"input": "q", "outputs": ["a"], "length": "4k"}', "line 2: field 'length' must be a positive integer"),
        ('{"input": "q", "outputs": ["a"], "answer_prefix": 1}', "line 2: field 'answer_prefix' must be a string"),
    ],
)
def test_broken_jsonl_names_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "q", "outputs": ["a"]}\n' + line + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        read_jsonl(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no samples"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_write_is_atomic(tmp_path, samples):
    path = tmp_path / "keep.jsonl"
    write_jsonl(samples, path)
    before = path.read_text()

    class Unserializable:
        pass

    broken = Sample("q", ["a"], 10, metadata={"bad": Unserializable()})
    with pytest.raises(TypeError):
        write_jsonl([samples[0], broken], path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl"]
