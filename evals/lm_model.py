"""The lm-evaluation-harness model ``dash``: a Hugging Face causal LM with a sparse attention method.

    lm_eval --model dash --model_args pretrained=default,method=dash,alpha=1.5,block_size=64,scale=2.0 \\
        --tasks niah_single_1 --metadata max_seq_lengths=[1024] --device cpu

``DashLM`` is ``HFLM`` with two differences: the model is loaded by ``dash_eval.dash_models.load_model``
(``pretrained`` is ``default`` for the embedded model, a local directory, or a hub id already in the local
cache) with the attention method and its parameters from ``model_args``; and every forward pass's
measured sparsity is attributed to the requests it served, so that lm-eval's results carry the sparsity
of each task and each logged sample (see ``_lm_eval_sparsity``). Everything else is ``HFLM``.

``model_args`` keys: ``pretrained``, ``method``, ``router``, ``layer_scales`` (a JSON file of per-layer
multipliers of dash's ``scale``, ``dash_models.layer_scales``), ``dtype``, ``device``, ``attn_backend``, the
method's parameters (METHODS.md; e.g. ``alpha``, ``block_size``, ``scale`` for ``dash``), and the ``HFLM``
options that apply to an already-loaded model (``batch_size``, ``max_length``, ``tokenizer``, ...). Any
other key is an error that names it and lists the accepted ones.

A sweep loads the model once and switches the method per cell::

    model, tokenizer = load_model("default")
    lm = DashLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    lm.set_attention("dash", alpha=1.5, scale=2.0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any

import torch
from dash_eval.dash_models import apply_attention, current_attention, get_tally, load_model
from dash_eval.dash_models.embedded import DEFAULT_MODEL_NAME
from dash_eval.evals._lm_eval_sparsity import SampleRecorder
from dash_eval.kernels import get_method, method_names
from dash_eval.kernels.api import BACKENDS
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import CacheHook
from lm_eval.models.huggingface import HFLM

MODEL_NAME = "dash"

# HFLM options that still mean something when HFLM is handed a loaded model; they pass through as given.
HFLM_KEYS = (
    "tokenizer",
    "truncation",
    "logits_cache",
    "max_length",
    "softmax_dtype",
    "mixed_precision_dtype",
    "batch_size",
    "max_batch_size",
    "trust_remote_code",
    "use_fast_tokenizer",
    "add_bos_token",
    "prefix_token_id",
    "think_end_token",
    "enable_thinking",
    "chat_template_args",
)
# HFLM options about how HFLM itself would load the weights; dash loads them with load_model instead.
HFLM_LOADING_KEYS = (
    "backend",
    "revision",
    "subfolder",
    "parallelize",
    "max_memory_per_gpu",
    "max_cpu_memory",
    "offload_folder",
    "tp_plan",
    "peft",
    "delta",
    "autogptq",
    "gptqmodel",
    "gguf_file",
)
OWN_KEYS = ("pretrained", "method", "router", "layer_scales", "dtype", "device", "attn_backend")


def method_param_names(method: str) -> list[str]:
    """The ``model_args`` keys that are parameters of ``method`` (tensor-valued fields, such as the
    per-layer router, are given through ``router=PATH`` instead)."""
    fields = dataclasses.fields(get_method(method).params_cls)
    return [f.name for f in fields if not f.metadata.get("tensor")]


def split_model_args(method: str, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``model_args`` (without ``OWN_KEYS``) into HFLM options and ``method`` parameters.

    Raises ``ValueError`` naming every key that is neither, with the accepted keys."""
    if not isinstance(method, str) or method not in method_names():
        raise ValueError(
            f"model_args method={method!r}: unknown attention method; accepted: {', '.join(method_names())}"
        )
    params = method_param_names(method)
    hflm = {k: v for k, v in args.items() if k in HFLM_KEYS}
    method_params = {k: v for k, v in args.items() if k in params}
    unknown = sorted(set(args) - set(hflm) - set(method_params))
    if unknown:
        loading = [k for k in unknown if k in HFLM_LOADING_KEYS]
        other_methods = sorted(
            {k for k in unknown for m in method_names() if m != method and k in method_param_names(m)}
        )
        hints = []
        if loading:
            hints.append(
                f"{', '.join(loading)}: HFLM loading option(s) that --model {MODEL_NAME} does not take "
                "(the model is loaded by dash_eval's load_model)"
            )
        if other_methods:
            hints.append(f"{', '.join(other_methods)}: parameter(s) of another method, not of {method}")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(
            f"model_args: unknown key(s) {', '.join(unknown)} for --model {MODEL_NAME} with method={method}{hint}; "
            f"accepted: {', '.join(OWN_KEYS)}; {method} parameters: {', '.join(params) or '(none)'}; "
            f"HFLM options: {', '.join(HFLM_KEYS)}"
        )
    return _checked_hflm_values(hflm), method_params


