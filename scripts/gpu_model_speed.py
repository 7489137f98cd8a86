# ruff: noqa: I001  (the path setup must run before the package imports)
"""End-to-end speed of a patched model: prefill and one cached decode step of a randomly initialised Llama of a
given shape, unpatched (transformers' own sdpa attention) and with each method patched in, on one GPU.

The kernel benchmark (``dash-eval bench``) times attention alone; this asks what a user sees in a whole model,
where the projections and the MLP run at dense speed whatever the attention does. The weights are random, so a
method's selection follows random queries and keys (as ``bench``'s inputs do), not a trained model's; ``dash`` is
calibrated to the wanted sparsity at each length by its ``scale`` (bisection on the measured sparsity of a
prefill). Only the last position's logits are computed (``logits_to_keep=1``), as in generation.

    python scripts/gpu_model_speed.py                                  # Llama-3-8B's shape, 4 layers, 8k and 32k
    python scripts/gpu_model_speed.py --shape glm4-9b --tokens 32768       # 2 KV heads (groups of 16)
    python scripts/gpu_model_speed.py --shape smollm2-135m --layers 30 --tokens 2048,8192
    python scripts/gpu_model_speed.py --shape path/to/config.json      # any Llama-like config of your own
    python scripts/gpu_model_speed.py --tiny --cpu                     # a smoke run on the CPU (Triton interpreter)

Options: ``--layers N`` (decoder layers kept; attention's share of a layer does not depend on how many there
are), ``--tokens a,b``, ``--methods plain,full,dash,nsa,infllmv2``, ``--dash-sparsity 0.75``, ``--repeats 5``,
``--plain-backend default|flash|efficient|cudnn|math`` (the SDPA backend of the unpatched runs; ``default`` lets
PyTorch choose, as a user's model would), ``--out file.csv``.
"""

from __future__ import annotations

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

TINY = "--tiny" in sys.argv
if "--cpu" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root))
import dash_eval  # noqa: E402

dash_eval.__path__.append(str(root))

import torch  # noqa: E402

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
# each method's parameters besides dash's calibrated scale: the defaults of METHODS.md
METHODS = {"plain": None, "full": {}, "dash": {}, "nsa": {}, "infllmv2": {}}
TINY_PARAMS = {"dash": {"block_size": 16}, "nsa": {"block_size": 16, "kernel_size": 8, "kernel_stride": 4,
                                                    "window": 16, "topk": 2, "local_blocks": 1},
               "infllmv2": {"block_size": 16, "kernel_size": 8, "kernel_stride": 4, "topk": 2, "local_blocks": 1}}


def option(name: str, default: str) -> str:
    if name in sys.argv:
        i = sys.argv.index(name)
        if i + 1 >= len(sys.argv):
            raise SystemExit(f"{name} needs a value")
        return sys.argv[i + 1]
    return default


def llama_config(shape: str, layers: int, positions: int):
    from transformers import LlamaConfig

    if shape in SHAPES:
        fields = dict(SHAPES[shape])
    elif Path(shape).is_file():
        fields = {k: v for k, v in json.loads(Path(shape).read_text()).items()
                  if k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                           "vocab_size", "rope_theta", "tie_word_embeddings", "rms_norm_eps")}
    else:
        raise SystemExit(f"--shape: {shape!r} is neither a config.json file nor one of {sorted(SHAPES)}")
    return LlamaConfig(num_hidden_layers=layers, max_position_embeddings=positions, **fields)


