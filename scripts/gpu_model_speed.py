# ruff: noqa: I001  (the path setup must run before the package imports)
"""End-to-end speed of a patched model: prefill and one cached decode step of a randomly initialised Llama of a
given shape, unpatched (transformers' own sdpa attention) and with each method patched in, on one GPU.

The kernel benchmark (``dash-eval bench``) times attention alone; this asks what a user sees in a whole model,
where the projections and the MLP run at dense speed whatever the attention does. The weights are random, so a
method's selection follows random queries and keys (as ``bench``'s inputs do), not a trained model's; ``dash`` is
calibrated to the wanted sparsity at each length by its ``scale`` (bisection on the measured sparsity of a
prefill; a row whose sparsity misses the target by more than 0.02 says so). Only the last position's logits are
computed (``logits_to_keep=1``), as in generation. Each row is written to the CSV as soon as it is measured.

    python scripts/gpu_model_speed.py                                  # Llama-3-8B's shape, 4 layers, 8k and 32k
    python scripts/gpu_model_speed.py --shape glm4-9b --tokens 32768   # 2 KV heads (groups of 16)
    python scripts/gpu_model_speed.py --shape smollm2-135m --layers 30 --tokens 2048,8192
    python scripts/gpu_model_speed.py --shape path/to/config.json      # a Llama-like config.json of your own
    python scripts/gpu_model_speed.py --tiny --cpu                     # a smoke run on the CPU (Triton interpreter)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

# Llama-architecture shapes (the fields of a Hugging Face config.json that size the model)
SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, vocab_size=128256, rope_theta=500000.0),
    # GLM-4-9B's sizes (32 query heads over 2 KV heads: groups of 16, where the sparse kernels are fastest) in
    # Llama's architecture
    "glm4-9b": dict(hidden_size=4096, intermediate_size=13696, num_attention_heads=32, num_key_value_heads=2,
                    head_dim=128, vocab_size=151552, rope_theta=10000.0),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 vocab_size=512),
}
# a config.json must name these (a non-Llama config names them otherwise: GLM's `multi_query_group_num`, ...)
REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size")
OPTIONAL_FIELDS = ("head_dim", "rope_theta", "tie_word_embeddings", "rms_norm_eps")
# each method's parameters besides dash's calibrated scale: the defaults of METHODS.md
METHODS = {"plain": None, "full": {}, "dash": {}, "nsa": {}, "infllmv2": {}}
TINY_PARAMS = {"dash": {"block_size": 16}, "nsa": {"block_size": 16, "kernel_size": 8, "kernel_stride": 4,
                                                    "window": 16, "topk": 2, "local_blocks": 1},
               "infllmv2": {"block_size": 16, "kernel_size": 8, "kernel_stride": 4, "topk": 2, "local_blocks": 1}}
PLAIN_BACKENDS = ("default", "flash", "efficient", "cudnn", "math")
MISS = 0.02  # a calibrated dash row whose sparsity is further than this from the target is flagged


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _method_list(text: str) -> list[str]:
    methods = text.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; accepted: {', '.join(METHODS)}")
    return methods


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text!r}")
    return value


def _positive(text: str) -> int:
    value = _int_list(text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return value[0]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default=None,
                   help=f"one of {', '.join(SHAPES)}, or a Llama-like config.json (default: llama3-8b; tiny with "
                        "--tiny)")
    p.add_argument("--layers", type=_positive, default=None,
                   help="decoder layers kept (default 4; 2 with --tiny): attention's share of a layer does not "
                        "depend on how many there are")
    p.add_argument("--tokens", type=_int_list, default=None,
                   help="prompt lengths, comma-separated (default 8192,32768)")
    p.add_argument("--methods", type=_method_list, default=list(METHODS),
                   help="comma-separated, from plain,full,dash,nsa,infllmv2 (ratios are to plain, measured first)")
    p.add_argument("--dash-sparsity", type=_fraction, default=0.75, help="dash's calibration target (default 0.75)")
    p.add_argument("--repeats", type=_positive, default=None, help="timed prefills and decode steps (default 5)")
    p.add_argument("--plain-backend", choices=PLAIN_BACKENDS, default="default",
                   help="the SDPA backend of the unpatched runs; default lets PyTorch choose, as a user's model would")
    p.add_argument("--out", default="", help="CSV file, one row per method and length, written as measured")
    p.add_argument("--tiny", action="store_true", help="a tiny model and short prompts, for a smoke run")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (Triton interpreter), for a smoke run")
    args = p.parse_args(argv)
    args.shape = args.shape or ("tiny" if args.tiny else "llama3-8b")
    args.layers = args.layers or (2 if args.tiny else 4)
    args.tokens = args.tokens or ([96] if args.tiny else [8192, 32768])
    args.repeats = args.repeats or (1 if args.tiny else 5)
    if "plain" in args.methods:  # measured first: the other rows' ratios need it
        args.methods = ["plain"] + [m for m in args.methods if m != "plain"]
    if args.shape not in SHAPES and not Path(args.shape).is_file():
        p.error(f"--shape: {args.shape!r} is neither a config.json file nor one of {', '.join(SHAPES)}")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        p.error(f"--out: the folder of {args.out!r} does not exist")
    return args


def config_fields(shape: str) -> dict:
    if shape in SHAPES:
        return dict(SHAPES[shape])
    try:
        raw = json.loads(Path(shape).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--shape: cannot read {shape!r} as JSON ({exc})") from None
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise SystemExit(f"--shape: {shape!r} has no {', '.join(missing)} (a Llama-like config.json names "
                         f"{', '.join(REQUIRED_FIELDS)})")
    return {k: raw[k] for k in REQUIRED_FIELDS + OPTIONAL_FIELDS if k in raw}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    fields = config_fields(args.shape)
    if args.cpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import dash_eval

    dash_eval.__path__.append(str(root))
    import torch
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import LlamaConfig, LlamaForCausalLM

    import dash_eval.kernels.triton_backend  # noqa: F401  (registers the Triton backend)
    from dash_eval.dash_models import apply_attention, get_tally
    from dash_eval.dash_models.patch import remove_attention

    warnings.filterwarnings("ignore", category=FutureWarning)
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}.get(args.plain_backend)
    repeats, target = args.repeats, args.dash_sparsity

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cfg = LlamaConfig(num_hidden_layers=args.layers, max_position_embeddings=max(args.tokens) + 64, **fields)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype).eval()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (interpreter)"
    print(f"# {name}, torch {torch.__version__}, Triton {triton.__version__}; random Llama of shape {args.shape} "
          f"({cfg.num_attention_heads} / {cfg.num_key_value_heads} heads, head dim {cfg.head_dim}, {args.layers} "
          f"layers), {str(dtype).removeprefix('torch.')}, medians of {repeats}", flush=True)

    def prefill(ids):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(ids, use_cache=True, logits_to_keep=1)
        sync()
        return (time.perf_counter() - t0) * 1e3, out

    def measured_sparsity(ids) -> float:
        get_tally(model).reset()
        with torch.no_grad():
            model(ids, logits_to_keep=1)
        return get_tally(model).summary("prefill")["sparsity"]

    def patch_dash_and_measure(ids, params, scale) -> float:
        apply_attention(model, "dash", backend="auto", **params, scale=scale)
        return measured_sparsity(ids)

    def calibrate(ids, params) -> tuple[float, float]:
        """dash's scale for ``target`` sparsity (bisection on log2 of the scale; sparsity grows with it)."""
        lo, hi = -4.0, 16.0
        best = (1.0, patch_dash_and_measure(ids, params, 1.0))
        for _ in range(9):
            mid = (lo + hi) / 2
            s = patch_dash_and_measure(ids, params, 2.0**mid)
            if abs(s - target) < abs(best[1] - target):
                best = (2.0**mid, s)
            lo, hi = (mid, hi) if s < target else (lo, mid)
        return best

    def timed(ids) -> tuple[float, float]:
        """Median ms of a prefill and of a cached decode step after it (the first ones warm the kernels)."""
        prefill(ids)
        times, out = [], None
        for _ in range(repeats):
            ms, out = prefill(ids)
            times.append(ms)
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        steps = []
        with torch.no_grad():
            for i in range(2 * repeats + 2):
                sync()
                t0 = time.perf_counter()
                tok = model(tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
                sync()
                if i >= repeats + 2 or args.tiny:
                    steps.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), statistics.median(steps)

    fieldnames = ["method", "tokens", "params", "sparsity", "note", "prefill_ms", "prefill_x_plain", "decode_ms",
                  "decode_x_plain", "shape", "layers", "device"]
    out_file = open(args.out, "w", newline="") if args.out else None  # noqa: SIM115  (rows are written as measured)
    writer = csv.DictWriter(out_file, fieldnames=fieldnames) if out_file else None
    if writer:
        writer.writeheader()
    print("| method | tokens | parameters | sparsity | prefill ms | x plain | decode step ms | x plain |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    try:
        for n in args.tokens:
            ids = torch.randint(1, cfg.vocab_size, (1, n), device=device)
            plain = {}
            for method in args.methods:
                params = METHODS[method]
                note = ""
                if params is None:
                    remove_attention(model)
                else:
                    params = dict(params, **(TINY_PARAMS.get(method, {}) if args.tiny else {}))
                    if method == "dash":
                        scale, reached = calibrate(ids, params)
                        params["scale"] = float(f"{scale:.4g}")
                        if abs(reached - target) > MISS:
                            note = f"calibration missed: sparsity {reached:.3f} for a target of {target}"
                            print(f"  dash at {n} tokens: {note}", flush=True)
                    apply_attention(model, method, backend="auto", **params)
                sparsity = measured_sparsity(ids) if params is not None else 0.0
                pinned = params is None and backend is not None
                with sdpa_kernel([backend]) if pinned else contextlib.nullcontext():
                    pre, dec = timed(ids)
                if method == "plain":
                    plain = {"prefill": pre, "decode": dec}
                shown = (f"sdpa ({args.plain_backend}), not patched" if params is None
                         else ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults")
                ratio_p = plain["prefill"] / pre if plain else math.nan
                ratio_d = plain["decode"] / dec if plain else math.nan
                print(f"| {method} | {n} | {shown} | {sparsity:.3f} | {pre:.2f} | {ratio_p:.2f} | {dec:.2f} | "
                      f"{ratio_d:.2f} |", flush=True)
                if writer:
                    writer.writerow({
                        "method": method, "tokens": n, "params": shown, "sparsity": round(sparsity, 4), "note": note,
                        "prefill_ms": round(pre, 3), "prefill_x_plain": round(ratio_p, 3), "decode_ms": round(dec, 3),
                        "decode_x_plain": round(ratio_d, 3), "shape": args.shape, "layers": args.layers,
                        "device": name,
                    })
                    out_file.flush()
    finally:
        if out_file:
            out_file.close()
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