# HFLM options that HFLM reads as true or false whatever they hold (``truncation=flase`` would be true)
BOOL_OPTIONS = ("truncation", "logits_cache", "trust_remote_code", "use_fast_tokenizer", "add_bos_token",
                "enable_thinking")
# HFLM options that name a torch dtype (HFLM looks the name up in torch only after the model has loaded)
DTYPE_OPTIONS = ("softmax_dtype", "mixed_precision_dtype")
# HFLM options of a tokenizer that HFLM loads by name; the model's own tokenizer comes from load_model
TOKENIZER_LOADING_KEYS = ("use_fast_tokenizer", "trust_remote_code")


def _checked_hflm_values(hflm: dict[str, Any]) -> dict[str, Any]:
    """The HFLM options whose bad values HFLM itself would only trip over after the model has loaded (or
    mid-evaluation), or would take silently, checked now: ``max_length`` and ``max_batch_size`` positive
    integers, ``batch_size`` one too or ``auto`` / ``auto:N``, the true/false options true or false, the dtypes
    floating torch dtypes, ``prefix_token_id`` a token id, ``chat_template_args`` a dict, and ``tokenizer`` a
    directory that exists (``default`` is the embedded model's)."""
    from dash_eval.dash_models import resolve_model_path
    from dash_eval.dash_models.loading import missing_model_dir

    out = dict(hflm)
    for key in BOOL_OPTIONS:
        if out.get(key) is not None and not isinstance(out[key], bool):
            raise ValueError(f"model_args {key}={out[key]!r}; accepted: true or false")
    for key in DTYPE_OPTIONS:
        value = out.get(key)
        dtype = getattr(torch, value, None) if isinstance(value, str) else value
        if value is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"model_args {key}={value!r}; accepted: float32, bfloat16, float16, float64")
    token = out.get("prefix_token_id")
    if token is not None and (isinstance(token, bool) or not isinstance(token, int) or token < 0):
        raise ValueError(f"model_args prefix_token_id={token!r}; accepted: a token id (an integer >= 0)")
    if out.get("chat_template_args") is not None and not isinstance(out["chat_template_args"], dict):
        raise ValueError(f"model_args chat_template_args={out['chat_template_args']!r}; accepted: a dict of "
                         "keyword arguments for the tokenizer's apply_chat_template (from Python)")
    tokenizer = out.get("tokenizer")
    if isinstance(tokenizer, str):
        out["tokenizer"] = resolve_model_path(os.path.expanduser(tokenizer))
        if (problem := missing_model_dir(out["tokenizer"])) is not None:
            raise ValueError(f"model_args tokenizer: {problem}; accepted: a tokenizer directory, a hub id already "
                             "in the local cache, or 'default'")
    else:
        given = [k for k in TOKENIZER_LOADING_KEYS if out.get(k) is not None]
        if given:
            raise ValueError(
                f"model_args {', '.join(given)}: HFLM option(s) for a tokenizer loaded by name, which the model's "
                "own tokenizer (loaded by dash_eval's load_model) does not take; accepted: leave them out, or "
                "give tokenizer=PATH with them"
            )

    def positive(key: str, value: Any, extra: str = "") -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model_args {key}={value!r}; accepted: an integer >= 1{extra}")
        return value

    for key in ("max_length", "max_batch_size"):
        if out.get(key) is not None:
            out[key] = positive(key, out[key])
    size = out.get("batch_size")
    if size is not None:
        text = str(size)
        auto = text == "auto" or (text.startswith("auto:") and text[5:].isdigit() and int(text[5:]) >= 1)
        if not auto:
            out["batch_size"] = positive("batch_size", size, ", 'auto' or 'auto:N'")
    return out


# model_args that configure a method's routing, and the parameter a method must have to use each
ROUTING_OPTIONS = {"router": "router", "layer_scales": "scale"}