def main() -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    import triton
    from transformers import LlamaForCausalLM

    import dash_eval.kernels.triton_backend  # noqa: F401  (registers the Triton backend)
    from dash_eval.dash_models import apply_attention, get_tally
    from dash_eval.dash_models.patch import remove_attention

    device = torch.device("cpu" if "--cpu" in sys.argv else "cuda")
    shape = option("--shape", "tiny" if TINY else "llama3-8b")
    layers = int(option("--layers", "2" if TINY else "4"))
    tokens = [int(t) for t in option("--tokens", "96" if TINY else "8192,32768").split(",")]
    methods = option("--methods", ",".join(METHODS)).split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; accepted: {', '.join(METHODS)}")
    target = float(option("--dash-sparsity", "0.75"))
    if not 0.0 < target < 1.0:
        raise SystemExit(f"--dash-sparsity must lie in (0, 1), got {target}")
    repeats = int(option("--repeats", "1" if TINY else "5"))
    out_csv = option("--out", "")
    plain_backend = option("--plain-backend", "default")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if plain_backend != "default" and plain_backend not in backends:
        raise SystemExit(f"--plain-backend: {plain_backend!r}; accepted: default, {', '.join(backends)}")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cfg = llama_config(shape, layers, max(tokens) + 64)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype).eval()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (interpreter)"
    print(f"# {name}, torch {torch.__version__}, Triton {triton.__version__}; random Llama of shape {shape} "
          f"({cfg.num_attention_heads} / {cfg.num_key_value_heads} heads, head dim {cfg.head_dim}, {layers} layers), "
          f"{str(dtype).removeprefix('torch.')}, medians of {repeats}", flush=True)

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

    def calibrate(ids, params) -> tuple[float, float]:
        """dash's scale for ``target`` sparsity (bisection on log2 scale; sparsity grows with the scale)."""
        lo, hi = -4.0, 16.0
        best = (1.0, measured_sparsity_at(ids, params, 1.0))
        for _ in range(3 if TINY else 9):
            mid = (lo + hi) / 2
            s = measured_sparsity_at(ids, params, 2.0**mid)
            if abs(s - target) < abs(best[1] - target):
                best = (2.0**mid, s)
            lo, hi = (mid, hi) if s < target else (lo, mid)
        return best

    def measured_sparsity_at(ids, params, scale) -> float:
        apply_attention(model, "dash", backend="auto", **params, scale=scale)
        return measured_sparsity(ids)

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
                if i >= repeats + 2 or TINY:
                    steps.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), statistics.median(steps)

    rows = []
    print("| method | tokens | parameters | sparsity | prefill ms | x plain | decode step ms | x plain |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for n in tokens:
        ids = torch.randint(1, cfg.vocab_size, (1, n), device=device)
        plain = {}
        for method in methods:
            params = METHODS[method]
            if params is None:
                remove_attention(model)
            else:
                params = dict(params, **(TINY_PARAMS.get(method, {}) if TINY else {}))
                if method == "dash":
                    scale, _ = calibrate(ids, params)
                    params["scale"] = float(f"{scale:.4g}")
                apply_attention(model, method, backend="auto", **params)
            sparsity = measured_sparsity(ids) if params is not None else 0.0
            pinned = params is None and plain_backend != "default"
            with sdpa_kernel([backends[plain_backend]]) if pinned else contextlib.nullcontext():
                pre, dec = timed(ids)
            if method == "plain":
                plain = {"prefill": pre, "decode": dec}
            shown = f"sdpa ({plain_backend}), not patched" if params is None else (
                ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults")
            ratio_p = plain["prefill"] / pre if plain else math.nan
            ratio_d = plain["decode"] / dec if plain else math.nan
            print(f"| {method} | {n} | {shown} | {sparsity:.3f} | {pre:.2f} | {ratio_p:.2f} | {dec:.2f} | "
                  f"{ratio_d:.2f} |", flush=True)
            rows.append({"method": method, "tokens": n, "params": shown, "sparsity": round(sparsity, 4),
                         "prefill_ms": round(pre, 3), "prefill_x_plain": round(ratio_p, 3),
                         "decode_ms": round(dec, 3), "decode_x_plain": round(ratio_d, 3), "shape": shape,
                         "layers": layers, "device": name})
    if out_csv:
        with open(out_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
