"""Add the budget-profile layer scales to a router directory fitted before fit-router wrote them.

``dash-eval fit-router`` now records, in ``router.json``, per-layer multipliers of dash's ``scale`` that
keep mean pooling's routed fraction in every layer while routing with the fitted vectors
(``router_fit.profile_layer_scales``; used with ``layer_scales=<router dir>``). For an older router this
script recomputes them the same way: the recorded settings and calibration text, one full-attention pass,
the held-out queries. The router vectors are not touched.

    python scripts/router_layer_scales.py results/routers/smollm2-135m-b32 [--model default]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from dash_eval.dash_models import load_model
from dash_eval.dash_models import router_fit as rf
from dash_eval.dash_models.router import ROUTER_JSON, load_router_file
from dash_eval.dash_models.router_output import summarize
from dash_eval.evals.sweep_store import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("router", help="router directory written by dash-eval fit-router")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    path = Path(args.router) / ROUTER_JSON
    record = json.loads(path.read_text())
    settings = rf.FitSettings(**record["settings"])
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    ids, calib = rf.calibration_ids(tok, settings)
    if calib.get("ids_sha256") != record["calibration"].get("ids_sha256"):
        raise SystemExit(f"{args.router}: the calibration tokens differ from the fit's; not updating")
    cap = rf.capture(model, ids, settings)
    hkv, d = cap.keys.shape[2], cap.keys.shape[-1]
    routers = load_router_file(args.router)
    u = torch.stack([routers[layer].reshape(hkv, d) for layer in cap.layers])
    multipliers, recall_mean, recall_fit = rf.layer_profile(cap, u, settings)
    for i, row in enumerate(record["layers"]):
        row["recall_at_profile_before"] = float(recall_mean[i])
        row["recall_at_profile_after"] = float(recall_fit[i])
    record["summary"] = summarize(record["layers"])
    record["layer_scales"] = {str(layer): float(multipliers[i]) for i, layer in enumerate(cap.layers)}
    record["layer_scales_note"] = ("multipliers of dash's scale per layer that keep mean pooling's routed fraction "
                                   "in every layer (added by scripts/router_layer_scales.py)")
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    print(f"{args.router}: layer scales " + " ".join(f"{m:.2f}" for m in multipliers.tolist()))
    print(f"recall at mean pooling's allocation: mean pooling {recall_mean.mean():.3f}, fitted {recall_fit.mean():.3f} "
          f"(up in {int((recall_fit > recall_mean).sum())}/{len(cap.layers)} layers); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
