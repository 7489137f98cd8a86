"""The cell runner of ``dash-eval sweep``: one loaded model, every cell through ``lm_eval.simple_evaluate``
with the ``dash`` model, so that a sweep cell and the hand-typed ``lm_eval --model dash`` command written
into its ``cell.json`` give the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from dash_eval.dash_models.layer_scales import load_layer_scales
from dash_eval.dash_models.router import model_routers, set_routers
from dash_eval.evals.sweep import CellResult
from dash_eval.evals.sweep_calibrate import (
    DEFAULT_INTEGER_LOW,
    DEFAULT_REAL_RANGE,
    bisect_layer_sparsity,
    bisect_sparsity,
)
from dash_eval.evals.sweep_cells import Cell
from dash_eval.evals.sweep_config import SweepConfig
from dash_eval.evals.sweep_store import ResultsStore
from dash_eval.tasks.base import adds_special_tokens, count_tokens

PHASE_FIGURES = ("sparsity", "active_blocks_mean", "active_blocks_p10", "active_blocks_p50", "active_blocks_p90")
# lm-eval result keys that are not the task's accuracy metric
NOT_ACCURACY = ("alias", "samples", "sample_len", "sample_count")
# lm-eval warnings that every cell of this project's tasks raises by design, not problems: the tasks build
# their samples from metadata (a custom dataset), and RULER-style tasks report one metric per length,
# which has no aggregation function. Logger name -> the start of the message.
EXPECTED_LM_EVAL_WARNINGS = {
    "lm_eval.api.task": "Custom kwargs can be passed to `--metadata`",
    "lm_eval.evaluator_utils": "No aggregation function defined for metric",
}


def lm_eval_task(cell: Cell, config: SweepConfig) -> tuple[str, dict[str, Any], int | None]:
    """The lm-eval task of a cell, its task ``metadata`` (lengths, sample count, seed) and ``limit``."""
    spec = cell.task_spec
    if spec.jsonl is not None:
        meta: dict[str, Any] = {"jsonl": spec.jsonl}
        if spec.metric is not None:
            meta["metric"] = spec.metric
        return spec.lm_eval_task, meta, cell.samples
    meta = {"max_seq_lengths": [cell.length], "num_samples": cell.samples, "seed": cell.seed}
    if config.model.apply_chat_template:
        meta["chat_template"] = True  # prompts sized as they will look inside the chat template
    return spec.lm_eval_task, meta, None


def _arg_text(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def lm_eval_model_args(config: SweepConfig, cell: Cell, params: dict[str, Any]) -> dict[str, Any]:
    """``--model_args`` of the equivalent ``lm_eval --model dash`` command."""
    m = config.model
    # The device goes on lm_eval's own --device flag: given in both places, lm-eval passes it twice.
    args: dict[str, Any] = {"pretrained": m.pretrained, "dtype": m.dtype, "method": cell.method}
    router = cell.effective_router(config) if cell.method == "dash" else None  # only dash takes one
    if router is not None:
        args["router"] = router
    if cell.method == "dash" and cell.per_layer:  # the cell's calibration record holds the per-layer multipliers
        args["layer_scales"] = str(ResultsStore(config.output).calibration_path(cell.calibration_key(config)))
    elif cell.method == "dash" and cell.layer_scales is not None:
        args["layer_scales"] = cell.layer_scales
    if m.attn_backend != "auto":
        args["attn_backend"] = m.attn_backend
    args.update({k: v for k, v in params.items() if v is not None})
    return args


def lm_eval_command(config: SweepConfig, cell: Cell, params: dict[str, Any]) -> str:
    task, meta, limit = lm_eval_task(cell, config)
    model_args = ",".join(f"{k}={_arg_text(v)}" for k, v in lm_eval_model_args(config, cell, params).items())
    parts = [
        "lm_eval",
        "--model",
        "dash",
        "--model_args",
        model_args,
        "--tasks",
        task,
        "--metadata",
        json.dumps(meta, separators=(",", ":")),
        "--batch_size",
        str(config.model.batch_size),
        "--device",
        config.model.device,
        "--log_samples",
        "--output_path",
        "lm_eval_out",
    ]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if config.model.apply_chat_template:
        parts.append("--apply_chat_template")
    return " ".join(shlex.quote(p) for p in parts)


def accuracy_metric(task_results: dict[str, Any], length: int | None) -> str:
    """The accuracy key of a task's lm-eval results: the cell's length when the task reports per length
    (as RULER does), else the one metric that is neither a stderr nor a sparsity figure."""
    if length is not None and f"{length},none" in task_results:
        return f"{length},none"
    if "score,none" in task_results:
        return "score,none"
    candidates = [
        k
        for k, v in task_results.items()
        if "," in k
        and k.split(",")[1] == "none"
        and "_stderr" not in k
        and k.split(",")[0] not in NOT_ACCURACY
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    ]
    if len(candidates) != 1:
        raise RuntimeError(f"cannot tell the accuracy metric among {sorted(task_results)} (candidates: {candidates})")
    return candidates[0]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


class _DropExpected(logging.Filter):
    """Drops the records of one logger whose message contains ``text`` (``EXPECTED_LM_EVAL_WARNINGS``)."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _git_commit_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` (recorded in its results as ``git_hash``) with git's stderr
    discarded: outside a repository git prints ``fatal: not a git repository`` for every cell."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval without the output that every sweep cell repeats: its INFO lines, the warnings in
    ``EXPECTED_LM_EVAL_WARNINGS``, its request-building progress bar and git's complaint outside a
    repository. Other warnings and errors still show. Everything is restored on exit."""
    import lm_eval.api.task as lm_task
    import lm_eval.evaluator as lm_evaluator
    from tqdm import tqdm

    root = logging.getLogger("lm_eval")
    level = root.level
    filters = [(logging.getLogger(name), _DropExpected(text)) for name, text in EXPECTED_LM_EVAL_WARNINGS.items()]
    # lm-eval's module attributes replaced meanwhile (the pinned 0.4.13 has both; another version may not)
    patches = [(module, name, value) for module, name, value in (
        (lm_task, "tqdm", functools.partial(tqdm, disable=True)),
        (lm_evaluator, "get_git_commit_hash", _git_commit_hash),
    ) if hasattr(module, name)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    root.setLevel(logging.WARNING)
    for logger, drop in filters:
        logger.addFilter(drop)
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        root.setLevel(level)
        for logger, drop in filters:
            logger.removeFilter(drop)
        for module, name, value in saved:
            setattr(module, name, value)


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """transformers' (and the hub's) progress bars, such as "Loading weights", off meanwhile."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class LmEvalRunner:
    """Loads the sweep's model once and runs cells through lm-eval, switching the method per cell."""

    def __init__(self, config: SweepConfig, store: ResultsStore, *, verbose: bool = False):
        from dash_eval.dash_models import load_model
        from dash_eval.evals.lm_model import DashLM

        self.config = config
        self.store = store
        # lm-eval's messages repeat for every cell (custom datasets, per-length metrics without an
        # aggregation, git outside a repository) and its bars interleave with the sweep's; they stay off
        # (quiet_lm_eval) unless asked for
        self.verbose = verbose
        m = config.model
        with contextlib.nullcontext() if verbose else no_transformers_bars():
            self.model, self.tokenizer = load_model(
                m.pretrained, method="full", dtype=m.dtype, device=m.device, router=m.router, backend=m.attn_backend
            )
        self.lm = DashLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=m.batch_size)
        # the routers as loaded (a checkpoint's own, or model.router): each cell starts from them
        self._base_routers = {k: v.clone() for k, v in model_routers(self.model).items()}
        self.on_status: Callable[[str], None] = lambda text: None  # the sweep's progress bar sets this
        self.device_name = _device_name(self.lm.device)
        self._task_managers: dict[str, Any] = {}

    # --- target sparsity ---------------------------------------------------------------------------------

    def _calibration_prompts(self, cell: Cell) -> list[torch.Tensor]:
        from dash_eval.tasks import generate_samples

        cal = self.config.calibration
        spec = cell.task_spec
        task = spec.task or cal.task
        length = cell.length or self._jsonl_length(spec.jsonl)
        samples = generate_samples(
            task,
            length=length,
            n=cal.samples,
            seed=cal.seed,
            tokenizer=self.tokenizer,
            haystack=spec.haystack if spec.task else None,
            chat_template=self.config.model.apply_chat_template,
            **(spec.options if spec.task else {}),
        )
        from dash_eval.tasks import render_prompt

        prompts = []
        for s in samples:
            text = render_prompt(s.input, s.answer_prefix, self.tokenizer, self.config.model.apply_chat_template)
            # encoded as lm-eval encodes the cell's prompts: no second BOS after a chat template's own
            special = adds_special_tokens(self.tokenizer, text)
            prompts.append(self.tokenizer(text, return_tensors="pt", add_special_tokens=special).input_ids)
        return prompts

    def _jsonl_length(self, path: str) -> int:
        """The median length of a JSONL file's prompts as the model sees them (inside the chat template when the
        sweep uses one), for calibration prompts of the same length."""
        from dash_eval.tasks import read_jsonl, render_prompt

        chat = self.config.model.apply_chat_template
        lengths = [count_tokens(self.tokenizer, render_prompt(s.input, s.answer_prefix, self.tokenizer, chat))
                   for s in read_jsonl(path)]
        return int(statistics.median(lengths))

    def _set_attention(self, cell: Cell, params: dict[str, Any],
                       layer_scales: dict[int, float] | None = None) -> None:
        """Switch the loaded model to ``cell``'s method with ``params``, the cell's router and its per-layer
        scale multipliers: ``layer_scales`` when given (per-layer calibration), else the entry's fixed ones,
        else none."""
        if layer_scales is None and cell.layer_scales is not None:
            layer_scales = load_layer_scales(cell.layer_scales)
        set_routers(self.model, self._base_routers)
        self.lm.set_attention(cell.method, router=cell.router, attn_backend=self.config.model.attn_backend,
                              layer_scales=layer_scales or {}, **params)

    def _prefill_tally(self, prompts: list[torch.Tensor]):
        from dash_eval.dash_models import get_tally

        tally = get_tally(self.model)
        tally.reset()
        with torch.no_grad():
            for ids in prompts:
                self.model(ids.to(self.lm.device), use_cache=False, logits_to_keep=1)
        return tally

    def measure_sparsity(self, cell: Cell, params: dict[str, Any], prompts: list[torch.Tensor]) -> float:
        """Prefill sparsity of ``prompts`` under ``cell``'s method with ``params`` (forward passes only)."""
        self._set_attention(cell, params)
        tally = self._prefill_tally(prompts)
        sparsity = float(tally.summary("prefill")["sparsity"])
        tally.reset()
        return sparsity

    def measure_layer_sparsity(self, cell: Cell, params: dict[str, Any], layer_scales: dict[int, float],
                               prompts: list[torch.Tensor]) -> dict[int, float]:
        """Each layer's prefill sparsity of ``prompts`` with per-layer multipliers of ``params['scale']``."""
        self._set_attention(cell, params, layer_scales)
        tally = self._prefill_tally(prompts)
        sparsity = tally.layer_sparsity("prefill")
        tally.reset()
        return sparsity

    def calibrate(self, cell: Cell) -> dict[str, Any]:
        """The calibrated value of ``cell.calibrate`` for ``cell.target_sparsity`` (cached in the results
        directory, so a resumed sweep does not calibrate again)."""
        key = cell.calibration_key(self.config)
        cached = self.store.read_calibration(key)
        if cached is not None:
            if not cached.get("per_layer"):  # earlier records called an integer's closest value reached, always
                cached["reached"] = abs(cached["sparsity"] - cached["target"]) <= self.config.calibration.tolerance
            return cached
        t0 = time.perf_counter()
        from dash_eval.evals.sweep_cells import method_defaults

        default = method_defaults(cell.method)[cell.calibrate]
        integer = isinstance(default, int) and not isinstance(default, bool)
        prompts = self._calibration_prompts(cell)
        if cell.calibrate_range is not None:
            low, high = cell.calibrate_range
        elif integer:
            block = cell.params.get("block_size")
            # a JSONL cell's calibration prompts have its file's median length, which may be well over 4096
            length = cell.length or max(int(ids.shape[-1]) for ids in prompts)
            low, high = DEFAULT_INTEGER_LOW, max(2, math.ceil(length / block)) if block else 1024
        else:
            low, high = DEFAULT_REAL_RANGE
        cal = self.config.calibration
        steps = 0

        def measure(v):
            nonlocal steps
            steps += 1
            self.on_status(f"calibrating {cell.calibrate} for sparsity {cell.target_sparsity:g}: step {steps}, "
                           f"{cell.calibrate}={v:.4g}")
            return self.measure_sparsity(cell, {**cell.params, cell.calibrate: v}, prompts)

        def measure_layers(values: dict[int, float]) -> dict[int, float]:
            nonlocal steps
            steps += 1
            self.on_status(f"calibrating {cell.calibrate} per layer for sparsity {cell.target_sparsity:g}: "
                           f"step {steps}")
            return self.measure_layer_sparsity(cell, {**cell.params, cell.calibrate: 1.0}, values, prompts)

        if cell.per_layer:
            from dash_eval.dash_models.patch import attention_modules

            layers = [m.layer_idx for m in attention_modules(self.model)]
            result = bisect_layer_sparsity(
                measure_layers, layers, cell.target_sparsity, parameter=cell.calibrate, low=low, high=high,
                tolerance=cal.tolerance, max_steps=cal.max_steps,
            )
        else:
            result = bisect_sparsity(
                measure,
                cell.target_sparsity,
                parameter=cell.calibrate,
                low=low,
                high=high,
                integer=integer,
                tolerance=cal.tolerance,
                max_steps=cal.max_steps,
            )
        record = {
            **result.to_json(),
            "time_s": time.perf_counter() - t0,
            "calibration_samples": cal.samples,
            "calibration_seed": cal.seed,
            "range": [low, high],
        }
        self.store.write_calibration(key, record)
        self.on_status(f"calibrated {cell.calibrate}={record['value']:.4g} (sparsity {record['sparsity']:.3f})")
        return record

    # --- one cell ----------------------------------------------------------------------------------------

    def _task_manager(self, metadata: dict[str, Any]):
        from dash_eval.tasks import lm_eval_task_dir
        from lm_eval.tasks import TaskManager

        # Only this project's task folder is indexed: indexing all of lm-eval's tasks per cell costs seconds.
        return TaskManager(include_path=str(lm_eval_task_dir()), include_defaults=False, metadata=metadata)

    def run_cell(self, cell: Cell, on_samples: Callable[[int], None]) -> CellResult:
        from lm_eval import simple_evaluate

        params = dict(cell.params)
        calibration = None
        layer_scales = None
        if cell.target_sparsity is not None:
            calibration = self.calibrate(cell)
            params[cell.calibrate] = calibration["value"]
            layer_scales = calibration.get("layer_scales")
        self._set_attention(cell, params, layer_scales)
        task, task_meta, limit = lm_eval_task(cell, self.config)
        # lm_eval's CLI hands model_args to the tasks as metadata too (the tokenizer comes from 'pretrained')
        metadata = {**lm_eval_model_args(self.config, cell, params), **task_meta}
        progress = _SampleProgress(self.lm, on_samples, quiet=not self.verbose)
        t0 = time.perf_counter()
        with progress, contextlib.nullcontext() if self.verbose else quiet_lm_eval():
            results = simple_evaluate(
                model=self.lm,
                tasks=[task],
                batch_size=self.config.model.batch_size,
                log_samples=True,
                apply_chat_template=self.config.model.apply_chat_template,
                task_manager=self._task_manager(metadata),
                metadata=metadata,
                limit=limit,
                verbosity="INFO" if self.verbose else None,
            )
        wall = time.perf_counter() - t0
        if results is None:
            raise RuntimeError("lm-eval returned no results")
        if "dash_attention" not in results:  # the startup hook is not installed in this interpreter
            results = self.lm.dash_annotate_results(results)
        return self._result(cell, task, results, wall, params, calibration, metadata)

    def _result(self, cell, task, results, wall, params, calibration, metadata) -> CellResult:
        task_results = results["results"][task]
        metric = accuracy_metric(task_results, cell.length)
        accuracy = float(task_results[metric])
        name, filt = metric.split(",", 1)
        stderr = task_results.get(f"{name}_stderr,{filt}")
        samples = results.get("samples", {}).get(task, [])
        predictions, prompt_tokens, new_tokens = [], [], []
        for s in samples:
            context = s["arguments"][0][0] if s.get("arguments") else ""
            prediction = s["filtered_resps"][0] if s.get("filtered_resps") else ""
            n_prompt = count_tokens(self.tokenizer, context)  # as HFLM encoded it
            n_new = len(self.tokenizer(prediction, add_special_tokens=False).input_ids)
            prompt_tokens.append(n_prompt)
            new_tokens.append(n_new)
            predictions.append(
                {
                    "doc_id": s.get("doc_id"),
                    "target": s.get("target"),
                    "prediction": prediction,
                    "score": s.get(name),
                    "prompt_tokens": n_prompt,
                    "generated_tokens": n_new,
                    "dash_attention": s.get("dash_attention"),
                }
            )
        figures = results.get("dash_attention", {}).get("tasks", {}).get(task, {})
        prefill, decode = figures.get("prefill", {}), figures.get("decode", {})
        if not prefill:
            raise RuntimeError(f"lm-eval results of {task} carry no measured sparsity (dash_attention)")
        n = len(samples) or int(task_results.get("sample_len", 0) or 0)
        metrics = {
            "samples": n,
            "accuracy": accuracy,
            "accuracy_stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            **{k: float(prefill[k]) for k in PHASE_FIGURES},
            "decode_sparsity": float(decode["sparsity"]) if decode else None,
            "decode_active_blocks_mean": float(decode["active_blocks_mean"]) if decode else None,
            "wall_time_s": wall,
            "tokens_per_s": (sum(prompt_tokens) + sum(new_tokens)) / wall if wall > 0 else None,
            "prompt_tokens_mean": statistics.fmean(prompt_tokens) if prompt_tokens else None,
            "metric": metric,
        }
        if cell.length is None and prompt_tokens:
            metrics["length"] = int(statistics.median(prompt_tokens))
        kept = {
            k: results[k]
            for k in (
                "results",
                "configs",
                "versions",
                "n-shot",
                "higher_is_better",
                "n-samples",
                "dash_attention",
                "config",
            )
            if k in results
        }
        kept["metadata"] = metadata
        return CellResult(
            metrics=metrics,
            params=params,
            predictions=predictions,
            lm_eval_results=kept,
            command=lm_eval_command(self.config, cell, params),
            calibration=calibration,
        )


class _SampleProgress:
    """Reports finished samples to the sweep's progress bar: HFLM generates batch by batch through
    ``_model_generate``, so the instance's method is wrapped for the cell's duration (nothing global).
    lm-eval's own per-request bar is turned off meanwhile, so that one bar covers the sweep."""

    def __init__(self, lm: Any, on_samples: Callable[[int], None], quiet: bool = True):
        self.lm = lm
        self.on_samples = on_samples
        self.quiet = quiet

    def __enter__(self):
        generate, until = self.lm._model_generate, self.lm.generate_until

        def counted(context, *args, **kwargs):
            out = generate(context, *args, **kwargs)
            self.on_samples(int(context.shape[0]))
            return out

        def generate_until(requests, disable_tqdm: bool = False):
            return until(requests, disable_tqdm=disable_tqdm or self.quiet)

        self.lm._model_generate = counted
        self.lm.generate_until = generate_until
        return self

    def __exit__(self, *exc):
        del self.lm._model_generate
        del self.lm.generate_until
        return False
