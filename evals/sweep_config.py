"""Sweep configuration: the YAML schema, read safely and validated whole before any cell runs.

Shape (names may grow, never change)::

    name: smollm2-niah
    model: {pretrained: default, dtype: float32, device: cpu}
    tasks:
      - {task: niah_single, lengths: [2048, 4096], samples: 20, seed: 0}
      - {jsonl: path/to/ruler_format.jsonl}
    methods:
      - {method: full}
      - {method: dash, grid: {alpha: [1.25, 1.5], scale: [1.0, 4.0]}, block_size: 64}
      - {method: dash, target_sparsity: [0.75, 0.9], alpha: 1.5}
    calibration: {samples: 2, seed: 1000}
    output: results/smollm2-niah

Every problem found is collected and reported together, each one naming its field path
(``methods[1].grid.alpha[2]``), the bad value and what is accepted. Method parameters are checked by the
method's own parameter dataclass (``get_method(name).params_cls``), so this module has no branch per
method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dash_eval.evals.config_check import NAME_PATTERN, Checker, ConfigError, is_int, is_number
from dash_eval.evals.sweep_methods import MethodEntry, grid_points, parse_method, parse_router
from dash_eval.evals.sweep_task_data import check_task_data

from dash_eval.file_modes import directory_write_problem

__all__ = [
    "CalibrationSpec", "ConfigError", "MethodEntry", "ModelSpec", "SweepConfig", "TaskSpec", "config_hash",
    "grid_points", "load_config", "model_context_length", "parse_config",
]

DTYPES = ("float32", "bfloat16", "float16", "auto")
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
PRETRAINED_ACCEPTED = (
    "accepted: 'default' (the embedded model), a model directory, or a Hugging Face model id available "
    "offline (org/name)"
)


@dataclass(frozen=True)
class ModelSpec:
    pretrained: str
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 1
    router: str | None = None
    apply_chat_template: bool = False
    attn_backend: str = "auto"


@dataclass(frozen=True)
class TaskSpec:
    """One entry of ``tasks``: a generated task (``task``) over lengths, or a RULER-format JSONL file."""

    label: str  # the task column of the leaderboard
    lengths: tuple[int | None, ...]  # None: the JSONL file's own lengths
    samples: int | None  # None: every record of the JSONL file
    seed: int
    task: str | None = None
    jsonl: str | None = None
    haystack: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the task's own options (e.g. value_type)
    lm_eval_task: str = ""  # the lm-eval task that runs it (dash_niah_single, ..., dash_jsonl)
    metric: str | None = None  # JSONL only: string_match_all or string_match_part


@dataclass(frozen=True)
class CalibrationSpec:
    samples: int = 2
    seed: int = 1_000_003
    tolerance: float = 0.01
    max_steps: int = 14
    task: str = "niah_single"  # calibrates cells of JSONL tasks, which have no held-apart samples


@dataclass(frozen=True)
class SweepConfig:
    name: str
    model: ModelSpec
    tasks: tuple[TaskSpec, ...]
    methods: tuple[MethodEntry, ...]
    output: str
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def hash(self) -> str:
        """Hash of the whole configuration as written (canonical JSON), 12 hex digits."""
        return config_hash(self.raw)


def config_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --- sections ----------------------------------------------------------------------------------------------

MODEL_KEYS = {f.name for f in dataclasses.fields(ModelSpec)}
GEN_TASK_KEYS = {"task", "name", "lengths", "samples", "seed", "haystack", "options"}
JSONL_TASK_KEYS = {"jsonl", "name", "samples", "metric"}
CALIBRATION_KEYS = {f.name for f in dataclasses.fields(CalibrationSpec)}
TOP_KEYS = {"name", "model", "tasks", "methods", "output", "calibration"}


def _parse_model(c: Checker, raw: Any) -> ModelSpec | None:
    m = c.mapping(raw, "model")
    if m is None:
        return None
    c.unknown_keys(m, MODEL_KEYS, "model")
    if "pretrained" not in m:
        c.error("model.pretrained", "missing; give a model directory, a cached hub id or 'default'")
        return None
    pretrained = c.string(m["pretrained"], "model.pretrained")
    if pretrained is not None:
        pretrained = _check_pretrained(c, pretrained)
    dtype = c.string(m.get("dtype", "float32"), "model.dtype")
    if dtype is not None and dtype not in DTYPES:
        c.error("model.dtype", f"bad value {dtype!r}; accepted: {', '.join(DTYPES)}")
    device = c.string(m.get("device", "cpu"), "model.device", pattern=DEVICE_PATTERN, accepted="cpu, cuda, cuda:N, mps")
    if device is not None:
        from dash_eval.dash_models.loading import device_problem

        if (problem := device_problem(device)) is not None:
            c.error("model.device", f"{device!r}: {problem}")
    batch_size = c.integer(m.get("batch_size", 1), "model.batch_size", minimum=1)
    router = parse_router(c, m.get("router"), "model.router")
    chat = c.boolean(m.get("apply_chat_template", False), "model.apply_chat_template")
    from dash_eval.kernels import BACKENDS

    backend = c.string(m.get("attn_backend", "auto"), "model.attn_backend")
    if backend is not None and backend not in BACKENDS:
        c.error("model.attn_backend", f"bad value {backend!r}; accepted: {', '.join(BACKENDS)}")
    elif backend == "triton" and device is not None and not device.startswith("cuda") and not _interpreting():
        c.error("model.attn_backend", f"'triton' needs a CUDA device (model.device is {device!r}); accepted on "
                                      f"{device}: auto, reference (or set TRITON_INTERPRET=1 for Triton's slow CPU "
                                      "interpreter)")
    if pretrained is None:
        return None
    return ModelSpec(
        pretrained, dtype or "float32", device or "cpu", batch_size or 1, router, bool(chat), backend or "auto"
    )


def _interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET``, as ``kernels._triton.launch`` reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_pretrained(c: Checker, pretrained: str) -> str | None:
    """``pretrained`` (``~`` expanded), or None after an error when it is a path to no directory: Hugging
    Face would read it as a malformed hub id and say only that."""
    from dash_eval.dash_models.loading import missing_model_dir

    if (problem := missing_model_dir(pretrained)) is not None:
        c.error("model.pretrained", f"{problem}; {PRETRAINED_ACCEPTED}")
        return None
    expanded = os.path.expanduser(pretrained)
    return expanded if not os.path.isdir(pretrained) and os.path.isdir(expanded) else pretrained  # HF keeps '~'


def _parse_task(c: Checker, raw: Any, path: str, task_names: tuple[str, ...]) -> TaskSpec | None:
    t = c.mapping(raw, path)
    if t is None:
        return None
    if ("task" in t) == ("jsonl" in t):
        c.error(path, f"give exactly one of 'task' (one of {', '.join(task_names)}) or 'jsonl' (a file path)")
        return None
    if "jsonl" in t:
        c.unknown_keys(t, JSONL_TASK_KEYS, path)
        file = c.string(t["jsonl"], f"{path}.jsonl")
        samples = t.get("samples")
        if samples is not None:
            samples = c.integer(samples, f"{path}.samples", minimum=1)
        label = c.string(
            t.get("name", Path(file).stem if file else "jsonl"),
            f"{path}.name",
            pattern=NAME_PATTERN,
            accepted="letters, digits, '.', '_', '-'",
        )
        metric = t.get("metric")
        if metric is not None:
            from dash_eval.tasks import metric_names

            metric = c.string(metric, f"{path}.metric")
            if metric is not None and metric not in metric_names():
                c.error(f"{path}.metric", f"bad value {metric!r}; accepted: {', '.join(metric_names())}")
                metric = None
        if file is None or label is None or ("metric" in t and metric is None):
            return None
        if not os.path.isfile(file):
            c.error(f"{path}.jsonl", f"file {file!r} does not exist (relative paths start at {os.getcwd()})")
            return None
        return TaskSpec(
            label=label,
            lengths=(None,),
            samples=samples,
            seed=0,
            jsonl=os.path.abspath(file),
            lm_eval_task="dash_jsonl",
            metric=metric,
        )
    c.unknown_keys(t, GEN_TASK_KEYS, path)
    name = c.string(t["task"], f"{path}.task")
    lengths: list[int] = []
    if "lengths" not in t:
        c.error(f"{path}.lengths", "missing; give a list of prompt lengths in tokens, e.g. [2048, 4096]")
    else:
        values = c.list_of(t["lengths"], f"{path}.lengths") or []
        for j, v in enumerate(values):
            length = c.integer(v, f"{path}.lengths[{j}]", minimum=1)
            if length is not None:
                if length in lengths:
                    c.error(f"{path}.lengths[{j}]", f"length {length} listed twice")
                lengths.append(length)
    samples = c.integer(t.get("samples", 20), f"{path}.samples", minimum=1)
    seed = c.integer(t.get("seed", 0), f"{path}.seed", minimum=0)
    haystack = t.get("haystack")  # absent or null: the task's default haystack
    haystack_ok = haystack is None
    if haystack is not None:
        haystack = c.string(haystack, f"{path}.haystack")
        haystack_ok = haystack is not None
    options = c.mapping(t.get("options", {}), f"{path}.options")
    variant = None
    if name is not None and options is not None and haystack_ok:
        from dash_eval.evals.sweep_tasks import lm_eval_variants, resolve_variant

        try:
            variant = resolve_variant(name, haystack, dict(options))
        except ValueError as exc:
            known = any(v.generator == name or v.lm_eval_task in (name, f"dash_{name}") for v in lm_eval_variants())
            if known and haystack is not None and not options:
                where = "haystack"
            elif known and options and haystack is None:
                where = "options"
            else:
                where = "task"
            c.error(f"{path}.{where}", str(exc))
    label = None
    if "name" in t:
        label = c.string(t["name"], f"{path}.name", pattern=NAME_PATTERN, accepted="letters, digits, '.', '_', '-'")
    elif variant is not None:
        label = variant.lm_eval_task.removeprefix("dash_")
    if variant is None or label is None or not lengths or samples is None or seed is None:
        return None
    return TaskSpec(
        label=label,
        lengths=tuple(lengths),
        samples=samples,
        seed=seed,
        task=variant.generator,
        haystack=variant.haystack,
        options=dict(variant.options),
        lm_eval_task=variant.lm_eval_task,
    )


def _parse_calibration(c: Checker, raw: Any, task_names: tuple[str, ...]) -> CalibrationSpec | None:
    m = c.mapping(raw, "calibration")
    if m is None:
        return None
    c.unknown_keys(m, CALIBRATION_KEYS, "calibration")
    d = CalibrationSpec()
    samples = c.integer(m.get("samples", d.samples), "calibration.samples", minimum=1)
    seed = c.integer(m.get("seed", d.seed), "calibration.seed", minimum=0)
    tol = m.get("tolerance", d.tolerance)
    if not is_number(tol) or not 0 < tol < 0.5:
        c.error("calibration.tolerance", f"bad value {tol!r}; accepted: a number in (0, 0.5)")
        tol = None
    steps = c.integer(m.get("max_steps", d.max_steps), "calibration.max_steps", minimum=2)
    task = c.string(m.get("task", d.task), "calibration.task")
    if task is not None and task not in task_names:
        c.error("calibration.task", f"unknown task {task!r}; accepted: {', '.join(task_names)}")
    if None in (samples, seed, tol, steps, task):
        return None
    return CalibrationSpec(samples, seed, float(tol), steps, task)


def model_config(model: ModelSpec):
    """The model's transformers config, read without loading weights, from a directory or the local Hugging
    Face cache only (as ``load_model`` reads it): offline, a hub id would otherwise retry the network ~25 s."""
    from dash_eval.dash_models import resolve_model_path
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(model.pretrained), local_files_only=True)


def model_context_length(model: ModelSpec) -> int | None:
    """The model's context (``max_position_embeddings``), read from its config without loading weights."""
    return getattr(model_config(model), "max_position_embeddings", None)


