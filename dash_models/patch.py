"""Switching a Hugging Face causal LM's attention to one of the registered methods.

The method and its parameters live in ``model.config.dash_attention`` (so a saved model remembers
them); the attention function is registered with transformers under the name ``dash_eval`` and reads
its per-model runtime (parameters, router of each layer, the sparsity tally) from the attention
modules. Importing this module patches nothing: ``apply_attention`` and ``patch_attention`` do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Iterator
from typing import Any

import torch
from dash_eval.dash_models.decode_cache import clear as clear_decode_cache
from dash_eval.dash_models.decode_cache import forward_with_cache, triton_cache_available
from dash_eval.dash_models.layer_scales import LAYER_SCALE_ATTR, model_layer_scales, set_layer_scales
from dash_eval.dash_models.tally import SparsityTally
from dash_eval.kernels import MethodParams, get_method, sparse_attention
from dash_eval.kernels.api import BACKENDS, row_spans
from dash_eval.kernels.common import LastResult
from dash_eval.kernels.stats import deferred_counts

ATTN_IMPLEMENTATION = "dash_eval"
CONFIG_KEY = "dash_attention"
ROUTER_BUFFER = "indexer_q"
# Architectures whose attention modules call transformers' attention interface with
# RoPE-rotated [B, H, N, D] keys and a plain causal mask.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


@dataclasses.dataclass
class AttentionRuntime:
    method: str
    params: MethodParams
    backend: str
    tally: SparsityTally


def check_supported(config: Any) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model architecture {model_type!r} is not supported by dash-eval's attention patch; "
            f"supported model_type values: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def _register_with_transformers() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_IMPLEMENTATION, dash_attention_forward)
    if ATTN_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention modules, in layer order (each has ``layer_idx``)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")]
    return sorted(mods, key=lambda m: m.layer_idx)


def _kv_valid(attention_mask: torch.Tensor | None, batch: int, nk: int, nq: int) -> tuple[torch.Tensor | None, int]:
    """``(kv_valid, used)``: the keys that some query may attend, from the 4-d mask transformers builds (None: no
    padding), over the first ``used`` keys. ``used < nk`` where the queries stop short of the keys' end, as in a
    static cache, whose slots past the current token hold no keys yet: the keys are then cut there, so that the
    queries are the last ``nq`` of them. Every layer of a forward pass gets the same mask: the host reads it once."""
    return (None, nk) if attention_mask is None else _kv_valid_of(attention_mask, batch, nk, nq)


def _valid_keys(mask: torch.Tensor, batch: int, nk: int, nq: int) -> tuple[torch.Tensor | None, int]:
    if mask.dim() != 4:
        raise ValueError(f"dash_eval attention expects a 4-d attention mask; got shape {tuple(mask.shape)}")
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    valid = allowed[:, 0, :, -nk:].any(dim=1)
    if valid.shape[0] != batch:
        valid = valid.expand(batch, -1)
    # the rows' key spans: one copy to the host, which sparse_attention then finds done for this very tensor
    try:
        spans = row_spans(valid)
    except ValueError as exc:  # the usual cause, in words the caller knows
        raise ValueError(f"attention_mask: {exc}. A right-padded batch that generate continues has its new tokens "
                         f"after the padding: pad on the left (tokenizer.padding_side = 'left')") from None
    used = nk
    stops = {stop for _, stop in spans}
    if nq < nk and len(stops) == 1 and nq <= min(stops) < nk:  # every row's keys end where its queries do
        used = stops.pop()
        valid = valid[:, :used]
    return (None if all(span == (0, used) for span in spans) else valid), used


_kv_valid_of = LastResult(_valid_keys)


def dash_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    runtime: AttentionRuntime | None = getattr(module, "_dash_runtime", None)
    if runtime is None:
        raise RuntimeError(
            "this model's attention is set to 'dash_eval' but was not prepared; call "
            "dash_eval.dash_models.apply_attention(model, method, ...) or load it with load_model()"
        )
    params = runtime.params
    router = getattr(module, ROUTER_BUFFER, None)
    if router is not None and "router" in params.field_names() and params.router is None:
        params = dataclasses.replace(params, router=router)
    multiplier = getattr(module, LAYER_SCALE_ATTR, None)
    if multiplier is not None and "scale" in params.field_names():
        params = dataclasses.replace(params, scale=params.scale * multiplier)
    if attention_mask is None and 1 < query.shape[2] < key.shape[2]:
        # no mask means sdpa's plain causal, whose queries are the first keys' positions: a static cache's prefill,
        # whose later slots hold no keys yet
        key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
    kv_valid, used = _kv_valid(attention_mask, query.shape[0], key.shape[2], query.shape[2])
    if used < key.shape[2]:
        key, value, attention_mask = key[:, :, :used], value[:, :, :used], attention_mask[..., :used]
    _check_sliding_window(runtime.method, kwargs.get("sliding_window"), kwargs.get("position_ids"), query, key,
                          kv_valid)
    with deferred_counts():  # the tally reads the counts later: no layer waits for the GPU
        out, stats = _attend(module, runtime, params, query, key, value, attention_mask, kv_valid, scaling, dropout)
    phase = "decode" if query.shape[2] == 1 and key.shape[2] > 1 else "prefill"
    runtime.tally.add(phase, stats, layer=module.layer_idx)
    return out, None


def _check_sliding_window(method: str, window: int | None, position_ids: torch.Tensor | None, query, key,
                          kv_valid) -> None:
    """Refuse a call that a sliding-window layer (Mistral's or Qwen's ``sliding_window``) needs windowed but that
    this patch would not window. The sparse methods attend the whole causal context; past the window, the keys they
    get are not that context either: the mask's window edge reads as left padding, and a generation's cache keeps
    only the last ``window`` keys (each shifts every block). ``full`` is exact on the model's own sdpa path (an
    unpadded prefill) and for one decode query (its valid keys are its window)."""
    if window is None:
        return
    nq, nk = query.shape[2], key.shape[2]
    # the longest real context of a query: its position + 1 (positions count real tokens; a trimmed cache holds fewer)
    reach = nk if position_ids is None else _last_position_of(position_ids) + 1
    if reach <= window:
        return
    if method == "full" and ((kv_valid is None and nq == nk) or nq == 1):
        return
    what = "a left-padded batch or a prefill continuing a cache" if method == "full" else "this method"
    raise ValueError(
        f"{method}: this layer uses sliding-window attention (the model config's sliding_window={window}) and the "
        f"sequence has {reach} tokens; dash-eval does not implement the window for {what}. Accepted: sequences of "
        f"at most {window} tokens, 'full' on unpadded rows, or a model config with sliding_window=None"
    )


_last_position_of = LastResult(lambda position_ids: int(position_ids[..., -1].max()))  # one host read a forward pass


def _attend(module, runtime: AttentionRuntime, params: MethodParams, query, key, value, attention_mask, kv_valid,
            scaling: float | None, dropout: float) -> tuple[torch.Tensor, Any]:
    """One layer's attention, ``[B, N, Hq, D]`` as transformers expects, and its stats."""
    method = get_method(runtime.method)
    if runtime.method == "full" and kv_valid is None and query.shape[2] == key.shape[2]:
        # The model's own sdpa path: "full" must reproduce the unpatched logits exactly.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, is_causal=True)
        from dash_eval.kernels.full import full_attention_stats

        stats = full_attention_stats(query.shape[0], key.shape[1], query.shape[2], key.shape[2],
                                     params.block_size, query.device)
    elif kv_valid is None and triton_cache_available(query, runtime.backend, runtime.method, params):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out, stats = forward_with_cache(module, runtime.method, query, key, value, params, scale)
        out = out.transpose(1, 2).contiguous()
    else:
        out, stats = sparse_attention(
            query, key, value, method.name, backend=runtime.backend, return_stats=True,
            softmax_scale=scaling, kv_valid=kv_valid, **_param_kwargs(params),
        )
        out = out.transpose(1, 2).contiguous()
    return out, stats


