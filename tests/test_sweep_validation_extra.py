"""Sweep config validation, continued: prompts of JSONL tasks against the model's context, model paths,
the results directory, repeated errors, the shortest accepted length, and what ``reached`` means for an
integer calibration."""

from __future__ import annotations

import copy
import json
import os
import sys

import pytest
import yaml
from dash_eval.dash_models.loading import looks_like_path
from dash_eval.evals.sweep_calibrate import bisect_sparsity
from dash_eval.evals.sweep_config import ConfigError, parse_config
from dash_eval.evals.sweep_task_data import lm_eval_prompt_tokens

from dash_eval.cli import main

GOOD = {
    "name": "extra",
    "model": {"pretrained": "default", "dtype": "float32", "device": "cpu"},
    "tasks": [{"task": "niah_single", "lengths": [1024], "samples": 2, "seed": 0}],
    "methods": [{"method": "full"}],
    "output": "results/extra",
}
CONTEXT = 8192  # the embedded model's max_position_embeddings
BUDGET = 128  # dash_jsonl's max_gen_toks (from dash_niah_single.yaml)
LIMIT = CONTEXT - BUDGET


def _with(**changes):
    raw = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if key == "model":
            raw["model"] = {**raw["model"], **value}
        else:
            raw[key] = value
    return raw


def _errors(raw, check_model=True, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, check_model=check_model, **kwargs)
    return info.value.errors


@pytest.fixture(scope="module")
def tokenizer():
    from dash_eval.dash_models import resolve_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path("default"))