def _check_against_model(c: Checker, config, model: ModelSpec, methods: list[tuple[str, MethodEntry]]) -> None:
    """What only the model's config can tell, checked before any weights load: the architecture is one the
    attention patch takes, and every router and ``layer_scales`` file fits the model's layers and heads."""
    from dash_eval.dash_models.layer_scales import NO_LAYER_SCALES, check_layer_scales, load_layer_scales
    from dash_eval.dash_models.patch import check_supported
    from dash_eval.dash_models.router import NO_ROUTER, check_router_file

    try:
        check_supported(config)
    except ValueError as exc:
        c.error("model.pretrained", str(exc))
        return
    n_layers = config.num_hidden_layers
    routers = [("model.router", model.router)] + [(f"{path}.router", entry.router) for path, entry in methods]
    for where, router in routers:
        if router is not None and router != NO_ROUTER:
            try:
                check_router_file(router, n_layers, config)
            except Exception as exc:  # noqa: BLE001 - a file safetensors cannot read is a config error here too
                c.error(where, str(exc))
    _warn_router_block_sizes(model, methods)
    for path, entry in methods:
        if entry.layer_scales is not None and entry.layer_scales != NO_LAYER_SCALES:
            try:
                check_layer_scales(load_layer_scales(entry.layer_scales), n_layers)
            except ValueError as exc:
                c.error(f"{path}.layer_scales", str(exc))


