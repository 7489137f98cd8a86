"""Writing a fitted router: ``router.safetensors`` (the authors' ``indexer_q`` layout), ``router.json``
(settings, model, calibration text, per-layer figures) and ``loss_curve.png``, plus the per-layer summary
table that ``dash-eval fit-router`` prints."""

from __future__ import annotations

import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from dash_eval.dash_models.router import ROUTER_JSON, TENSORS_DIGEST, file_sha256
from dash_eval.dash_models.router_fit import FIT_TARGETS, FitResult, check_model

from dash_eval.file_modes import atomic_write_bytes, set_default_mode

LOSS_PNG = "loss_curve.png"
ROUTER_KEY = "model.layers.{layer}.self_attn.indexer_q"


def check_output(output: str | os.PathLike) -> None:
    p = Path(output)
    if p.exists() and not p.is_dir():
        raise ValueError(f"fit-router: output={str(output)!r} exists and is not a directory; accepted: a directory")


def model_description(model: torch.nn.Module, model_name: str | None = None) -> dict[str, Any]:
    _, hq, hkv, d = check_model(model)
    cfg = model.config
    return {
        "name": model_name or getattr(cfg, "_name_or_path", ""),
        "model_type": cfg.model_type,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": hq,
        "num_key_value_heads": hkv,
        "head_dim": d,
    }


def save_router(result: FitResult, output: str | os.PathLike, model: torch.nn.Module, *,
                calibration: dict[str, Any], model_name: str | None = None) -> Path:
    """Write ``router.safetensors`` (``model.layers.<i>.self_attn.indexer_q``, ``[Hkv * D]`` float32),
    ``router.json`` and ``loss_curve.png`` into ``output``; each file is written whole or not at all."""
    from dash_eval.dash_models.router import ROUTER_FILENAME
    from safetensors.torch import save_file

    from dash_eval import __version__

    check_output(output)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {ROUTER_KEY.format(layer=layer): t.float().contiguous() for layer, t in sorted(result.routers.items())}
    tmp = out / f".{ROUTER_FILENAME}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "producer": f"dash-eval {__version__} fit-router"})
    set_default_mode(tmp)  # safetensors creates it 0600; routers are shared like results
    os.replace(tmp, out / ROUTER_FILENAME)
    record = {
        "format": "dash-eval router",
        "producer": f"dash-eval {__version__} fit-router",
        # the tensors this record describes: a load refuses a pair that a write cut short left mismatched
        TENSORS_DIGEST: file_sha256(out / ROUTER_FILENAME),
        "model": model_description(model, model_name),
        "settings": result.settings.to_dict(),
        "loss": f"alpha-entmax Fenchel-Young loss of each query head's block distribution against "
                f"{FIT_TARGETS[result.settings.target]} on the routable candidates, weighted by that mass's share",
        "calibration": calibration,
        "layers": result.layers,
        "summary": summarize(result.layers),
        "routing_scale": None if result.routing_scales is None else {
            "note": "fitted per KV head with fit_scale; the dash method applies only its global scale",
            "values": {str(k): v.tolist() for k, v in sorted(result.routing_scales.items())},
        },
        # read by layer_scales=<this directory> (dash_models.layer_scales); router=<dir> alone never applies it
        "layer_scales": {str(k): v for k, v in sorted(result.layer_scales.items())} or None,
        "layer_scales_note": "multipliers of dash's scale per layer that keep mean pooling's routed fraction in "
                             "every layer (at the global scale routing 'budget' of the blocks with mean pooling); "
                             "recall_at_profile_before/after compare the two routers at that allocation",
        "loss_curve": result.loss_curve,
        "timing": result.timing,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    atomic_write_bytes(out / ROUTER_JSON, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    plot_loss_curve(result.loss_curve, out / LOSS_PNG)
    return out


def summarize(layers: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k[: -len("_before")] for k in layers[0] if k.endswith("_before")]
    out: dict[str, float] = {}
    for key in keys:
        for when in ("before", "after"):
            out[f"{key}_{when}"] = sum(r[f"{key}_{when}"] for r in layers) / len(layers)
    out["layers_recall_up"] = sum(r["recall_after"] > r["recall_before"] for r in layers)
    out["layers_recall_at_budget_up"] = sum(r["recall_at_budget_after"] > r["recall_at_budget_before"] for r in layers)
    out["layers"] = len(layers)
    return out


def plot_loss_curve(curve: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(curve)), curve, lw=1.8)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("Fenchel-Young loss (mean over layers)")
    ax.set_title("router fit")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def summary_table(layers: list[dict[str, Any]]) -> str:
    """A plain-text table of the per-layer figures, before -> after."""
    profile = "recall_at_profile_before" in layers[0]
    head = (f"{'layer':>5}  {'loss':>17}  {'recall':>15}  {'routed blocks':>15}  {'recall@budget':>15}"
            + (f"  {'recall@profile':>15}" if profile else ""))
    lines = [head, "-" * len(head)]

    def pair(r, key, fmt):
        return f"{format(r[key + '_before'], fmt)} -> {format(r[key + '_after'], fmt)}"

    for r in layers:
        lines.append(f"{r['layer']:>5}  {pair(r, 'loss', '7.4f'):>17}  {pair(r, 'recall', '.3f'):>15}  "
                     f"{pair(r, 'routed_fraction', '.3f'):>15}  {pair(r, 'recall_at_budget', '.3f'):>15}"
                     + (f"  {pair(r, 'recall_at_profile', '.3f'):>15}" if profile else ""))
    s = summarize(layers)
    lines.append("-" * len(head))
    lines.append(f"{'mean':>5}  {s['loss_before']:7.4f} -> {s['loss_after']:7.4f}  "
                 f"{s['recall_before']:.3f} -> {s['recall_after']:.3f}  "
                 f"{s['routed_fraction_before']:.3f} -> {s['routed_fraction_after']:.3f}  "
                 f"{s['recall_at_budget_before']:.3f} -> {s['recall_at_budget_after']:.3f}"
                 + (f"  {s['recall_at_profile_before']:.3f} -> {s['recall_at_profile_after']:.3f}" if profile else ""))
    lines.append(f"recall rose in {s['layers_recall_up']}/{s['layers']} layers; recall@budget rose in "
                 f"{s['layers_recall_at_budget_up']}/{s['layers']}"
                 + ("; recall@profile: both routers at mean pooling's routed fraction in each layer "
                    "(the fitted one with router.json's layer_scales)" if profile else ""))
    return "\n".join(lines)
