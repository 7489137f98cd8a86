# ruff: noqa: I001  (the path setup must run before the package imports)
"""Where the time of a small sparse call goes: host (Python and launches) or device (kernels).

At the embedded model's size (9 query heads over 3 KV heads, head dim 64, a few thousand tokens) a dense call is a
fraction of a millisecond, so the sparse methods' host work per launch can decide their speed. For each case this
prints, per call: the host's issue time (calls queued without waiting), the wall time (the same calls, then a
synchronise), the kernels' device time and their count (torch.profiler), and where the host's time goes (cProfile,
the functions with the most own time). Then a random Llama of SmolLM2-135M's shape (30 layers), unpatched and with
each method patched in: the median wall time of a prefill and of a cached decode step, and cProfile of a step.

    python scripts/gpu_host_profile.py                   # on a CUDA machine, from a checkout
    python scripts/gpu_host_profile.py --tiny --cpu      # a two-minute smoke run on the CPU (Triton interpreter)
    python scripts/gpu_host_profile.py --kernels-only    # the per-call part only; --model-only: the model part only
    python scripts/gpu_host_profile.py --model-only --no-profile --root ../old   # another checkout's package, for
                                                         # an A/B in alternate processes (docs/perf-notes.md)
"""

from __future__ import annotations

import cProfile
import warnings
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

from _gpu_script import start  # noqa: E402  (this folder: sys.path[0] when run)

start(__doc__, cpu_flag="--cpu")

TINY = "--tiny" in sys.argv
CPU = "--cpu" in sys.argv
if CPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# --root DIR: import the package from another checkout (an A/B of two versions, one process each)
root = Path(__file__).resolve().parents[1]
if "--root" in sys.argv:
    root = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
sys.path.insert(0, str(root))
import dash_eval  # noqa: E402

dash_eval.__path__.append(str(root))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from dash_eval.kernels.bench import Case, SparseRun, structured_inputs  # noqa: E402

DEVICE = torch.device("cpu" if CPU else "cuda")
CALLS = 2 if TINY else 30
GEOMETRY = {"q_heads": 9, "kv_heads": 3, "head_dim": 64}


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def per_call(fn) -> tuple[float, float]:
    """(issue ms, wall ms) per call over ``CALLS`` calls queued back to back."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(CALLS):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / CALLS * 1e3, (t2 - t0) / CALLS * 1e3


def device_time(fn) -> tuple[float, float]:
    """(kernel ms, kernels) per call, from the profiler's CUDA events."""
    if DEVICE.type != "cuda":
        return 0.0, 0.0
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            fn()
        sync()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in events)  # us
    return total / CALLS / 1e3, len(events) / CALLS


def host_profile(fn, top: int = 12, calls: int = CALLS) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    sync()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
    stats.print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join("    " + ln for ln in lines[start:])


def dense_call(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = q.shape[1] // k.shape[1]
    backends = [SDPBackend.CUDNN_ATTENTION] if DEVICE.type == "cuda" else [SDPBackend.MATH]

    def fn():
        with sdpa_kernel(backends):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1,
                                                                    enable_gqa=g > 1)

    return fn