def _warn_router_block_sizes(model: ModelSpec, methods: list[tuple[str, MethodEntry]]) -> None:
    """Say before any cell runs where an entry routes with a router fitted at another block size (a choice a
    user may make on purpose, so a warning, not an error)."""
    from dash_eval.dash_models.router import NO_ROUTER, warn_block_size_mismatch
    from dash_eval.kernels.registry import get_method

    for _, entry in methods:
        router = entry.router if entry.router is not None else model.router
        params = get_method(entry.method).params_cls
        if router is None or router == NO_ROUTER or "router" not in params.field_names():
            continue
        sizes = entry.grid.get("block_size") or (entry.fixed.get("block_size", params().block_size),)
        for size in sizes:
            warn_block_size_mismatch(router, size)


def parse_config(
    raw: Any, *, source: str = "sweep config", check_model: bool = True, output: str | None = None
) -> SweepConfig:
    """Validate a loaded YAML document whole and return the typed config, or raise ``ConfigError`` listing
    every problem. ``check_model`` reads the model's config and tokenizer (never its weights) to check lengths
    and prompts against its context. ``output`` (``--output``) replaces the config's results directory."""
    from dash_eval.tasks import task_names as _task_names

    task_names = tuple(_task_names())
    c = Checker()
    top = c.mapping(raw, "(top level)")
    if top is None:
        raise ConfigError(c.errors, source)
    c.unknown_keys(top, TOP_KEYS, "(top level)")
    for key in ("name", "model", "tasks", "methods"):
        if key not in top:
            c.error(key, "missing (required keys: name, model, tasks, methods)")
    name = None
    if "name" in top:
        name = c.string(top["name"], "name", pattern=NAME_PATTERN, accepted="letters, digits, '.', '_', '-'")
    model = _parse_model(c, top["model"]) if "model" in top else None
    tasks: list[TaskSpec] = []
    task_paths: list[str] = []  # the config path of each valid entry (invalid ones are left out of tasks)
    if "tasks" in top:
        for i, t in enumerate(c.list_of(top["tasks"], "tasks") or []):
            spec = _parse_task(c, t, f"tasks[{i}]", task_names)
            if spec is not None:
                if any(s.label == spec.label for s in tasks):
                    c.error(f"tasks[{i}]", f"task {spec.label!r} listed twice; merge its lengths into one entry")
                tasks.append(spec)
                task_paths.append(f"tasks[{i}]")
    methods: list[MethodEntry] = []
    method_paths: list[str] = []
    if "methods" in top:
        for i, m in enumerate(c.list_of(top["methods"], "methods") or []):
            entry = parse_method(c, m, f"methods[{i}]")
            if entry is not None:
                j = next((j for j, e in enumerate(methods) if e.series == entry.series and e.method != entry.method),
                         None)
                if j is not None:
                    where = f"methods[{i}].label" if isinstance(m, dict) and "label" in m else f"methods[{i}]"
                    c.error(where, f"series {entry.series!r} is already the series of {method_paths[j]} (method "
                            f"{methods[j].method}); accepted: a label no other method uses (set 'label')")
                methods.append(entry)
                method_paths.append(f"methods[{i}]")
    calibration = CalibrationSpec()
    if "calibration" in top:
        calibration = _parse_calibration(c, top["calibration"], task_names) or calibration
    for path, t in zip(task_paths, tasks):
        if t.task is not None and t.seed == calibration.seed and any(m.target_sparsity for m in methods):
            c.error(
                f"{path}.seed",
                f"seed {t.seed} equals calibration.seed; calibration samples must be "
                "held apart from evaluation samples (pick another seed for one of them)",
            )
    configured = top.get("output", f"results/{name}" if name else None)
    if "output" in top:
        configured = c.string(top["output"], "output")
    if output is None:
        output = configured
    if output is not None and Path(output).exists() and not Path(output).is_dir():
        c.error("output", f"{output!r} is a file; accepted: a results directory (new, or one a sweep wrote)")
    elif output is not None and (problem := directory_write_problem(output)) is not None:
        c.error("output", f"cannot write {output!r}: {problem}; accepted: a directory this user can create and write")
    context = None
    if model is not None and check_model and (tasks or methods):
        try:
            mconfig = model_config(model)
        except Exception as exc:  # noqa: BLE001 - any failure to read the model is a config error here
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            c.error("model.pretrained", f"cannot read the model config of {model.pretrained!r} ({first}); "
                                        f"{PRETRAINED_ACCEPTED}")
        else:
            context = getattr(mconfig, "max_position_embeddings", None)
            _check_against_model(c, mconfig, model, list(zip(method_paths, methods)))
    # every entry's integer lengths, those of entries with other errors too: all problems show at once
    raw_tasks = top.get("tasks") if isinstance(top.get("tasks"), list) else []
    for i, t in enumerate(raw_tasks):
        lengths = t.get("lengths") if isinstance(t, dict) else None
        for j, length in enumerate(lengths if isinstance(lengths, list) else []):
            if context is not None and is_int(length) and length > context:
                c.error(
                    f"tasks[{i}].lengths[{j}]",
                    f"length {length} exceeds the model's context "
                    f"(max_position_embeddings={context}); accepted: at most {context}",
                )
    # the valid entries' data is checked even when other entries have errors: all problems show at once
    held_apart = (calibration.task, calibration.seed) if any(m.target_sparsity for m in methods) else None
    check_task_data(c, list(zip(task_paths, tasks)), model if check_model else None, context, held_apart)
    if c.errors:
        raise ConfigError(_unique(c.errors), source)
    config = SweepConfig(name, model, tuple(tasks), tuple(methods), output, calibration, raw=top)
    _check_duplicate_cells(c, config)
    if c.errors:
        raise ConfigError(_unique(c.errors), source)
    return config