def _check_routing_options(method: str, **given: Any) -> None:
    """``router`` and ``layer_scales`` configure the routing of methods with a ``router`` / ``scale`` parameter
    (``dash``); given with another method they would be ignored, so they are refused (``"none"``, which clears
    them, is accepted with any method, and so is an empty mapping of layer scales, which a sweep passes to clear
    them)."""
    def has(name: str, field: str) -> bool:
        return field in get_method(name).params_cls.field_names()

    for key, value in given.items():
        field = ROUTING_OPTIONS[key]
        if value is None or (isinstance(value, str) and value == "none") or value == {} or has(method, field):
            continue
        takers = "/".join(m for m in method_names() if has(m, field))
        raise ValueError(f"model_args {key}={value!r}: only method={takers} uses a {key.replace('_', ' ')}; "
                         f"method={method} has none (accepted with {method}: leave {key} out, or 'none')")


def resolve_device(device: str | None) -> str:
    """HFLM's rule for a single device: the device asked for if this machine has it, else CUDA if
    available, else CPU (lm-eval's CLI passes ``cuda:0`` when ``--device`` is not given)."""
    if device is None or device == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):
        raise ValueError(f"model_args device={device!r}; accepted: a device string such as cpu, cuda, cuda:0")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "cpu"
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(
                f"model_args device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "accepted: cpu, cuda, cuda:0 .. cuda:N-1"
            )
    return device


def _saved_attention(pretrained: str) -> dict[str, Any] | None:
    from dash_eval.dash_models import resolve_model_path
    from dash_eval.dash_models.patch import CONFIG_KEY
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(pretrained))
    except (OSError, ValueError):
        return None  # load_model reports what is wrong with the path
    return getattr(config, CONFIG_KEY, None)


