"""Per-layer routing scales for ``dash``: a multiplier of the method's ``scale`` in each layer.

DashAttention has one routing ``scale`` (METHODS.md stage 2, the sparsity knob). Layers differ in how
flat their block scores are, so one scale routes very different fractions of blocks in different layers;
on the embedded model a fitted router routes 35-49% of the blocks in shallow layers and 3-13% in the
deep retrieval layers at the scale that routes 25% on average. A per-layer multiplier ``m_l`` (the layer
routes with ``scale * m_l``) lets a sweep give every layer the same routed budget, as top-k methods have
by construction (``calibrate_per_layer`` in a sweep config). This is a named option on top of
METHODS.md: with no multipliers set, ``dash`` is exactly the method as written there.

A router directory written by ``dash-eval fit-router`` carries one such set: the multipliers that keep
mean pooling's routed fraction in every layer while routing with the fitted vectors
(``layer_scales=<router dir>``; never applied by ``router=<dir>`` alone).

The multipliers live on the attention modules (``_dash_layer_scale``) and travel as JSON, either a
sweep's calibration record or any file with ``{"layer_scales": {"<layer>": <multiplier>, ...}}``:

>>> from dash_eval.dash_models import load_model
>>> model, tok = load_model("default", method="dash", scale=0.7, layer_scales="cal.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

LAYER_SCALE_ATTR = "_dash_layer_scale"
NO_LAYER_SCALES = "none"  # layer_scales="none": every layer routes with the method's own scale
JSON_KEY = "layer_scales"


def _checked(scales: dict[Any, Any], where: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in scales.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: layer key {key!r} is not an integer; accepted: layer indices") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{where}: layer {layer} has multiplier {value!r}; accepted: a finite number > 0")
        out[layer] = float(value)
    return out


def load_layer_scales(path: str | os.PathLike) -> dict[int, float]:
    """``{layer: multiplier}`` from a JSON file holding ``{"layer_scales": {"<layer>": m, ...}}``, or from a
    router directory (its ``router.json``: the multipliers that give a fitted router mean pooling's budget
    in every layer, ``router_fit.profile_layer_scales``)."""
    p = Path(path)
    accepted = (f'accepted: a JSON file holding {{"{JSON_KEY}": ...}}, or a router directory written by '
                "dash-eval fit-router")
    if p.is_dir():
        from dash_eval.dash_models.router import ROUTER_JSON

        p = p / ROUTER_JSON
        if not p.is_file():
            raise ValueError(f"layer_scales={str(path)!r}: a directory without {ROUTER_JSON}; {accepted}")
    if not p.is_file():
        raise ValueError(f"layer_scales={str(path)!r}: no such file; {accepted}")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"layer_scales={str(path)!r}: not a readable JSON file ({exc}); {accepted}") from None
    scales = data.get(JSON_KEY) if isinstance(data, dict) else None
    if not isinstance(scales, dict) or not scales:
        raise ValueError(f"layer_scales={str(path)!r}: no {JSON_KEY!r} object in it; accepted: "
                         f'{{"{JSON_KEY}": {{"<layer>": <multiplier>, ...}}}}')
    return _checked(scales, f"layer_scales={str(path)!r}")


def resolve_layer_scales(value: Any) -> dict[int, float] | None:
    """``None`` (keep), ``"none"`` (clear: ``{}``), a JSON path, or a ``{layer: multiplier}`` mapping."""
    if value is None:
        return None
    if isinstance(value, str) and value == NO_LAYER_SCALES:
        return {}
    if isinstance(value, (str, os.PathLike)):
        return load_layer_scales(value)
    if isinstance(value, dict):
        return _checked(value, "layer_scales")
    raise ValueError(f"layer_scales={value!r}; accepted: a JSON file, a {{layer: multiplier}} mapping or 'none'")


def check_layer_scales(scales: dict[int, float], n_layers: int) -> None:
    """Every layer of ``scales`` exists in a model of ``n_layers`` layers."""
    unknown = sorted(set(scales) - set(range(n_layers)))
    if unknown:
        raise ValueError(f"layer_scales has layers {unknown} that the model lacks (model layers: 0..{n_layers - 1})")


def set_layer_scales(model: torch.nn.Module, scales: dict[int, float]) -> None:
    """Make ``scales`` exactly the model's per-layer multipliers (layers not in it route with ``scale``);
    every layer index is checked before anything changes."""
    from dash_eval.dash_models.patch import attention_modules

    modules = {m.layer_idx: m for m in attention_modules(model)}
    check_layer_scales(scales, len(modules))
    for layer, module in modules.items():
        if layer in scales:
            setattr(module, LAYER_SCALE_ATTR, float(scales[layer]))
        else:
            module.__dict__.pop(LAYER_SCALE_ATTR, None)


def model_layer_scales(model: torch.nn.Module) -> dict[int, float]:
    """The multipliers currently set, by layer (empty: every layer routes with the method's ``scale``)."""
    from dash_eval.dash_models.patch import attention_modules

    return {m.layer_idx: getattr(m, LAYER_SCALE_ATTR) for m in attention_modules(model)
            if hasattr(m, LAYER_SCALE_ATTR)}


def layer_scales_json(scales: dict[int, float]) -> dict[str, float]:
    """The JSON form (string keys, layer order) that ``load_layer_scales`` reads back."""
    return {str(layer): float(scales[layer]) for layer in sorted(scales)}
