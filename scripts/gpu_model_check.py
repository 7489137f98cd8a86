# ruff: noqa: I001  (the --inplace path setup must run before the package imports)
"""GPU check of patched models: a small random Llama in bf16 on CUDA with each method, Triton backend
against the reference backend (prefill logits), generation with the KV cache (and the incremental
DashAttention summaries) against recomputation, and a left-padded batch against its rows alone.

    python scripts/gpu_model_check.py            # installed package
    python scripts/gpu_model_check.py --inplace  # from a checkout without installing (GPU machine)
    python scripts/gpu_model_check.py --fp32     # float32: no near-tie flips of top-k selections
    python scripts/gpu_model_check.py --steps 70 # generate 70 tokens after a 2,000-token prefix: crosses
                                                 # the block boundary at 2,048 and four kernel completions
    python scripts/gpu_model_check.py --methods nsa,infllmv2   # only these methods
    python scripts/gpu_model_check.py --methods dash --dash alpha=1.25,sigma=1   # dash's settings changed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SETTINGS = {
    "full": {},
    "dash": {"scale": 2.0, "init_blocks": 1, "local_blocks": 2},
    "infllmv2": {"local_blocks": 2, "topk": 4},
    "nsa": {"topk": 4, "window": 128},
}
NO_GPU_EXIT = 10  # apart from the count of failed methods (at most 4)
INT_SETTINGS = ("init_blocks", "local_blocks", "block_size")  # --dash values read as integers; others as floats


def _dash_settings(text: str) -> dict[str, float | int]:
    settings: dict[str, float | int] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"takes KEY=VALUE[,KEY=VALUE...], got {item!r}")
        try:
            settings[key] = int(value) if key in INT_SETTINGS else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}: not a number: {value!r}") from None
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GPU check of patched models: a small random Llama on CUDA with each method; the Triton backend "
        "against the reference backend (prefill logits), generation with the KV cache against recomputation, a "
        "left-padded batch against its rows alone, and host waits for the GPU in the package. Prints a table; the "
        "exit status is the number of methods that failed (10 without a CUDA GPU).",
        epilog="Needs a CUDA GPU: without one it exits at once with status 10.",
    )
    parser.add_argument("--inplace", action="store_true",
                        help="import the package from this checkout, without installing it")
    parser.add_argument("--fp32", action="store_true",
                        help="float32 instead of bfloat16: no near-tie flips of top-k selections")
    parser.add_argument("--steps", type=int, default=12,
                        help="tokens to generate after a 2,000-token prefix (default 12); 70 crosses the block "
                        "boundary at 2,048 and four kernel completions")
    parser.add_argument("--methods", default=",".join(SETTINGS), metavar="M[,M...]",
                        help=f"only these methods, comma-separated (default: all of {', '.join(SETTINGS)})")
    parser.add_argument("--dash", type=_dash_settings, default={}, metavar="KEY=VALUE[,...]",
                        help="change dash's settings, e.g. alpha=1.25,sigma=1 (numbers; default: "
                        + ", ".join(f"{k}={v}" for k, v in SETTINGS["dash"].items()) + ")")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {', '.join(SETTINGS)}")
    return args


if __name__ == "__main__":  # before the slow imports: --help and bad options answer at once
    ARGS = parse_args()
    if ARGS.inplace:
        root = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(root))
        import dash_eval

        dash_eval.__path__.append(str(root))

import torch  # noqa: E402

if __name__ == "__main__" and not torch.cuda.is_available():  # asks the driver; creates no CUDA context
    print(f"gpu_model_check.py: needs a CUDA GPU, and torch {torch.__version__} finds none", file=sys.stderr)
    sys.exit(NO_GPU_EXIT)

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from dash_eval.dash_models import apply_attention, get_tally  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def main(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=4, head_dim=64, vocab_size=1000, max_position_embeddings=8192)
    dtype = torch.float32 if args.fp32 else torch.bfloat16
    steps = args.steps
    methods = args.methods
    SETTINGS["dash"].update(args.dash)
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    model = LlamaForCausalLM(cfg).to("cuda", dtype).eval()
    ids = torch.randint(1, 1000, (1, 3000), device="cuda")  # 0 is the pad token
    failures = 0
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {dtype}, {steps} decode steps")
    print("| method | prefill rel err triton vs reference | sparsity | decode max rel err vs recompute "
          "| padded-row rel err | prefill ms (triton) | host waits in the package |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        params = SETTINGS[method]
        apply_attention(model, method, backend="reference", **params)
        ref = model(ids).logits
        apply_attention(model, method, backend="auto", **params)
        get_tally(model).reset()
        out = model(ids).logits
        sparsity = get_tally(model).summary("prefill")["sparsity"]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            model(ids)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / 3 * 1000
        prefix = ids[:, :2000]
        gen = model.generate(prefix, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        dec_err = 0.0
        for step, logits in enumerate(gen.logits):
            recomputed = model(gen.sequences[:, : prefix.shape[1] + step]).logits[:, -1]
            dec_err = max(dec_err, rel(logits, recomputed))
        a, b = ids[:, :1500], ids[:, 1500:2700]
        batch = torch.zeros(2, 1500, dtype=torch.long, device="cuda")
        mask = torch.zeros_like(batch)
        batch[0], mask[0] = a[0], 1
        batch[1, 300:], mask[1, 300:] = b[0], 1
        both = model(batch, attention_mask=mask).logits
        alone = model(b).logits
        pad_err = rel(both[1, 300:], alone[0])
        prefill_err = rel(out, ref)
        waits = host_waits(model, ids[:, :1000])
        ok = prefill_err < tol and dec_err < tol and pad_err < tol and not torch.isnan(out).any() and not waits
        failures += not ok
        print(f"| {method} | {prefill_err:.2e} | {sparsity:.3f} | {dec_err:.2e} | {pad_err:.2e} | {ms:.1f} | "
              f"{'; '.join(waits) or 'none'} |" + ("" if ok else " FAILED"))
    return failures


def host_waits(model, ids: torch.Tensor) -> list[str]:
    """Where this package made the host wait for the GPU (CUDA's synchronisation debug mode; transformers' own
    waits are not counted): never in a prefill or a cached decode step, and in a left-padded batch's forward at most
    twice however many layers (the rows' key spans are read from its padding mask once a forward pass): a layer
    that waited would stall the host once per layer. Returns what broke that, as ``file:line xN``."""
    import collections
    import warnings

    package = str(Path(__file__).resolve().parent.parent)

    def waits(fn) -> collections.Counter:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                   if "synchroniz" in str(w.message)
                                   and str(Path(w.filename).resolve()).startswith(package))

    batch = torch.zeros(2, ids.shape[1], dtype=torch.long, device=ids.device)
    mask = torch.zeros_like(batch)
    batch[0], mask[0] = ids[0], 1
    batch[1, 100:], mask[1, 100:] = ids[0, 100:], 1
    with torch.no_grad():
        out = model(ids, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        unpadded = waits(lambda: (model(ids, use_cache=True),
                                  model(tok, past_key_values=out.past_key_values, use_cache=True)))
        padded = waits(lambda: model(batch, attention_mask=mask))
    broken = [f"{site} x{n}" for site, n in sorted(unpadded.items())]
    if sum(padded.values()) > 2:
        broken += [f"{site} x{n} (padded)" for site, n in sorted(padded.items())]
    return broken

if __name__ == "__main__":
    sys.exit(main(ARGS))