def _text(tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens for the embedded tokenizer ('x' then one token per ' apple')."""
    return "x" + " apple" * (tokens - 1)


def _write(path, records: list[dict], blank_after_first: bool = False):
    lines = [json.dumps(r) for r in records]
    if blank_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


# --- 1. JSONL prompts against the model's context ------------------------------------------------------------


def test_text_helper_counts_as_the_tokenizer(tokenizer):
    assert len(tokenizer(_text(LIMIT)).input_ids) == LIMIT


def test_jsonl_prompts_longer_than_the_model_takes_are_rejected(tmp_path):
    """A record without 'length', and one whose 'length' understates its prompt, were let through by the
    declared-length check: lm-eval would then left-truncate them and the cell would score 0."""
    data = _write(
        tmp_path / "ruler.jsonl",
        [
            {"input": "short", "outputs": ["y"], "length": 100},
            {"index": 7, "input": _text(LIMIT + 1), "outputs": ["y"]},  # no declared length
            {"input": _text(9000), "outputs": ["y"], "length": 4096},  # understated
            {"input": _text(LIMIT), "outputs": ["y"]},  # exactly fits: prompt + 128 = 8192
        ],
        blank_after_first=True,  # line numbers are the file's, blank lines counted
    )
    errors = _errors(_with(tasks=[{"jsonl": str(data)}]))
    assert len(errors) == 1, errors
    e = errors[0]
    assert e.startswith("tasks[0].jsonl: 2 of 4 prompt(s) of ") and str(data) in e
    assert f"line 3 (index 7): {LIMIT + 1} tokens" in e
    assert "line 4 (declared length 4096): 9000 tokens" in e
    assert "line 5" not in e  # the one that fits exactly
    assert f"max_position_embeddings={CONTEXT}" in e and f"max_gen_toks={BUDGET}" in e
    assert e.endswith(f"accepted: prompts of at most {LIMIT} tokens")


def test_jsonl_prompt_check_counts_the_answer_prefix_and_the_chat_template(tmp_path):
    data = _write(tmp_path / "a.jsonl", [{"input": _text(LIMIT - 10), "outputs": ["y"]}])
    parse_config(_with(tasks=[{"jsonl": str(data)}]), check_model=True)  # fits as it is
    prefixed = _write(tmp_path / "b.jsonl", [{"input": _text(LIMIT - 1), "outputs": ["y"], "answer_prefix": "A:"}])
    assert f"line 1: {LIMIT + 1} tokens" in _errors(_with(tasks=[{"jsonl": str(prefixed)}]))[0]
    # the chat template adds ~30 tokens around the same prompt: too long for a model run with it
    errors = _errors(_with(model={"apply_chat_template": True}, tasks=[{"jsonl": str(data)}]))
    assert len(errors) == 1 and errors[0].startswith("tasks[0].jsonl: 1 of 1 prompt(s)"), errors
    assert "inside the chat template" in errors[0]


def test_chat_template_asked_of_a_tokenizer_without_one(tmp_path):
    """A model directory with config and tokenizer but no chat template (and no weights: none are read)."""
    import shutil

    from dash_eval.dash_models import resolve_model_path

    src = resolve_model_path("default")
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), model / name)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    data = _write(tmp_path / "a.jsonl", [{"input": "short", "outputs": ["y"]}])
    raw = _with(model={"pretrained": str(model), "apply_chat_template": True}, tasks=[{"jsonl": str(data)}])
    [e] = _errors(raw)
    assert e.startswith("model.apply_chat_template: true, but the tokenizer of") and "no chat template" in e, e
    parse_config(_with(model={"pretrained": str(model)}, tasks=[{"jsonl": str(data)}]), check_model=True)


def test_jsonl_prompt_check_covers_the_records_that_run(tmp_path):
    """``samples: N`` runs the first N records (lm-eval --limit): a long record after them is not run."""
    data = _write(
        tmp_path / "c.jsonl",
        [{"input": "short", "outputs": ["y"]}, {"input": _text(CONTEXT), "outputs": ["y"]}],
    )
    parse_config(_with(tasks=[{"jsonl": str(data), "samples": 1}]), check_model=True)
    assert "line 2" in _errors(_with(tasks=[{"jsonl": str(data), "samples": 2}]))[0]


def test_jsonl_prompt_check_lists_a_few_records_and_counts_the_rest(tmp_path):
    data = _write(tmp_path / "many.jsonl", [{"input": _text(LIMIT + 1 + i), "outputs": ["y"]} for i in range(8)])
    [e] = _errors(_with(tasks=[{"jsonl": str(data)}]))
    assert "8 of 8 prompt(s)" in e and "line 5:" in e and "line 6:" not in e
    assert f"and 3 more (longest {LIMIT + 8} tokens)" in e


@pytest.mark.parametrize("chat", [False, True])
def test_prompts_are_counted_as_lm_eval_builds_and_encodes_them(tmp_path, tokenizer, chat):
    """The text counted is the context lm-eval's dash_jsonl task hands the model (input, answer_prefix,
    chat template), with the answer budget it asks for; and the count is the length HFLM encodes it to."""
    from dash_eval.evals.sweep_tasks import generation_budget
    from dash_eval.tasks import lm_eval_task_dir, read_jsonl, render_prompt
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    class Recorder(LM):
        tokenizer_name = "embedded"

        def __init__(self):
            super().__init__()
            self.requests = []

        def generate_until(self, requests, disable_tqdm=False):
            self.requests += [r.args for r in requests]
            return ["y"] * len(requests)

        def loglikelihood(self, requests, disable_tqdm=False):
            raise AssertionError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise AssertionError

        def chat_template(self, chat_template=False):
            return tokenizer.chat_template

        def apply_chat_template(self, chat_history, add_generation_prompt=True):  # as HFLM's
            return tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

    data = _write(
        tmp_path / "d.jsonl",
        [{"input": "What is the number?", "outputs": ["1"], "answer_prefix": "Answer:"},
         {"input": "Trailing space ", "outputs": ["2"]}],
    )
    model = Recorder()
    manager = TaskManager(include_path=str(lm_eval_task_dir()), include_defaults=False, metadata={"jsonl": str(data)})
    simple_evaluate(model=model, tasks=["dash_jsonl"], task_manager=manager, apply_chat_template=chat)
    records = read_jsonl(data)
    assert [ctx for ctx, _ in model.requests] == [render_prompt(r.input, r.answer_prefix, tokenizer, chat)
                                                   for r in records]
    assert {kwargs["max_gen_toks"] for _, kwargs in model.requests} == {generation_budget("dash_jsonl")}


def test_token_count_is_the_length_hflm_encodes(tiny, tokenizer):
    from dash_eval.tasks import render_prompt
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=tiny, tokenizer=tokenizer, batch_size=1)
    texts = [
        "plain text",
        render_prompt("a question", "Answer:", tokenizer, True),  # starts with the BOS token's text
        tokenizer.bos_token + " after a written BOS",
    ]
    assert lm_eval_prompt_tokens(tokenizer, texts) == [lm.tok_batch_encode([t])[0].shape[1] for t in texts]


# --- 2. model.pretrained that names no directory -------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["/nonexistent/dir", "./missing-model", "../missing-model", "~/missing-xyz-model", "models/a/b"]
)
def test_path_like_pretrained_that_does_not_exist(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for check_model in (True, False):
        errors = _errors(_with(model={"pretrained": value}), check_model=check_model)
        assert len(errors) == 1, errors
        e = errors[0]
        assert e.startswith(f"model.pretrained: no such directory {value!r}"), e
        assert "accepted: 'default'" in e and "a model directory" in e and "Hugging Face model id" in e
        assert "Repo id must be" not in e


def test_pretrained_that_is_a_file(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    [e] = _errors(_with(model={"pretrained": str(tmp_path / "weights.bin")}))
    assert e.startswith("model.pretrained: is a file, not a model directory"), e


def test_hub_ids_stay_hub_ids():
    assert not looks_like_path("org/name") and not looks_like_path("HuggingFaceTB/SmolLM2-135M")
    assert not looks_like_path("gpt2") and not looks_like_path("default")
    assert all(looks_like_path(v) for v in ("/abs", "./x", "../x", "~/x", "a/b/c", "org/", "."))
    # an 'org/name' that is neither a directory nor cached is a hub-id problem, not 'no such directory'
    errors = _errors(_with(model={"pretrained": "no-such-org/no-such-model"}))
    assert errors and all("no such directory" not in e for e in errors), errors
    parse_config(_with(model={"pretrained": "no-such-org/no-such-model"}), check_model=False)


def test_pretrained_directory_with_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "model").mkdir()
    config = parse_config(_with(model={"pretrained": "~/model"}), check_model=False)
    assert config.model.pretrained == str(tmp_path / "model")


# --- 3. the results directory must be writable --------------------------------------------------------------


def test_output_under_a_file_is_rejected(tmp_path):
    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "file" / "results")
    for check_model in (True, False):
        [e] = _errors(_with(output=out), check_model=check_model)
        assert e.startswith(f"output: cannot write {out!r}: ") and "is a file, not a directory" in e, e


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc takes no new directories on Linux only")
def test_output_where_no_directory_can_be_made_is_rejected():
    """As root, permission bits do not stop a write; /proc refuses directories for everyone."""
    [e] = _errors(_with(output="/proc/dash-eval-results"), check_model=False)
    assert e.startswith("output: cannot write '/proc/dash-eval-results': cannot create a directory in '/proc'"), e


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_output_in_a_read_only_directory_is_rejected(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        [e] = _errors(_with(output=str(locked / "results")), check_model=False)
        assert "cannot write" in e and "Permission denied" in e, e
    finally:
        locked.chmod(0o700)


def test_output_check_leaves_nothing_behind(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "leaderboard.csv").write_text("x")
    for out in (tmp_path / "new" / "deeper", existing):
        parse_config(_with(output=str(out)), check_model=False)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "existing", "existing/leaderboard.csv"
    ]


def test_cli_rejects_an_unwritable_output_with_exit_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(_with(output=str(tmp_path / "file" / "out"))))
    assert main(["sweep", str(config), "--dry-run"]) == 2
    assert "output: cannot write" in capsys.readouterr().err
    # --output replaces the config's directory before the check: a good one makes the config good
    assert main(["sweep", str(config), "--dry-run", "--output", str(tmp_path / "elsewhere")]) == 0
    capsys.readouterr()
    config.write_text(yaml.safe_dump(_with(output=str(tmp_path / "fine"))))
    assert main(["sweep", str(config), "--dry-run", "--output", str(tmp_path / "file" / "x")]) == 2
    assert "output: cannot write" in capsys.readouterr().err


# --- 4. one mistake, one error --------------------------------------------------------------------------------


def test_bad_fixed_parameter_is_reported_once_not_per_grid_value():
    raw = _with(methods=[{"method": "dash", "alpha": 2.5, "grid": {"scale": [0.25, 0.5, 1, 2, 4, 8, 16]}}])
    errors = _errors(raw, check_model=False)
    assert errors == ["methods[0].alpha: dash: parameter alpha=2.5 must be a number in (1, 2]"], errors
    # a grid value wrong on its own is still named, next to the fixed one
    raw["methods"][0]["grid"]["scale"][3] = -1.0
    paths = [e.split(":")[0] for e in _errors(raw, check_model=False)]
    assert paths == ["methods[0].alpha", "methods[0].grid.scale[3]"], paths


def test_identical_errors_are_listed_once(tmp_path, monkeypatch):
    """Two checks reaching the same problem report one line, in order."""
    from dash_eval.evals import sweep_config

    def twice(c, raw, path):
        c.error(path, "same problem")
        c.error(path, "same problem")
        c.error(path, "other problem")
        return None

    monkeypatch.setattr(sweep_config, "parse_method", twice)
    assert _errors(_with(), check_model=False) == ["methods[0]: same problem", "methods[0]: other problem"]


# --- 5. a length too short says which one is long enough --------------------------------------------------------


def test_too_short_length_names_the_shortest_accepted_one(tokenizer):
    import re

    from dash_eval.tasks import generate_samples

    task = {"task": "niah_single", "lengths": [64, 150], "samples": 3, "seed": 0}
    errors = _errors(_with(tasks=[task]))
    assert [e.split(":")[0] for e in errors] == ["tasks[0].lengths[0]"], errors  # one per entry, as before
    shortest = int(re.search(r"accepted: a length of at least (\d+) for this task$", errors[0]).group(1))
    assert "leaves no room" in errors[0]
    errors = _errors(_with(tasks=[{**task, "lengths": [150]}]))
    assert errors[0].endswith(f"accepted: a length of at least {shortest} for this task"), errors
    assert "too short" in errors[0]
    # the length given is accepted, and every sample of the entry fits it; one less does not fit them all
    parse_config(_with(tasks=[{**task, "lengths": [shortest]}]), check_model=True)
    generate_samples("niah_single", length=shortest, n=3, seed=0, tokenizer=tokenizer, haystack="noise")
    with pytest.raises(ValueError, match="too short"):
        generate_samples("niah_single", length=shortest - 1, n=3, seed=0, tokenizer=tokenizer, haystack="noise")


# --- 6. calibration_reached for integers ------------------------------------------------------------------------


def test_integer_calibration_outside_tolerance_is_not_reached():
    """Adjacent integers bracket the target but neither lands within tolerance: the closer one is used and
    reported as not reached (a review saw nsa topk=1 recorded as reached at 0.559 for a target of 0.6)."""

    def measure(topk):
        return {0: 0.70, 1: 0.559, 2: 0.45, 3: 0.40, 4: 0.35}.get(topk, 0.1)

    cal = bisect_sparsity(measure, 0.6, parameter="topk", low=0, high=8, integer=True, tolerance=0.01)
    assert cal.value == 1 and cal.sparsity == 0.559
    assert not cal.reached
    assert cal.to_json()["reached"] is False
    # within tolerance, it is reached
    cal = bisect_sparsity(measure, 0.555, parameter="topk", low=0, high=8, integer=True, tolerance=0.01)
    assert cal.value == 1 and cal.reached


def test_jsonl_calibration_length_counts_the_prompt_the_model_sees(tmp_path, tokenizer):
    """A JSONL cell's calibration prompts match its records' length as the model sees them: inside the chat
    template when the sweep runs with one (the template's tokens count)."""
    from types import SimpleNamespace

    from dash_eval.evals.sweep_lm_eval import LmEvalRunner
    from dash_eval.tasks import render_prompt

    path = _write(tmp_path / "r.jsonl", [{"input": _text(n), "outputs": ["a"]} for n in (100, 200, 300)])
    for chat in (False, True):
        model = SimpleNamespace(apply_chat_template=chat)
        fake = SimpleNamespace(tokenizer=tokenizer, config=SimpleNamespace(model=model))
        expect = len(tokenizer(render_prompt(_text(200), "", tokenizer, chat), add_special_tokens=False).input_ids)
        assert LmEvalRunner._jsonl_length(fake, str(path)) == expect
    assert expect > 210  # the template's tokens are in