def _reorder_cache(model: torch.nn.Module, past_key_values: Any, beam_idx: torch.Tensor) -> Any:
    """What ``generate`` calls to reorder the KV cache between beam-search steps (it looks for this method on the
    model). The layers' decode caches (``decode_cache``) hold block summaries or kernel keys per batch row in the
    old order, and a step after the reorder still looks like a continuation to them: they are dropped, so the
    next step rebuilds them from the reordered keys."""
    for module in attention_modules(model):
        clear_decode_cache(module)
    past_key_values.reorder_cache(beam_idx)
    return past_key_values


def _param_kwargs(params: MethodParams) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


def get_tally(model: torch.nn.Module) -> SparsityTally:
    """The model's sparsity tally (created on first use)."""
    tally = getattr(model, "_dash_tally", None)
    if tally is None:
        tally = SparsityTally()
        model._dash_tally = tally
    return tally


def current_attention(model: torch.nn.Module) -> dict[str, Any] | None:
    """``{"method": ..., "params": {...}}`` as stored in the model's config, or None."""
    return getattr(model.config, CONFIG_KEY, None)


def apply_attention(
    model: torch.nn.Module,
    method: str = "full",
    *,
    router: str | torch.Tensor | dict[int, torch.Tensor] | None = None,
    layer_scales: str | dict[int, float] | None = None,
    backend: str = "auto",
    **params: Any,
) -> MethodParams:
    """Switch ``model``'s attention to ``method`` with ``params`` (validated before anything changes).

    ``router``: a directory or safetensors file of per-layer ``indexer_q`` vectors (see
    ``dash_eval.dash_models.router``), or a ``{layer: tensor}`` mapping; only ``dash`` uses it. ``None``
    keeps the routers the model has (a checkpoint's, or attached earlier); ``"none"`` drops them, so that
    ``dash`` pools block keys by their mean.

    ``layer_scales``: per-layer multipliers of ``dash``'s routing ``scale`` (``dash_models.layer_scales``),
    a JSON file or a ``{layer: multiplier}`` mapping; ``None`` keeps those set, ``"none"`` clears them.
    """
    from dash_eval.dash_models.layer_scales import resolve_layer_scales
    from dash_eval.dash_models.router import (
        NO_ROUTER,
        attach_routers,
        check_router_file,
        detach_routers,
        model_routers,
        warn_router_mismatch,
    )

    if not isinstance(model, torch.nn.Module) or getattr(model, "config", None) is None:
        raise ValueError(f"model: a {type(model).__name__}; accepted: a Hugging Face causal LM (a torch module with a "
                         f"config), e.g. from load_model or AutoModelForCausalLM.from_pretrained")
    check_supported(model.config)
    spec = get_method(method)
    parsed = spec.make_params(**params)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; accepted: {', '.join(BACKENDS)}")
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention modules with layer_idx and k_proj")
    routers = None
    drop_routers = isinstance(router, str) and router == NO_ROUTER
    if router is not None and not drop_routers:
        routers = check_router_file(router, len(modules), model.config) \
            if isinstance(router, (str, bytes)) or hasattr(router, "__fspath__") else router
        if isinstance(routers, torch.Tensor):
            raise ValueError("router must be a path or a {layer_index: tensor} mapping, not a single tensor")
    scales = resolve_layer_scales(layer_scales)
    _register_with_transformers()
    if scales is not None:
        set_layer_scales(model, scales)  # checks every layer index before changing anything
    if drop_routers:
        detach_routers(model)
    if routers is not None:
        attach_routers(model, routers)
        if method == "dash":
            warn_router_mismatch(router, model_routers(model), len(modules), parsed.block_size)
    runtime = AttentionRuntime(method=method, params=parsed, backend=backend, tally=get_tally(model))
    for module in modules:
        module._dash_runtime = runtime
        clear_decode_cache(module)
    setattr(model.config, CONFIG_KEY, {"method": method, "params": parsed.to_dict()})
    _set_implementation(model, ATTN_IMPLEMENTATION)
    model._reorder_cache = types.MethodType(_reorder_cache, model)
    return parsed


