"""Random cases of every sparse method: the Triton kernels against the PyTorch reference (METHODS.md).

The CPU tests check the kernels under Triton's interpreter at small shapes; this script checks the compiled
kernels on a GPU at shapes the interpreter is too slow for (thousands of tokens, every GQA ratio and head dim,
decode, padded batches, non-contiguous inputs, parameters across their ranges). float32 cases must match the
reference's selection exactly (the same attended pairs, active blocks and routing scores) and its output to
1e-4; 16-bit cases, whose top-k and entmax supports can flip on near-ties, must match the output to 3e-2
(bf16) / 1e-2 (fp16) with no NaN. Every case is printed as one line that reproduces it (``--seed``).

    python scripts/gpu_fuzz.py --seconds 120             # installed package, on the GPU
    python scripts/gpu_fuzz.py --inplace --seconds 120   # from a checkout without installing
    python scripts/gpu_fuzz.py --seed 17 --cases 1       # one case again
    TRITON_INTERPRET=1 python scripts/gpu_fuzz.py --device cpu --max-tokens 160 --cases 4   # on the CPU, slowly
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}


def draw(seed: int, max_tokens: int) -> dict:
    """One random case: method, shapes, dtype and parameters within the ranges METHODS.md names."""
    rng = random.Random(seed)
    method = rng.choice(["dash", "nsa", "infllmv2"])
    hkv = rng.choice([1, 2, 4, 8])
    g = rng.choice([1, 2, 3, 4, 6, 8, 16])
    block = rng.choice([16, 32, 64, 64, 128])
    nk = rng.choice([rng.randint(1, max_tokens), rng.randint(max_tokens // 2, max_tokens)])
    case = {
        "seed": seed, "method": method, "batch": rng.choice([1, 1, 2, 3]), "hq": hkv * g, "hkv": hkv,
        "nk": nk, "nq": rng.choice([nk, nk, 1]), "d": rng.choice([64, 96, 128, 128]),
        "dtype": rng.choice(["float32", "bfloat16", "bfloat16", "float16"]),
        "softmax_scale": rng.choice([None, None, None, 0.05, 0.3]),
        "padded": rng.random() < 0.3, "transposed": rng.random() < 0.25,
    }
    params: dict = {"block_size": block}
    if method == "dash":
        params.update(alpha=rng.choice([1.1, 1.25, 1.5, 1.5, 1.75, 2.0]), scale=rng.choice([0.5, 1.0, 4.0, 16.0]),
                      init_blocks=rng.choice([0, 0, 1, 4]), local_blocks=rng.choice([1, 1, 2, 8]))
        if rng.random() < 0.3:
            params["sigma"] = rng.choice([1.0, 10.0])
    else:
        stride = rng.choice([s for s in (8, 16, 32) if block % s == 0 and s <= block])
        params.update(kernel_stride=stride, kernel_size=stride * rng.choice([1, 2, 2, 4]),
                      init_blocks=rng.choice([0, 1, 2]), local_blocks=rng.choice([1, 2, 4]),
                      topk=rng.choice([0, 1, 4, 13, 63]))
        if method == "nsa":
            params["window"] = rng.choice([0, 64, 512])
    case["params"] = params
    return case


def inputs(case: dict, device: str):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(case["seed"])
    dtype = getattr(torch, case["dtype"])
    b, hq, hkv, nq, nk, d = (case[x] for x in ("batch", "hq", "hkv", "nq", "nk", "d"))

    def randn(heads, n):
        if case["transposed"]:  # [B, N, H, D] storage seen as [B, H, N, D]: non-contiguous, as models pass it
            return torch.randn(b, n, heads, d, generator=gen).to(device, dtype).transpose(1, 2)
        return torch.randn(b, heads, n, d, generator=gen).to(device, dtype)

    q, k, v = randn(hq, nq), randn(hkv, nk), randn(hkv, nk)
    kv_valid = None
    if case["padded"] and b > 1:  # left padding on every row but the last
        kv_valid = torch.ones(b, nk, dtype=torch.bool)
        for row in range(b - 1):
            kv_valid[row, : random.Random(case["seed"] + row).randint(0, nk - 1)] = False
        kv_valid = kv_valid.to(device)
    return q, k, v, kv_valid


def check(case: dict, device: str) -> tuple[bool, str]:
    """(passed, what was found) for one case."""
    import torch
    from dash_eval.kernels import sparse_attention

    q, k, v, kv_valid = inputs(case, device)
    kwargs = dict(return_stats=True, softmax_scale=case["softmax_scale"], kv_valid=kv_valid, **case["params"])
    out, st = sparse_attention(q, k, v, case["method"], backend="triton", **kwargs)
    ref, rs = sparse_attention(q, k, v, case["method"], backend="reference", **kwargs)
    problems = []
    if torch.isnan(out).any():
        problems.append("NaN in the kernel's output")
    if torch.isnan(ref).any():
        problems.append("NaN in the reference's output")
    diff = (out.double() - ref.double()).norm()
    err = float(diff / ref.double().norm()) if float(ref.double().norm()) > 0 else float(diff)
    if not err <= TOLERANCE[case["dtype"]]:
        problems.append(f"rel err {err:.2e} > {TOLERANCE[case['dtype']]:.0e}")
    same_selection = (int(st.attended_pairs) == int(rs.attended_pairs)
                      and torch.equal(st.active_blocks.cpu(), rs.active_blocks.cpu()))
    if case["dtype"] == "float32":
        if not same_selection:
            problems.append(f"selection differs: attended pairs {int(st.attended_pairs)} vs {int(rs.attended_pairs)}")
        if int(st.routing_scores) != int(rs.routing_scores):
            problems.append(f"routing scores {int(st.routing_scores)} vs {int(rs.routing_scores)}")
    if int(st.causal_pairs) != int(rs.causal_pairs):
        problems.append(f"causal pairs {int(st.causal_pairs)} vs {int(rs.causal_pairs)}")
    note = f"rel err {err:.1e}, sparsity {float(st.sparsity):.3f}" + ("" if same_selection else ", a near-tie flip")
    return not problems, "; ".join(problems) or note


def _where(exc: BaseException) -> str:
    """The innermost frames of this project in ``exc``'s traceback, ``file:line`` each."""
    import traceback

    root = str(Path(__file__).resolve().parent.parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(root)
              and not f.filename.endswith("gpu_fuzz.py")]
    return " < ".join(f"{Path(f.filename).relative_to(root)}:{f.lineno}" for f in reversed(frames[-3:])) or "?"


