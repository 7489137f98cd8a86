"""Offline long-context tasks: RULER-style generators sized with the model's tokenizer, scorers, JSONL I/O,
and lm-eval task configs.

>>> from dash_eval.tasks import generate_samples, score
>>> samples = generate_samples("niah_single", length=2048, n=4, seed=0, tokenizer="default")
>>> score("niah_single", "The number is " + samples[0].outputs[0], samples[0].outputs)
1.0
"""

if "." not in __name__:  # imported as a bare top-level name from the checkout's root: dash_eval/_shadow.py
    from dash_eval._shadow import stand_aside

    stand_aside(__name__)
else:
    from dash_eval.tasks import aggregation as _aggregation  # noqa: F401  (registers the tasks)
    from dash_eval.tasks import niah as _niah  # noqa: F401
    from dash_eval.tasks import vt as _vt  # noqa: F401
    from dash_eval.tasks.base import (
        TASKS,
        Task,
        TaskOptions,
        count_tokens,
        generate_samples,
        lm_eval_task_dir,
        render_prompt,
        resolve_tokenizer,
        task_info,
        task_names,
    )
    from dash_eval.tasks.haystacks import HAYSTACKS, haystack_names
    from dash_eval.tasks.registry import UnknownNameError
    from dash_eval.tasks.sample import Sample, read_jsonl, write_jsonl
    from dash_eval.tasks.scoring import METRICS, metric_names, score, string_match_all, string_match_part

    __all__ = [
        "HAYSTACKS",
        "METRICS",
        "TASKS",
        "Sample",
        "Task",
        "TaskOptions",
        "UnknownNameError",
        "count_tokens",
        "generate_samples",
        "haystack_names",
        "lm_eval_task_dir",
        "metric_names",
        "read_jsonl",
        "render_prompt",
        "resolve_tokenizer",
        "score",
        "string_match_all",
        "string_match_part",
        "task_info",
        "task_names",
        "write_jsonl",
    ]