def _set_implementation(model: torch.nn.Module, name: str) -> None:
    configs = {id(model.config): model.config}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None:
            configs[id(cfg)] = cfg
    for cfg in configs.values():
        cfg._attn_implementation = name


def remove_attention(model: torch.nn.Module, implementation: str = "sdpa") -> None:
    """Undo ``apply_attention``: back to a transformers implementation, config key removed."""
    for module in attention_modules(model):
        module.__dict__.pop("_dash_runtime", None)
        clear_decode_cache(module)
    model.__dict__.pop("_reorder_cache", None)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    _set_implementation(model, implementation)


@contextlib.contextmanager
def patch_attention(model: torch.nn.Module, method: str = "full", **kwargs: Any) -> Iterator[torch.nn.Module]:
    """``apply_attention`` inside a ``with`` block; the previous attention (method, routers, layer scales) is
    restored in ``finally``."""
    from dash_eval.dash_models.router import model_routers, set_routers

    previous_impl = model.config._attn_implementation
    previous_cfg = current_attention(model)
    modules = attention_modules(model)
    previous_runtime = [m.__dict__.get("_dash_runtime") for m in modules]
    previous_scales = model_layer_scales(model)
    previous_routers = model_routers(model)
    previous_reorder = model.__dict__.get("_reorder_cache")
    apply_attention(model, method, **kwargs)
    try:
        yield model
    finally:
        set_layer_scales(model, previous_scales)
        set_routers(model, previous_routers)
        for module, runtime in zip(modules, previous_runtime):
            clear_decode_cache(module)  # built under this block's method
            if runtime is None:
                module.__dict__.pop("_dash_runtime", None)
            else:
                module._dash_runtime = runtime
        if previous_reorder is None:
            model.__dict__.pop("_reorder_cache", None)
        else:
            model._reorder_cache = previous_reorder
        if previous_cfg is None:
            if hasattr(model.config, CONFIG_KEY):
                delattr(model.config, CONFIG_KEY)
        else:
            setattr(model.config, CONFIG_KEY, previous_cfg)
        _set_implementation(model, previous_impl)