def _unique(errors: list[str]) -> list[str]:
    """The errors without repeats, in order (one mistake reached by several checks is reported once)."""
    return list(dict.fromkeys(errors))


def _check_duplicate_cells(c: Checker, config: SweepConfig) -> None:
    """Two method entries that expand to the same cell would share one result directory."""
    from dash_eval.evals.sweep_cells import expand_cells

    entry_of: dict[str, int] = {}
    for cell in expand_cells(config):
        owner = cell.entry
        key = cell.hash(config)
        if key in entry_of and entry_of[key] != owner:
            c.error(
                f"methods[{owner}]",
                f"repeats a cell of methods[{entry_of[key]}] ({cell.method} {cell.params} on {cell.task}"
                f"{'' if cell.length is None else f' at {cell.length}'}); accepted: entries that differ in a "
                "parameter, target sparsity or router",
            )
            return
        entry_of.setdefault(key, owner)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no object construction) that refuses a key given twice in one mapping, which
    plain YAML loading resolves silently to the last value."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            if isinstance(key, str):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``: a ConfigError for a missing file, a directory, text that is not UTF-8,
    invalid YAML, a key given twice, or an empty document."""
    if path.is_dir():
        raise ConfigError([f"config {str(path)!r} is a directory; give a YAML file"], str(path))
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"], str(path))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}; save the file as UTF-8"],
                          str(path)) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from exc
    if raw is None:
        raise ConfigError(["the file is empty (or only comments); a sweep config is a mapping with name, model, "
                           "tasks, methods"], str(path))
    return raw


def load_config(path: str | os.PathLike, *, check_model: bool = True, output: str | None = None) -> SweepConfig:
    """Read a sweep YAML file (``read_yaml``: safe loading, no object construction) and validate it whole;
    ``output`` replaces the config's results directory (``--output``)."""
    path = Path(path)
    raw = read_yaml(path)
    return parse_config(raw, source=str(path), check_model=check_model, output=output)