@contextlib.contextmanager
def _quiet_about_loaded_model():
    """HFLM warns that a loaded model makes its loading options moot; DashLM rejects those options up front,
    so the warnings would only mislead."""

    def keep(record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("`pretrained` model kwarg is not of type `str`" in text or "already-initialized model" in text)

    hf_logger = logging.getLogger(HFLM.__module__)
    hf_logger.addFilter(keep)
    try:
        yield
    finally:
        hf_logger.removeFilter(keep)


class _RecordingCacheHook:
    """Forwards to lm-eval's cache hook, and tells the recorder which request each result answers (HFLM
    calls ``add_partial`` once per request, right after the batch that computed it)."""

    def __init__(self, inner: CacheHook, recorder: SampleRecorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        self.recorder.on_result(attr, req)
        self.inner.add_partial(attr, req, res)


# lm-eval's aliases of the answer budget (lm_eval.models.utils.normalize_gen_kwargs reads them in this order)
_BUDGET_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def _apply_record_budgets(requests) -> None:
    """A ``dash_jsonl`` record that carries its own answer budget (``max_new_tokens``: files written by
    ``dash-eval tasks sample`` do) is answered with it, not with the task's one ``max_gen_toks`` (128): lm-eval
    takes generation settings per task, and a ``vt`` file (30 tokens) would otherwise be answered with 128,
    past the length it was built for. Records without one keep the task's budget (``--gen_kwargs``)."""
    for req in requests:
        doc = getattr(req, "doc", None)
        budget = doc.get("max_new_tokens") if isinstance(doc, dict) else None
        if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 and len(req.args) > 1:
            kwargs = {k: v for k, v in dict(req.args[1] or {}).items() if k not in _BUDGET_KEYS}
            req.arguments = (req.args[0], {**kwargs, "max_gen_toks": budget}, *req.args[2:])


class DashLM(HFLM):
    """``HFLM`` with a dash-eval attention method and measured sparsity per task and per sample."""

    def __init__(
        self,
        pretrained: Any = DEFAULT_MODEL_NAME,
        method: str | None = None,
        router: str | None = None,
        layer_scales: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        attn_backend: str = "auto",
        **kwargs: Any,
    ) -> None:
        self._recorder = SampleRecorder()
        if isinstance(pretrained, str) and pretrained.startswith("~"):
            pretrained = os.path.expanduser(pretrained)  # transformers does not expand '~'
        loaded = not isinstance(pretrained, str)
        if loaded and not isinstance(pretrained, torch.nn.Module):
            raise ValueError(
                f"model_args pretrained={pretrained!r}; accepted: 'default', a model directory, a hub id in "
                "the local cache, or a loaded transformers model"
            )
        if method is None:
            # Keep the attention the model has (a loaded model's, or the one saved in its config).
            saved = current_attention(pretrained) if loaded else _saved_attention(pretrained)
            method = saved["method"] if saved else "full"
            kwargs = {**(saved or {}).get("params", {}), **kwargs}
        hflm_kwargs, params = split_model_args(method, kwargs)
        get_method(method).make_params(**params)  # every bad value fails here, before any weight loads
        _check_routing_options(method, router=router, layer_scales=layer_scales)
        if attn_backend not in BACKENDS:
            raise ValueError(f"model_args attn_backend={attn_backend!r}; accepted: {', '.join(BACKENDS)}")
        if loaded:
            if hflm_kwargs.get("tokenizer") is None:
                raise ValueError("model_args tokenizer: required when pretrained is a loaded model")
            model = pretrained
            apply_attention(model, method, router=router, layer_scales=layer_scales, backend=attn_backend, **params)
            self.model_name_or_path = getattr(model, "name_or_path", "")
        else:
            model, tokenizer = load_model(
                pretrained,
                method=method,
                dtype=dtype,
                device=resolve_device(device),
                router=router,
                layer_scales=layer_scales,
                backend=attn_backend,
                **params,
            )
            hflm_kwargs.setdefault("tokenizer", tokenizer)
            self.model_name_or_path = pretrained
        with _quiet_about_loaded_model():
            super().__init__(pretrained=model, **hflm_kwargs)
        get_tally(self.model).reset()

    # lm-eval hands its own --device / --batch_size / --max_batch_size (or their defaults) to every model next
    # to model_args; HFLM then fails on a key given both ways ("got multiple values for keyword argument").
    # Here a key in model_args wins, and the command-line value fills in only what model_args leaves out.
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> DashLM:
        return cls.create_from_arg_obj(lm_eval_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> DashLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # --- switching the method (a sweep loads once and switches per cell) -------------------------------

    def set_attention(self, method: str, router: str | None = None, attn_backend: str = "auto",
                      layer_scales: str | dict[int, float] | None = None, **params: Any):
        """Switch the attention method in place and forget the sparsity recorded so far. Only the method's
        parameters are taken: HFLM's options (``batch_size``, ``max_length``, ...) are fixed when ``DashLM`` is
        made, and ``router`` / ``layer_scales`` only with a method that routes with them, as in ``model_args``."""
        hflm, params = split_model_args(method, params)
        if hflm:
            raise ValueError(f"set_attention {', '.join(sorted(hflm))}: HFLM option(s), fixed when DashLM is made; "
                             f"accepted: the parameters of {method} ({', '.join(method_param_names(method))})")
        _check_routing_options(method, router=router, layer_scales=layer_scales)
        parsed = apply_attention(self.model, method, router=router, layer_scales=layer_scales,
                                 backend=attn_backend, **params)
        self.reset_sparsity()
        return parsed

    def reset_sparsity(self) -> None:
        self._recorder.clear()
        get_tally(self.model).reset()

    @property
    def attention(self) -> dict[str, Any]:
        """``{"method": ..., "params": {...}}`` of the model's current attention."""
        return current_attention(self.model) or {"method": "full", "params": {}}

    # --- lm-eval's cache hook is where HFLM names the request of each result ---------------------------

    @property
    def cache_hook(self):
        return self._cache_hook

    @cache_hook.setter
    def cache_hook(self, hook: CacheHook) -> None:
        if isinstance(hook, _RecordingCacheHook):
            hook = hook.inner
        self._cache_hook = _RecordingCacheHook(hook, self._recorder_for_hook)

    @property
    def _recorder_for_hook(self) -> SampleRecorder:
        # LM.__init__ sets cache_hook before DashLM.__init__ has finished; the recorder exists by then.
        return self.__dict__.setdefault("_recorder", SampleRecorder())

    # --- request types: attribute every batch row's sparsity to its requests ---------------------------

    def generate_until(self, requests, disable_tqdm: bool = False):
        _apply_record_budgets(requests)
        self._refuse_truncation(requests)
        with self._recorder.serving("generate_until", requests):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _refuse_truncation(self, requests) -> None:
        """HFLM cuts a prompt longer than ``max_length`` minus the tokens to generate from the left, with one log
        line: a long-context task would then score a prompt whose start (often the needle) is gone. Every
        prompt is measured first, and any that would be cut is an error before anything is generated."""
        from dash_eval.tasks.base import adds_special_tokens, count_tokens
        from lm_eval.models.utils import normalize_gen_kwargs

        over = []
        for req in requests:
            context, gen_kwargs = req.args[0], req.args[1] if len(req.args) > 1 else {}
            # the answer budget as HFLM reads it (max_gen_toks, or an alias such as max_new_tokens)
            gen = int(normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)["max_gen_toks"])
            # special tokens as HFLM's tok_batch_encode adds them: none after a BOS, else as add_bos_token says
            special = adds_special_tokens(self.tokenizer, context) and self.add_bos_token is not False
            n = count_tokens(self.tokenizer, context, special)
            if n + gen > self.max_length:
                over.append((getattr(req, "task_name", "?"), getattr(req, "doc_id", "?"), n, gen))
        if over:
            task, doc, n, gen = over[0]
            room = (f"prompts of at most {self.max_length - gen} tokens (shorter lengths)" if gen < self.max_length
                    else f"an answer budget below max_length {self.max_length}")
            raise ValueError(
                f"{len(over)} of {len(requests)} prompt(s) do not fit the model: task {task} doc {doc} has {n} tokens "
                f"+ {gen} to generate > max_length {self.max_length}; lm-eval would cut them from the left, losing "
                f"what a long-context task asks about. Accepted: {room}, or model_args max_length=N where the "
                f"model's positions allow"
            )

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._loglikelihood_names = {req.args: (getattr(req, "task_name", "?"), getattr(req, "doc_id", "?"))
                                     for req in requests}
        try:
            with self._recorder.serving("loglikelihood", requests):
                return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._loglikelihood_names = {}

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        # HFLM batches the windows of all documents together, and no per-window result names its
        # document; one document at a time keeps every window's sparsity with its document. Its own
        # progress bar would start over for every document, so one bar counts the documents instead.
        from tqdm import tqdm

        results = []
        for request in tqdm(requests, desc="Running loglikelihood_rolling requests",
                            disable=disable_tqdm or self.rank != 0):
            with self._recorder.serving("loglikelihood_rolling", [request]):
                results += super().loglikelihood_rolling([request], disable_tqdm=True)
        return results

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        tally = get_tally(self.model)
        tally.begin_batch()
        out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        self._recorder.rows_done(tally.rows)
        return out

    def _model_call(self, inps, attn_mask=None, labels=None):
        tally = get_tally(self.model)
        tally.begin_batch()
        padding = self._recorder.right_padding_mask(inps) if attn_mask is None else None
        if padding is None:
            out = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        else:
            # Right-padded rows of a loglikelihood batch: the mask keeps the padding out of the measured
            # sparsity (the real tokens' logits are the same with or without it: attention is causal).
            with (
                torch.no_grad(),
                torch.autocast(
                    device_type=self.device.type,
                    dtype=self.mixed_precision_dtype,
                    enabled=self.mixed_precision_dtype is not None,
                ),
            ):
                out = self.model(inps, attention_mask=padding).logits
        self._recorder.rows_done(tally.rows)
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        self._refuse_cut_contexts(requests)
        self._recorder.expect_inputs(
            (context_enc + continuation_enc)[-(self.max_length + 1) :][:-1]
            for _, context_enc, continuation_enc in requests
        )
        return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

    def _refuse_cut_contexts(self, requests) -> None:
        """HFLM scores a context and continuation longer than ``max_length`` + 1 tokens (the last one is only
        predicted) on what is left after cutting the context from the left, with one log line per request; as for
        generation, any that would be cut is an error before anything runs. Rolling windows always fit."""
        over = [(key, len(context), len(continuation)) for key, context, continuation in requests
                if len(context) + len(continuation) > self.max_length + 1]
        if over:
            key, n_context, n_continuation = over[0]
            task, doc = getattr(self, "_loglikelihood_names", {}).get(key, ("?", "?"))
            raise ValueError(
                f"{len(over)} of {len(requests)} loglikelihood request(s) do not fit the model: task {task} doc {doc} "
                f"has {n_context} context + {n_continuation} continuation tokens > max_length {self.max_length} + 1; "
                f"lm-eval would cut the context from the left, losing its start. Accepted: shorter contexts, or "
                f"model_args max_length=N where the model's positions allow"
            )

    def _select_cont_toks(self, logits, contlen=None, inplen=None):
        # HFLM calls this once per batch row, in row order, before the results of that row's requests.
        self._recorder.next_row()
        return super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)

    # --- results ---------------------------------------------------------------------------------------

    def dash_annotate_results(self, results: dict | None, samples: dict | None = None) -> dict | None:
        """Add measured sparsity to lm-eval's results (called by the startup hook's ``evaluate``)."""
        if results is None:
            return None
        return self._recorder.annotate(results, attention=self.attention, doc_indices=samples)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["model_name_or_path"] = str(self.model_name_or_path)
        info["dash_attention"] = self.attention
        return info


def _register() -> None:
    # Importing this module imports lm_eval.models first (HFLM lives there), so lm-eval's own models are
    # registered already and adding a name cannot hide them. An entry point or the startup hook may have
    # registered "dash" before: leave theirs (it points here).
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=DashLM)


_register()
