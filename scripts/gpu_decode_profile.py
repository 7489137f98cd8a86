# ruff: noqa: I001  (the path setup must run before the package imports)
"""Per-kernel device times of one decode step at 131,072 cached tokens (torch.profiler), for the sparse
methods as ``dash-eval bench`` runs them (any decode case of any shape set): which launch a step's time goes to.

    python scripts/gpu_decode_profile.py [--no-pdl] [case ...]   # from a checkout, on a CUDA machine

With programmatic dependent launch (Hopper) a kernel starts before the one it waits for has finished, so its
device time includes that wait; ``--no-pdl`` launches the kernels one after the other, each timed alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _gpu_script import start  # noqa: E402  (this folder: sys.path[0] when run)

start(__doc__)

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))
import dash_eval  # noqa: E402

dash_eval.__path__.append(str(root))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from dash_eval.kernels.bench import SHAPE_SETS, SparseRun, structured_inputs  # noqa: E402

STEPS = 50


def main() -> int:
    import dash_eval.kernels.triton_backend  # noqa: F401

    from dash_eval.kernels._triton import launch

    args = sys.argv[1:]
    if "--no-pdl" in args:
        args.remove("--no-pdl")
        launch.USE_PDL = False
    names = args or ["nsa-decode-128k-kv2", "infllmv2-decode-128k-kv2"]
    cases = {c.name: c for cases in SHAPE_SETS.values() for c in cases if c.queries == 1}
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; accepted: {sorted(cases)}")
    print(f"# {torch.cuda.get_device_name()}; programmatic dependent launch {'on' if launch.USE_PDL else 'off'}")
    for name in names:
        case = cases[name]
        q, k, v = structured_inputs(case, torch.bfloat16, torch.device("cuda"))
        run = SparseRun(case, q, k, v, case.head_dim**-0.5)
        if case.target_sparsity is not None:
            run.calibrate(case.target_sparsity, print)
        for _ in range(5):
            run.forward()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                run.forward()
            torch.cuda.synchronize()
        total = 0.0
        print(f"## {name}: device time per step, by kernel (us)")
        for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
            us = ev.device_time_total / STEPS
            if us < 0.05:
                continue
            total += us
            print(f"  {us:8.2f}  {ev.key[:90]}")
        print(f"  {total:8.2f}  total (kernel time only; launch gaps not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
