"""RULER's scorers: case-insensitive substring matches of the expected strings in the prediction."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from dash_eval.tasks.registry import UnknownNameError

METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {}

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def clean_prediction(prediction: str) -> str:
    """Strip the prediction and turn control characters into newlines, as RULER does before matching."""
    return _CONTROL_CHARS.sub("\n", prediction.strip()).strip()


def _check_outputs(outputs: Sequence[str]) -> None:
    if isinstance(outputs, str) or not outputs or not all(isinstance(o, str) for o in outputs):
        raise ValueError(f"outputs must be a non-empty list of strings, got {outputs!r}")


def string_match_all(prediction: str, outputs: Sequence[str]) -> float:
    """Fraction of the expected strings present in the prediction (case-insensitive)."""
    _check_outputs(outputs)
    pred = clean_prediction(prediction).lower()
    return sum(o.lower() in pred for o in outputs) / len(outputs)


def string_match_part(prediction: str, outputs: Sequence[str]) -> float:
    """1.0 when any expected string is present in the prediction (case-insensitive), else 0.0."""
    _check_outputs(outputs)
    pred = clean_prediction(prediction).lower()
    return float(any(o.lower() in pred for o in outputs))


METRICS["string_match_all"] = string_match_all
METRICS["string_match_part"] = string_match_part


def metric_names() -> list[str]:
    return sorted(METRICS)


def score(task_or_metric: str, prediction: str, outputs: Sequence[str]) -> float:
    """Score one prediction with a metric (``string_match_all``/``string_match_part``) or a task's metric."""
    if task_or_metric in METRICS:
        return METRICS[task_or_metric](prediction, outputs)
    from dash_eval.tasks.base import TASKS

    if task_or_metric in TASKS:
        return METRICS[TASKS.get(task_or_metric).metric](prediction, outputs)
    raise UnknownNameError(
        f"unknown task or metric {task_or_metric!r}; metrics: {', '.join(metric_names())}; "
        f"tasks: {', '.join(TASKS.names())}"
    )
