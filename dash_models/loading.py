"""Loading a causal LM with a sparse attention method: ``load_model``."""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from dash_eval.dash_models.embedded import resolve_model_path
from dash_eval.dash_models.layer_scales import check_layer_scales, resolve_layer_scales
from dash_eval.dash_models.patch import CONFIG_KEY, apply_attention, check_supported
from dash_eval.dash_models.router import (
    NO_ROUTER,
    attach_routers,
    check_router_file,
    check_routers,
    checkpoint_routers,
)
from dash_eval.kernels import get_method

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; accepted: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run a model here (``None`` when it can): it must be ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``, and present on this machine. The text follows the caller's naming of the field."""
    import re

    match = re.fullmatch(r"cpu|mps|cuda(?::(\d+))?", device)
    if match is None:
        return "accepted: cpu, cuda, cuda:N, mps"
    if device == "mps" and not torch.backends.mps.is_available():
        return "asked for but no MPS device is available here; accepted: cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "asked for but no CUDA device is available here; accepted: cpu"
        count = torch.cuda.device_count()
        if match.group(1) is not None and int(match.group(1)) >= count:
            return f"only {count} CUDA device(s) visible; accepted: cpu, cuda, cuda:0 .. cuda:{count - 1}"
    return None


# A Hugging Face hub id: ``name`` or ``org/name`` (letters, digits, '-', '_', '.'; one slash at most).
HUB_ID_PATTERN = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def looks_like_path(value: str) -> bool:
    """Whether a model name is written as a directory rather than a hub id: absolute, ``~``, ``.``, ``..``,
    starting with ``./`` or ``../``, or with path separators where a hub id (``name`` or ``org/name``, one
    slash) has none. ``org/name`` stays a hub id even when no such directory exists."""
    seps = tuple({os.sep, "/", *([os.altsep] if os.altsep else [])})
    if os.path.isabs(value) or value.startswith("~") or value in (".", ".."):
        return True
    if value.startswith(tuple(dots + sep for dots in (".", "..") for sep in seps)):
        return True
    return any(sep in value for sep in seps) and not HUB_ID_PATTERN.match(value)


def missing_model_dir(pretrained: str) -> str | None:
    """Why ``pretrained``, written as a local path (``looks_like_path``), names no model directory here (``no such
    directory '...'``, with the working directory for a relative path), or ``None``: a directory, ``default``, or
    a hub id such as ``org/name``, which the caller reads from the local cache."""
    text = str(pretrained)
    if os.path.isdir(text) or not looks_like_path(text):
        return None
    expanded = os.path.expanduser(text)
    if os.path.isdir(expanded):
        return None
    where = "" if os.path.isabs(expanded) else f" (relative paths start at {os.getcwd()})"
    what = "is a file, not a model directory" if os.path.exists(expanded) else "no such directory"
    return f"{what} {text!r}{where}"


def load_model(
    pretrained: str,
    *,
    method: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    router: str | None = None,
    layer_scales: str | dict[int, float] | None = None,
    backend: str = "auto",
    **params: Any,
):
    """Load a causal LM and its tokenizer with ``method`` (default: the one saved in its config, else
    ``full``). ``pretrained`` is a directory, a hub id already in the local cache, or ``default`` (the
    embedded SmolLM2-135M-Instruct). Everything is validated before the weights load.

    >>> model, tok = load_model("default", method="dash", scale=2.0)  # doctest: +SKIP
    """
    from dash_eval.kernels import BACKENDS
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    accepted = "accepted: a model directory, a hub id already in the local cache, or 'default' (offline)"
    if not isinstance(pretrained, (str, os.PathLike)) or not str(pretrained):
        raise ValueError(f"pretrained={pretrained!r}; {accepted}")
    torch_dtype = parse_dtype(dtype)
    if isinstance(torch_dtype, torch.dtype) and not torch_dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r}; accepted: {', '.join(DTYPES)} or a floating torch.dtype")
    if (problem := device_problem(str(device))) is not None:
        raise ValueError(f"device={device!r}: {problem}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; accepted: {', '.join(BACKENDS)}")
    path = resolve_model_path(str(pretrained))
    if (problem := missing_model_dir(path)) is not None:
        raise ValueError(f"pretrained: {problem}; {accepted}")
    path = os.path.expanduser(path)  # from_pretrained does not expand '~'
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ValueError(f"pretrained={str(pretrained)!r}: cannot read its config ({first}); {accepted}") from exc
    check_supported(config)
    if router is not None and not (isinstance(router, str) and router == NO_ROUTER):
        # read and checked against the model's layers and heads before any weight loads
        if isinstance(router, (str, os.PathLike)):  # apply_attention reads the path again
            check_router_file(router, config.num_hidden_layers, config)
        else:
            check_routers(router, config.num_hidden_layers, config)
    saved = getattr(config, CONFIG_KEY, None)
    if method is None:
        method = saved["method"] if saved else "full"
        if saved and not params:
            params = dict(saved.get("params", {}))
    get_method(method).make_params(**params)  # fail on bad parameters before loading any weight
    scales = resolve_layer_scales(layer_scales)  # and on an unreadable layer_scales file
    if scales:
        check_layer_scales(scales, config.num_hidden_layers)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    carried = checkpoint_routers(path)
    if carried:
        attach_routers(model, carried)
    apply_attention(model, method, router=router, layer_scales=scales, backend=backend, **params)
    return model, tokenizer
