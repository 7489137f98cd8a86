"""``dash-eval fit-router``: fit DashAttention routers (``indexer_q``) on a frozen dense model.

Writes ``router.safetensors`` (per layer ``model.layers.<i>.self_attn.indexer_q``, ``[Hkv * D]``),
``router.json`` (settings, calibration text, per-layer loss and recall before and after, loss curve) and
``loss_curve.png`` into ``--output``; ``router=DIR`` then loads them in ``load_model``, ``model_args`` and
sweep configs. Exit status 2 when the arguments are rejected (before any weight loads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dash_eval.dash_models.router import ROUTER_JSON
from dash_eval.dash_models.router_fit import CALIBRATION_SOURCES, FIT_TARGETS, FitSettings
from dash_eval.dash_models.router_output import check_output

_DEFAULTS = FitSettings()


def configure(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.add_argument("--model", required=True, help="'default' (the embedded SmolLM2-135M-Instruct), a model "
                        "directory or a hub id in the local cache")
    parser.add_argument("--output", required=True, help="router directory to write")
    parser.add_argument("--tokens", type=int, default=d.tokens, help=f"tokens per calibration sequence ({d.tokens})")
    parser.add_argument("--sequences", type=int, default=d.sequences,
                        help=f"calibration sequences, disjoint windows of the text ({d.sequences})")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"Adam steps ({d.steps})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate ({d.lr})")
    parser.add_argument("--queries", type=int, default=d.queries,
                        help=f"fitted query positions per sequence ({d.queries})")
    parser.add_argument("--holdout-queries", type=int, default=d.holdout_queries,
                        help=f"held-out query positions per sequence, for the reported figures ({d.holdout_queries})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"query positions per Adam step ({d.batch})")
    parser.add_argument("--block-size", type=int, default=d.block_size, help=f"block size C ({d.block_size})")
    parser.add_argument("--alpha", type=float, default=d.alpha, help=f"entmax alpha in (1, 2] ({d.alpha})")
    parser.add_argument("--scale", type=float, default=d.scale, help=f"routing scale s of the fit ({d.scale})")
    parser.add_argument("--init-blocks", type=int, default=d.init_blocks,
                        help=f"forced first blocks, left out of the target ({d.init_blocks})")
    parser.add_argument("--local-blocks", type=int, default=d.local_blocks,
                        help=f"forced local blocks counting the current one, left out of the target ({d.local_blocks})")
    parser.add_argument("--budget", type=float, default=d.budget,
                        help=f"routed fraction at which recall is also reported ({d.budget})")
    parser.add_argument("--fit-scale", action=argparse.BooleanOptionalAction, default=d.fit_scale,
                        help="also fit a per-head routing scale (recorded in router.json; the dash method uses "
                        f"only its global scale) ({'on' if d.fit_scale else 'off'})")
    parser.add_argument("--target", choices=sorted(FIT_TARGETS), default=d.target,
                        help="what each query head's block distribution is fitted to: 'group', the group's mean "
                        f"full-attention block mass, or 'head', the head's own ({d.target})")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help=f"calibration windows, query sample, batches ({d.seed})")
    parser.add_argument("--text", default=d.source, metavar="SOURCE",
                        help=f"calibration text: {', '.join(CALIBRATION_SOURCES)} or a UTF-8 file ({d.source}); "
                        "keep it apart from evaluation data")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps; checked before the model loads (cpu)")
    parser.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16 (float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a router already in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> FitSettings:
    return FitSettings(
        tokens=args.tokens, sequences=args.sequences, queries=args.queries, holdout_queries=args.holdout_queries,
        steps=args.steps, batch=args.batch, lr=args.lr, block_size=args.block_size, alpha=args.alpha,
        scale=args.scale, init_blocks=args.init_blocks, local_blocks=args.local_blocks, fit_scale=args.fit_scale,
        budget=args.budget, seed=args.seed, source=args.text, target=args.target,
    )


def _check_args(args: argparse.Namespace) -> FitSettings:
    from dash_eval.dash_models.loading import parse_dtype
    from dash_eval.dash_models.router import ROUTER_FILENAME

    from dash_eval.file_modes import directory_write_problem

    settings = settings_from_args(args)
    parse_dtype(args.dtype)
    if not args.output.strip():
        raise ValueError("--output is empty; accepted: a router directory to write")
    check_output(args.output)
    if (problem := directory_write_problem(args.output)) is not None:  # before the fit, not after it
        raise ValueError(f"--output {args.output!r}: {problem}; accepted: a directory that can be written")
    out = Path(args.output)
    if not args.overwrite and ((out / ROUTER_FILENAME).exists() or (out / ROUTER_JSON).exists()):
        raise ValueError(f"--output {args.output!r} already holds a router; accepted: another directory or --overwrite")
    from dash_eval.dash_models.loading import device_problem

    if (problem := device_problem(args.device)) is not None:
        raise ValueError(f"--device {args.device!r}: {problem}")
    return settings


def _say(exc: Exception, prefix: str = "") -> None:
    """``dash-eval fit-router: <message>`` on stderr (the library's own ``fit-router:`` prefix dropped)."""
    print(f"dash-eval fit-router: {prefix}{str(exc).removeprefix('fit-router: ')}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import time

    try:
        settings = _check_args(args)
    except ValueError as exc:
        _say(exc)
        return 2

    from dash_eval.dash_models.loading import load_model
    from dash_eval.dash_models.router_fit import fit_router
    from dash_eval.dash_models.router_output import LOSS_PNG, summary_table

    from dash_eval.interrupts import interrupted_status, sigterm_raises

    t0 = time.perf_counter()
    with sigterm_raises():
        try:
            model, tokenizer = load_model(args.model, method="full", dtype=args.dtype, device=args.device)
        except (ValueError, OSError) as exc:
            _say(exc, f"--model {args.model!r}: ")
            return 2
        except KeyboardInterrupt as exc:
            _say(ValueError("interrupted while loading the model; nothing was written"))
            return interrupted_status(exc)
        load_s = time.perf_counter() - t0
        try:
            result = fit_router(model, tokenizer, settings, args.output, progress=not args.no_progress,
                                model_name=args.model)
        except ValueError as exc:
            _say(exc)
            return 2
        except KeyboardInterrupt as exc:  # the router is written last, whole: nothing half-written is left
            _say(ValueError(f"interrupted; no new router in {args.output!r} (a write cut short is refused when "
                            "loaded); run the same command again to fit"))
            return interrupted_status(exc)
    print(summary_table(result.layers))
    t = result.timing
    print(f"model load {load_s:.1f} s, calibration text {t['tokenize_s']:.1f} s, full-attention pass "
          f"{t['capture_s']:.1f} s, fit {t['fit_s']:.1f} s (total {t['total_s'] + load_s:.1f} s)")
    out = Path(args.output)
    print(f"wrote {out / 'router.safetensors'}, {out / ROUTER_JSON}, {out / LOSS_PNG}")
    print(usage_hint(args.model, out, settings))
    return 0


def usage_hint(model: str, out: Path, settings: FitSettings) -> str:
    """How to route with the new router, with the fit's block geometry and alpha where they differ from the
    ``dash`` method's defaults: a router used at another block size than it was fitted at is warned about, and
    the forced blocks decide which blocks it was fitted to rank."""
    import dataclasses

    from dash_eval.kernels.dash import DashParams

    defaults = {f.name: f.default for f in dataclasses.fields(DashParams)}
    fitted = {"alpha": settings.alpha, "block_size": settings.block_size, "init_blocks": settings.init_blocks,
              "local_blocks": settings.local_blocks}
    params = {k: v for k, v in fitted.items() if v != defaults[k]}
    call = "".join(f", {k}={v!r}" for k, v in params.items())
    args = "".join(f",{k}={v}" for k, v in params.items())
    return (f"use it with: load_model({model!r}, method='dash'{call}, router={str(out)!r}) "
            f"or model_args method=dash{args},router={out}")
