"""The Python side of the lm-eval task configs in ``lm_eval_configs/``: datasets built from ``--metadata``
(merged with ``--model_args`` by lm-eval) and per-length scoring.

Metadata keys read by the generated tasks: ``max_seq_lengths`` (list of token lengths, default
``[4096]``), ``num_samples`` (per length, default 100), ``seed`` (default 42), ``chat_template`` (size
prompts as they will look inside the chat template, default false), and the tokenizer from
``tokenizer``, ``pretrained`` or ``model`` (``default`` is the embedded model). ``dash_jsonl`` reads
``jsonl`` (a RULER-format file) and ``metric`` (``string_match_all`` or ``string_match_part``).
"""

from __future__ import annotations

import json
from typing import Any

from dash_eval.tasks.base import generate_samples
from dash_eval.tasks.sample import Sample, read_jsonl
from dash_eval.tasks.scoring import METRICS, metric_names, score

DEFAULT_SEQ_LENGTHS = [4096]
DEFAULT_NUM_SAMPLES = 100
DEFAULT_SEED = 42
TOKENIZER_KEYS = ("tokenizer", "pretrained", "model")
# Lengths declared as metrics in the YAML files; a run at another length still reports it (averaged).
STANDARD_LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]


def tokenizer_name(metadata: dict[str, Any]) -> str:
    for key in TOKENIZER_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value:
            import os

            from dash_eval.dash_models import resolve_model_path
            from dash_eval.dash_models.loading import missing_model_dir

            path = resolve_model_path(os.path.expanduser(value))
            if (problem := missing_model_dir(path)) is not None:
                raise ValueError(f"metadata {key} (the tokenizer dash tasks size their prompts with): {problem}; "
                                 "accepted: a model or tokenizer directory, a hub id already in the local cache, "
                                 "or 'default'")
            return path
    raise ValueError(
        "dash tasks size their prompts with the model's tokenizer but none was given: pass --model_args "
        "pretrained=PATH (or 'default'), or --metadata '{\"tokenizer\": \"PATH\"}'"
    )


def seq_lengths(metadata: dict[str, Any]) -> list[int]:
    lengths = metadata.get("max_seq_lengths", DEFAULT_SEQ_LENGTHS)
    if isinstance(lengths, int) and not isinstance(lengths, bool):
        lengths = [lengths]
    if (
        not isinstance(lengths, list)
        or not lengths
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths)
    ):
        raise ValueError(f"metadata max_seq_lengths must be a list of positive integers, got {lengths!r}")
    return lengths


def _positive_int(metadata: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"metadata {key} must be an integer >= {minimum}, got {value!r}")
    return value


def to_doc(sample: Sample, metric: str, budget: int | None = None) -> dict[str, Any]:
    """A flat lm-eval document (the same columns for every row, so datasets can build a table). ``budget``: the
    record's own answer budget, which the ``dash`` model answers it with (None: the task's ``max_gen_toks``).
    A JSONL record's ``index`` that is not an integer, or ``depth`` that is not a number, stays in ``metadata``
    only."""
    index, depth = sample.metadata.get("index"), sample.metadata.get("depth")
    return {
        "index": index if isinstance(index, int) and not isinstance(index, bool) else -1,
        "input": sample.input,
        "outputs": list(sample.outputs),
        "length": sample.length,
        "answer_prefix": sample.answer_prefix,
        "metric": metric,
        "depth": float(depth) if isinstance(depth, (int, float)) and not isinstance(depth, bool) else None,
        "max_new_tokens": budget,
        "metadata": json.dumps(sample.metadata, sort_keys=True),
    }


def _dataset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    import datasets

    return {"test": datasets.Dataset.from_list(docs, split=datasets.Split.TEST)}


def generated_docs(
    metadata: dict[str, Any], task: str, haystack: str | None, options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Samples for every requested length, interleaved (sample 0 at each length, then sample 1, ...), so
    that ``--limit`` still covers every length."""
    from dash_eval.tasks.base import TASKS

    lengths = seq_lengths(metadata)
    n = _positive_int(metadata, "num_samples", DEFAULT_NUM_SAMPLES, 1)
    seed = _positive_int(metadata, "seed", DEFAULT_SEED, 0)
    chat = metadata.get("chat_template", False)
    if not isinstance(chat, bool):
        raise ValueError(f"metadata chat_template must be true or false, got {chat!r}")
    tokenizer = tokenizer_name(metadata)
    metric = TASKS.get(task).metric
    per_length = [
        generate_samples(
            task,
            length=length,
            n=n,
            seed=seed,
            tokenizer=tokenizer,
            haystack=haystack,
            chat_template=chat,
            **options,
        )
        for length in lengths
    ]
    return [to_doc(samples[i], metric) for i in range(n) for samples in per_length]


def generated_dataset(**kwargs: Any) -> dict[str, Any]:
    """lm-eval ``custom_dataset``: ``dash_task``, ``dash_haystack``, ``dash_options`` come from the YAML's
    ``dataset_kwargs``; the rest is lm-eval's metadata."""
    task = kwargs.pop("dash_task")
    haystack = kwargs.pop("dash_haystack", None)
    options = kwargs.pop("dash_options", None) or {}
    return _dataset(generated_docs(kwargs, task, haystack, options))


def jsonl_docs(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    path = metadata.get("jsonl")
    if not isinstance(path, str) or not path:
        raise ValueError(
            f'dash_jsonl needs the RULER-format file to score: --metadata \'{{"jsonl": "PATH"}}\' (got jsonl={path!r})'
        )
    metric = metadata.get("metric", "string_match_all")
    if metric not in METRICS:
        raise ValueError(f"metadata metric must be one of {', '.join(metric_names())}, got {metric!r}")
    # a record that carries max_new_tokens (dash-eval tasks sample writes it) is answered with that budget
    return [to_doc(s, metric, s.max_new_tokens if s.budget_given else None) for s in read_jsonl(path)]


def jsonl_dataset(**kwargs: Any) -> dict[str, Any]:
    """lm-eval ``custom_dataset`` of ``dash_jsonl``."""
    return _dataset(jsonl_docs(kwargs))


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The score under ``score`` and under the sample's length (only lengths that were run appear)."""
    value = score(doc["metric"], results[0], doc["outputs"])
    metrics = {"score": value}
    if doc.get("length"):
        metrics[str(doc["length"])] = value
    return metrics
