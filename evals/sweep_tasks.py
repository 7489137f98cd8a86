"""Which lm-eval task runs a sweep's task entry.

A generated task runs as one of the ``dash_*`` lm-eval tasks of ``dash_eval.tasks.lm_eval_task_dir()``;
each of those fixes its generator, haystack and options in its YAML (``dataset_kwargs``), while lengths,
sample count and seed come through lm-eval's metadata. A config entry names either the generator
(``task: niah_single``, optionally with ``haystack``/``options`` to pick a variant) or the lm-eval task
itself (``task: dash_niah_single_uuid``, or without its ``dash_`` prefix); either way the sweep learns the
variant's haystack and options, so that its own checks and calibration draw samples exactly like the lm-eval
task does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Variant:
    lm_eval_task: str  # e.g. dash_niah_single_uuid
    generator: str | None  # e.g. niah_single; None for dash_jsonl
    haystack: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.lm_eval_task} (haystack {self.haystack}{', ' + opts if opts else ''})"


class _TolerantLoader(yaml.SafeLoader):
    """A safe loader that reads lm-eval's ``!function`` tags as plain strings (nothing is constructed)."""


_TolerantLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_TolerantLoader) or {}
    include = data.pop("include", None)
    if include and path not in seen:
        base = _read(path.parent / include, (*seen, path))
        base.update(data)  # lm-eval's include: the including file's top-level keys win
        data = base
    return data


@functools.lru_cache(maxsize=1)
def lm_eval_variants() -> tuple[Variant, ...]:
    """Every generated ``dash_*`` lm-eval task with its generator, haystack and options."""
    from dash_eval.tasks import lm_eval_task_dir

    variants = []
    for path in sorted(lm_eval_task_dir().glob("*.yaml")):
        data = _read(path)
        kwargs = data.get("dataset_kwargs") or {}
        if "task" not in data or not isinstance(data["task"], str) or "dash_task" not in kwargs:
            continue  # groups, and dash_jsonl (which reads a file rather than generating)
        variants.append(
            Variant(
                data["task"], kwargs["dash_task"], kwargs.get("dash_haystack"), dict(kwargs.get("dash_options") or {})
            )
        )
    return tuple(variants)


# HFLM's answer budget for a task whose YAML gives no ``max_gen_toks`` (``HFLM.max_gen_toks``)
LM_EVAL_DEFAULT_MAX_GEN_TOKS = 256


@functools.cache
def generation_budget(lm_eval_task: str) -> int:
    """The answer budget (``generation_kwargs.max_gen_toks``, includes followed) of one of this project's
    lm-eval tasks: lm-eval keeps that many positions of the model's context free for the answer and cuts
    whatever of the prompt does not fit in the rest off its start."""
    from dash_eval.tasks import lm_eval_task_dir

    for path in sorted(lm_eval_task_dir().glob("*.yaml")):
        data = _read(path)
        if data.get("task") == lm_eval_task:
            budget = (data.get("generation_kwargs") or {}).get("max_gen_toks", LM_EVAL_DEFAULT_MAX_GEN_TOKS)
            return int(budget)
    raise ValueError(f"no lm-eval task {lm_eval_task!r} in {lm_eval_task_dir()}")


def resolve_variant(task: str, haystack: str | None, options: dict[str, Any]) -> Variant:
    """The lm-eval task for a config entry; ``ValueError`` naming what is available when none fits."""
    variants = lm_eval_variants()
    by_name = {v.lm_eval_task: v for v in variants}
    generators = {v.generator for v in variants}
    if task not in generators and f"dash_{task}" in by_name:
        task = f"dash_{task}"  # the leaderboard label of a variant names it too
    if task in by_name:
        v = by_name[task]
        if (haystack is not None and haystack != v.haystack) or (options and options != v.options):
            raise ValueError(
                f"lm-eval task {task!r} fixes its haystack and options ({v.describe()}); leave 'haystack' and "
                "'options' out, or name the generator instead"
            )
        return v
    same = [v for v in variants if v.generator == task]
    if not same:
        raise ValueError(
            f"unknown task {task!r}; accepted: a generator ({', '.join(sorted(generators))}) or an lm-eval task "
            f"({', '.join(sorted(by_name))})"
        )
    if haystack is None and not options and f"dash_{task}" in by_name:
        return by_name[f"dash_{task}"]
    wanted = _with_defaults(task, options)
    for v in same:
        if (haystack is None or haystack == v.haystack) and wanted == _with_defaults(task, v.options):
            return v
    raise ValueError(
        f"no lm-eval task generates {task!r} with haystack {haystack!r} and options {options or {}}; "
        f"accepted: {'; '.join(v.describe() for v in same)}"
    )


def _with_defaults(generator: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the generator's defaults filled in, so that spelling out a default value
    (``value_type: numbers``) picks the same variant as leaving it out. Options the generator rejects stay
    as given (they then match no variant, and the error lists the variants)."""
    import dataclasses

    from dash_eval.tasks.base import TASKS

    try:
        return dataclasses.asdict(TASKS.get(generator).Options(**options))
    except (TypeError, ValueError, KeyError):
        return dict(options)
