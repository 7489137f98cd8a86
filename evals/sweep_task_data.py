"""A sweep config's tasks checked with the model's tokenizer (never its weights), before any cell runs: every
JSONL record's prompt counted as lm-eval will feed it to the model, against the model's context, and one sample
of every generated task and length drawn, so that a prompt too long (which lm-eval would cut from the left), a
length too short for a task's template, an unknown haystack or a broken record is a config error."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from dash_eval.evals.config_check import Checker

if TYPE_CHECKING:  # sweep_config imports this module
    from dash_eval.evals.sweep_config import ModelSpec, TaskSpec


def check_task_data(
    c: Checker, tasks: list[tuple[str, TaskSpec]], model: ModelSpec | None, context: int | None,
    calibration: tuple[str, int] | None = None,
) -> None:
    """Read every JSONL file and (given the model) count the tokens of each record's prompt the way the
    model will see it, and draw one sample of every generated task and length with the model's tokenizer,
    so that a prompt too long for the model, a length too short for a task's template, an unknown haystack
    or a broken record fails now rather than hours into a sweep (or, worse, as a silently truncated prompt).
    ``calibration`` (the calibration task and seed, when the sweep calibrates a target sparsity): JSONL records
    drawn as that task with that seed (their ``metadata``) would be the calibration samples themselves."""
    from dash_eval.tasks import read_jsonl

    tokenizer = None
    model_unreadable = any(e.startswith("model.pretrained:") for e in c.errors)
    if model is not None and not model_unreadable and tasks:
        from dash_eval.dash_models import resolve_model_path
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model.pretrained))
        except Exception as exc:  # noqa: BLE001 - any failure to read the tokenizer is a config error here
            c.error("model.pretrained", f"cannot load the tokenizer of {model.pretrained!r}: {exc}")
    chat = model is not None and model.apply_chat_template
    if tokenizer is not None and chat and not getattr(tokenizer, "chat_template", None):
        c.error(
            "model.apply_chat_template",
            f"true, but the tokenizer of {model.pretrained!r} has no chat template; accepted: false for this model",
        )
        tokenizer = None  # every prompt would fail the same way
    for path, t in tasks:
        if t.jsonl is not None:
            try:
                records = read_jsonl(t.jsonl)
            except (ValueError, OSError) as exc:
                c.error(f"{path}.jsonl", str(exc))
                continue
            if t.samples is not None and t.samples > len(records):
                c.error(
                    f"{path}.samples",
                    f"{t.samples} asked for but {t.jsonl} holds {len(records)} samples; "
                    f"accepted: at most {len(records)}",
                )
            if calibration is not None:
                _check_held_apart(c, path, t, records[: t.samples], calibration)
            if tokenizer is not None and context is not None:
                # lm-eval runs the first `samples` records (--limit)
                _check_jsonl_prompts(c, path, t, records[: t.samples], tokenizer, chat, context)
        elif tokenizer is not None:
            for j, length in enumerate(t.lengths):
                if context is not None and length > context:
                    continue  # reported already
                try:
                    _draw(t, tokenizer, length, chat)
                except (ValueError, KeyError, TypeError) as exc:
                    text = str(exc)
                    where = (
                        f"{path}.haystack"
                        if "haystack" in text
                        else f"{path}.options"
                        if "option" in text or any(k in text for k in t.options)
                        else f"{path}.lengths[{j}]"
                    )
                    message = text.strip("'\"")
                    if where.endswith(f"lengths[{j}]") and TOO_SHORT.search(text):
                        shortest = _shortest_length(t, tokenizer, length, context, chat)
                        message += (
                            f"; accepted: a length of at least {shortest} for this task"
                            if shortest is not None
                            else f"; accepted: none, the task fits no length up to the model's context "
                            f"(max_position_embeddings={context})"
                        )
                    c.error(where, message)
                    break


# the messages of generate_samples for a length below what the task's template and answer budget need
TOO_SHORT = re.compile(r"too short|leaves no room")
# records of a JSONL file named one by one in an error; the rest are counted
LISTED_RECORDS = 5


def _draw(t: TaskSpec, tokenizer: Any, length: int, chat: bool, n: int = 1) -> None:
    """``n`` samples of generated task ``t`` at ``length``, drawn as its lm-eval task draws them."""
    from dash_eval.tasks import generate_samples

    generate_samples(
        t.task, length=length, n=n, seed=t.seed, tokenizer=tokenizer, haystack=t.haystack, chat_template=chat,
        **t.options,
    )


def _shortest_length(t: TaskSpec, tokenizer: Any, length: int, context: int | None, chat: bool) -> int | None:
    """The shortest length at which the task's template and answer budget fit (``length`` does not),
    searched by doubling then bisection; None when none up to the model's context does. Every sample the
    cell will draw takes part (up to 100: the needles, and so the template's cost, differ per sample and per
    length), so that the length given is one the run accepts too, not only this check's single sample."""
    n = min(t.samples or 1, 100)

    def fits(m: int) -> bool:
        try:
            _draw(t, tokenizer, m, chat, n)
        except (ValueError, KeyError, TypeError):
            return False
        return True

    cap = context or 1 << 20
    lo, hi = length, max(2 * length, 64)  # lo does not fit
    while not fits(min(hi, cap)):
        if hi >= cap:
            return None
        lo, hi = hi, 2 * hi
    hi = min(hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _check_held_apart(c: Checker, path: str, t: TaskSpec, records: list, calibration: tuple[str, int]) -> None:
    """A JSONL cell calibrates on ``calibration.task`` drawn with ``calibration.seed``; records that ``dash-eval
    tasks sample`` drew as that task with that seed are those very prompts (at the file's length)."""
    task, seed = calibration
    same = [i for i, r in enumerate(records) if r.metadata.get("task") == task and r.metadata.get("seed") == seed]
    if same:
        lines = _record_lines(t.jsonl)
        listed = ", ".join(f"line {lines[i]}" for i in same[:LISTED_RECORDS])
        more = f" and {len(same) - LISTED_RECORDS} more" if len(same) > LISTED_RECORDS else ""
        c.error(
            f"{path}.jsonl",
            f"{len(same)} record(s) of {t.jsonl} ({listed}{more}) were drawn as task {task} with seed {seed}, "
            f"calibration.task and calibration.seed; calibration samples must be held apart from evaluation "
            "samples (pick another calibration.seed)",
        )


def _record_lines(path: str) -> list[int]:
    """The line number of each record of a JSONL file, in order (``read_jsonl`` skips blank lines)."""
    with open(path, encoding="utf-8") as handle:
        return [n for n, line in enumerate(handle, start=1) if line.strip()]


def lm_eval_prompt_tokens(tokenizer: Any, texts: list[str], chunk: int = 32) -> list[int]:
    """How many tokens lm-eval's ``HFLM.generate_until`` feeds the model for each context: the tokenizer's
    special tokens are added unless the text starts with its BOS token already (``tok_batch_encode``; a
    chat template writes its own). Counted in chunks, keeping only the counts."""
    from dash_eval.tasks.base import adds_special_tokens

    counts: list[int] = [0] * len(texts)
    for special in (True, False):
        picked = [i for i, text in enumerate(texts) if adds_special_tokens(tokenizer, text) == special]
        for k in range(0, len(picked), chunk):
            ids = tokenizer([texts[i] for i in picked[k : k + chunk]], add_special_tokens=special)["input_ids"]
            for i, row in zip(picked[k : k + chunk], ids):
                counts[i] = len(row)
    return counts


def _check_jsonl_prompts(
    c: Checker, path: str, t: TaskSpec, records: list, tokenizer: Any, chat: bool, context: int
) -> None:
    """Every record's prompt, as lm-eval builds it (``input``, then ``answer_prefix``; inside the chat template
    when the model runs with one), plus its answer budget (the record's ``max_new_tokens``, else the task's) must
    fit the model's context: lm-eval would otherwise cut the prompt's start off (the needle with it, often) and
    score what is left."""
    from dash_eval.evals.sweep_tasks import generation_budget
    from dash_eval.tasks import render_prompt

    budget = generation_budget(t.lm_eval_task)
    budgets = [r.max_new_tokens if r.budget_given else budget for r in records]
    texts = [render_prompt(r.input, r.answer_prefix, tokenizer, chat) for r in records]
    counts = lm_eval_prompt_tokens(tokenizer, texts)
    over = [(i, n) for i, n in enumerate(counts) if n + budgets[i] > context]
    if not over:
        return
    lines = _record_lines(t.jsonl)

    def name(i: int) -> str:
        r = records[i]
        parts = [f"index {r.metadata['index']}"] if "index" in r.metadata else []
        if r.length is not None:
            parts.append(f"declared length {r.length}")
        return f"line {lines[i]}" + (f" ({', '.join(parts)})" if parts else "")

    limit = context - budgets[over[0][0]]  # the first record's (records that carry no budget share the task's)
    listed = ", ".join(f"{name(i)}: {n} tokens" for i, n in over[:LISTED_RECORDS])
    more = len(over) - LISTED_RECORDS
    if more > 0:
        listed += f", and {more} more (longest {max(n for _, n in over)} tokens)"
    how = "inside the chat template, " if chat else ""
    c.error(
        f"{path}.jsonl",
        f"{len(over)} of {len(records)} prompt(s) of {t.jsonl} are too long for the model: {listed}; a prompt "
        f"({how}counted with the model's tokenizer) plus its answer budget (the record's max_new_tokens, else "
        f"max_gen_toks={budget} of {t.lm_eval_task}) must fit the model's context (max_position_embeddings="
        f"{context}), or lm-eval cuts the prompt's start off; accepted: prompts of at most {limit} tokens",
    )