def describe(case: dict) -> str:
    shape = (f"B{case['batch']} Hq{case['hq']}/Hkv{case['hkv']} Nq{case['nq']} Nk{case['nk']} D{case['d']} "
             f"{case['dtype']}")
    extra = [f"softmax_scale={case['softmax_scale']}"] if case["softmax_scale"] is not None else []
    extra += ["padded"] * (case["padded"] and case["batch"] > 1) + ["transposed"] * case["transposed"]
    params = ",".join(f"{k}={v}" for k, v in case["params"].items())
    return f"seed {case['seed']}: {case['method']} {shape} {params} {' '.join(extra)}".rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inplace", action="store_true", help="import the package from this checkout")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with TRITON_INTERPRET=1)")
    parser.add_argument("--seed", type=int, default=0, help="the first case's seed (default 0)")
    parser.add_argument("--cases", type=int, default=10_000, help="at most this many cases (default 10000)")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop starting cases after this (default 120)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="longest key length (default 4096)")
    args = parser.parse_args(argv)
    if args.inplace:
        root = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(root))
        import dash_eval

        dash_eval.__path__.append(str(root))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_fuzz: no CUDA device (use --device cpu with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_fuzz: --device cpu needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    import dash_eval.kernels.triton_backend  # noqa: F401  (registers the kernels)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton interpreter)"
    print(f"# {name}, torch {torch.__version__}", flush=True)
    t0, ran, failed, flips = time.time(), 0, 0, 0
    for seed in range(args.seed, args.seed + args.cases):
        if time.time() - t0 > args.seconds:
            break
        case = draw(seed, args.max_tokens)
        try:
            ok, what = check(case, args.device)
        except Exception as exc:  # noqa: BLE001 - a crash is a finding; report it and go on
            ok, what = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            what += f" (at {_where(exc)})"
        ran += 1
        failed += not ok
        flips += ok and "flip" in what
        print(f"{'ok  ' if ok else 'FAIL'} {describe(case)}: {what}", flush=True)
    print(f"# {ran} cases in {time.time() - t0:.0f} s: {failed} failed, {flips} with a 16-bit near-tie flip",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
