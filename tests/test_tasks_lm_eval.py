"""lm-eval task configs and the ``dash-eval tasks`` command, driven by a scripted model (no weights)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from dash_eval.tasks import generate_samples, lm_eval_task_dir, read_jsonl, score, task_names, write_jsonl
from dash_eval.tasks.lm_eval_support import generated_docs, jsonl_docs, process_results
from lm_eval.api.model import LM

from dash_eval.cli import main

GROUP_TASKS = {
    "dash_niah_single",
    "dash_niah_single_essay",
    "dash_niah_single_uuid",
    "dash_niah_multikey",
    "dash_niah_multikey_needle",
    "dash_niah_multikey_uuid",
    "dash_niah_multivalue",
    "dash_niah_multiquery",
    "dash_vt",
    "dash_cwe",
    "dash_fwe",
}


class NeedleReader(LM):
    """Answers NIAH prompts by reading the needle of the asked key; gets every third request wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        answers = []
        for req in requests:
            prompt = req.args[0]
            self.prompts.append(prompt)
            key = re.search(r"for (\S+) mentioned in the text above is$", prompt).group(1)
            value = re.search(rf"for {re.escape(key)} is: (\d+)\.", prompt).group(1)
            answers.append(" 0000000." if len(self.prompts) % 3 == 0 else f" {value}.")
        return answers

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise AssertionError("the dash tasks only generate")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise AssertionError("the dash tasks only generate")


def _evaluate(tasks: list[str], metadata: dict, limit: int | None = None) -> tuple[dict, NeedleReader]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model = NeedleReader()
    manager = TaskManager(include_path=str(lm_eval_task_dir()), include_defaults=False, metadata=metadata)
    out = simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=limit, log_samples=True)
    return out, model


def test_task_dir_holds_every_config():
    folder = lm_eval_task_dir()
    names = {p.stem for p in folder.glob("dash_*.yaml")}
    assert GROUP_TASKS | {"dash_jsonl", "dash_ruler"} == names
    assert (folder / "utils.py").is_file()
    group = yaml.safe_load((folder / "dash_ruler.yaml").read_text())
    assert set(group["task"]) == GROUP_TASKS
    used = set()
    for name in GROUP_TASKS - {"dash_niah_single"}:
        text = (folder / f"{name}.yaml").read_text()
        used.add(re.search(r"dash_task: (\w+)", text).group(1))
    assert used | {"niah_single"} == set(task_names())


def test_generated_and_jsonl_runs_score_the_same(tmp_path):
    meta = {"pretrained": "default", "max_seq_lengths": [1024, 2048], "num_samples": 3, "seed": 5}
    out, model = _evaluate(["dash_niah_single"], meta)
    result = out["results"]["dash_niah_single"]
    assert result["1024,none"] == pytest.approx(2 / 3) or result["2048,none"] == pytest.approx(2 / 3)
    assert result["score,none"] == pytest.approx(4 / 6)
    assert not any(k.startswith(("4096", "8192")) for k in result)  # lengths not run are absent, not -1
    # prompts are input + " " + answer_prefix, interleaved over the lengths
    samples = {
        n: generate_samples("niah_single", length=n, n=3, seed=5, tokenizer="default", haystack="noise")
        for n in (1024, 2048)
    }
    assert model.prompts[0] in {s.prompt() for ss in samples.values() for s in ss}

    path = write_jsonl(samples[1024] + samples[2048], tmp_path / "niah.jsonl")
    out2, _ = _evaluate(["dash_jsonl"], {"jsonl": str(path)})
    by_doc = {s["doc"]["input"]: s["score"] for s in out["samples"]["dash_niah_single"]}
    again = {s["doc"]["input"]: s["score"] for s in out2["samples"]["dash_jsonl"]}
    assert sorted(by_doc.values()) == sorted(again.values()) and len(again) == 6
    assert out2["results"]["dash_jsonl"]["score,none"] == pytest.approx(4 / 6)
    assert {"1024,none", "2048,none"} <= set(out2["results"]["dash_jsonl"])


def test_generated_docs_interleave_lengths():
    docs = generated_docs(
        {"tokenizer": "default", "max_seq_lengths": [1024, 2048], "num_samples": 2}, "vt", "noise", {}
    )
    assert [(d["length"], d["index"]) for d in docs] == [(1024, 0), (2048, 0), (1024, 1), (2048, 1)]
    assert all(d["metric"] == "string_match_all" and d["answer_prefix"] for d in docs)
    assert json.loads(docs[0]["metadata"])["task"] == "vt"


def test_process_results_reports_only_the_run_length():
    doc = {"metric": "string_match_all", "outputs": ["a", "b"], "length": 8192}
    assert process_results(doc, ["A and nothing"]) == {"score": 0.5, "8192": 0.5}
    doc = {"metric": "string_match_part", "outputs": ["a", "b"], "length": None}
    assert process_results(doc, ["b"]) == {"score": 1.0}


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"max_seq_lengths": [1024]}, "none was given: pass --model_args pretrained=PATH"),
        ({"tokenizer": "default", "max_seq_lengths": "4k"}, "max_seq_lengths must be a list of positive integers"),
        ({"tokenizer": "default", "num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
        ({"tokenizer": "default", "chat_template": "yes"}, "chat_template must be true or false"),
        ({"tokenizer": "/no/such/tokenizer", "max_seq_lengths": [1024]},
         "metadata tokenizer (the tokenizer dash tasks size their prompts with): no such directory '/no/such/"),
    ],
)
def test_generated_docs_bad_metadata(metadata, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generated_docs(metadata, "niah_single", None, {})


def test_jsonl_docs_metric_and_errors(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"input": "Who?", "outputs": ["Ada", "Ada Lovelace"], "length": 4096}) + "\n")
    (doc,) = jsonl_docs({"jsonl": str(path), "metric": "string_match_part"})
    assert process_results(doc, ["It was Ada."]) == {"score": 1.0, "4096": 1.0}
    with pytest.raises(ValueError, match="metric must be one of string_match_all, string_match_part"):
        jsonl_docs({"jsonl": str(path), "metric": "f1"})
    with pytest.raises(ValueError, match="dash_jsonl needs the RULER-format file"):
        jsonl_docs({})


def test_cli_sample_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "vt.jsonl"
    args = ["tasks", "sample", "vt", "--length", "1024", "--n", "2", "--seed", "3", "--tokenizer", "default"]
    assert main(args + ["--output", str(out), "--option", "num_hops=2"]) == 0
    samples = read_jsonl(out)
    assert len(samples) == 2 and all(len(s.outputs) == 3 for s in samples)
    assert score("vt", " ".join(samples[0].outputs), samples[0].outputs) == 1.0
    assert "wrote 2 vt samples" in capsys.readouterr().out
    assert main(["tasks", "list"]) == 0
    assert "niah_multivalue" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["niah_nope", "--length", "1024"], "unknown task 'niah_nope'"),
        (["niah_single", "--length", "64"], "length 64 leaves no room"),
        (["niah_single", "--length", "1024", "--haystack", "sea"], "unknown haystack 'sea'"),
        (["niah_single", "--length", "1024", "--option", "colour=3"], "unknown option(s) colour"),
    ],
)
def test_cli_bad_input_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "x.jsonl"
    args = ["tasks", "sample", *extra, "--n", "2", "--tokenizer", "default", "--output", str(out)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