def kernel_cases() -> None:
    lengths = (256,) if TINY else (2048, 8192)
    print("## Per call, SmolLM2 geometry (9 / 3 heads, head dim 64), bf16" + (" (tiny, CPU)" if TINY else ""))
    print("| case | issue ms | wall ms | kernel ms | kernels | dense cuDNN wall ms |")
    print("|---|---:|---:|---:|---:|---:|")
    profiles = []
    for n in lengths:
        for method in ("dash", "nsa", "infllmv2"):
            for queries in (None, 1):
                tokens = n if queries is None else 4 * n
                case = Case(f"{method}-{'decode-' if queries else ''}{tokens}", method, tokens, queries=queries,
                            target_sparsity=0.75 if method == "dash" else None, **GEOMETRY)
                q, k, v = structured_inputs(case, torch.bfloat16, DEVICE)
                run = SparseRun(case, q, k, v, case.head_dim**-0.5)
                if case.target_sparsity is not None:
                    run.calibrate(case.target_sparsity, lambda _msg: None)
                issue, wall = per_call(run.forward)
                kms, nk = device_time(run.forward)
                _, dense = per_call(dense_call(q, k, v))
                print(f"| {case.name} | {issue:.3f} | {wall:.3f} | {kms:.3f} | {nk:.0f} | {dense:.3f} |", flush=True)
                if n == lengths[-1]:
                    profiles.append((case.name, host_profile(run.forward)))
    for name, text in profiles:
        print(f"\n### host time of {name}, {CALLS} calls (cProfile, by own time)\n{text}")


def model_cases() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from dash_eval.dash_models import apply_attention, get_tally
    from dash_eval.dash_models.patch import remove_attention

    torch.manual_seed(0)
    layers = 2 if TINY else 30
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(DEVICE, torch.bfloat16).eval()
    settings = {
        "plain": None,  # transformers' own sdpa attention, not patched: the floor of the patched "full"
        "full": {},
        "dash": {"scale": 16.0, "init_blocks": 1, "local_blocks": 2},
        "nsa": {"init_blocks": 1, "local_blocks": 2, "window": 0, "topk": 4},
        "infllmv2": {"init_blocks": 1, "local_blocks": 2, "topk": 4},
    }
    lengths = (256,) if TINY else (2048, 8192)
    print(f"\n## Random Llama of SmolLM2-135M's shape ({layers} layers), bf16, wall ms (medians), package at {root}")
    print("| method | tokens | prefill ms | sparsity | decode step ms (cached) |")
    print("|---|---:|---:|---:|---:|")
    profiles = []
    for n in lengths:
        ids = torch.randint(1, cfg.vocab_size, (1, n), device=DEVICE)
        for method, params in settings.items():
            if params is None:
                remove_attention(model)
            else:
                apply_attention(model, method, backend="auto", **params)
            with torch.no_grad():
                get_tally(model).reset()
                model(ids)
                sparsity = get_tally(model).summary("prefill")["sparsity"] if params is not None else 0.0
                times = []
                for _ in range(1 if TINY else 7):
                    sync()
                    t0 = time.perf_counter()
                    out = model(ids, use_cache=True)
                    sync()
                    times.append(time.perf_counter() - t0)
                prefill = statistics.median(times) * 1e3
                cache = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
                steps = 2 if TINY else 20
                for _ in range(2 if TINY else 20):  # warm the decode path: every key count's Triton specialisation
                    tok = model(tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
                times = []
                for _ in range(steps):
                    sync()
                    t0 = time.perf_counter()
                    tok = model(tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
                    sync()
                    times.append(time.perf_counter() - t0)
                step = statistics.median(times) * 1e3
                if n == lengths[-1] and "--no-profile" not in sys.argv:
                    def decode_step(cache=cache, tok=tok):
                        return model(tok, past_key_values=cache, use_cache=True)

                    profiles.append((f"{method} decode step", host_profile(decode_step, top=16, calls=3)))
            print(f"| {method} | {n} | {prefill:.2f} | {sparsity:.3f} | {step:.2f} |", flush=True)
    for name, text in profiles:
        print(f"\n### host time of one {name} (cProfile, 3 steps, by own time)\n{text}")


def main() -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    import dash_eval.kernels.triton_backend  # noqa: F401

    name = "CPU (interpreter)" if DEVICE.type == "cpu" else torch.cuda.get_device_name()
    import triton

    print(f"# {name}, torch {torch.__version__}, Triton {triton.__version__}")
    if "--model-only" not in sys.argv:
        kernel_cases()
    if "--kernels-only" not in sys.argv:
        model_cases()
    return 0


if __name__ == "__main__":
    sys.exit(main())
