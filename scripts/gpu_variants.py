# ruff: noqa: I001  (the path setup must run before the package imports)
"""Time benchmark cases under variants of a module-level switch, each variant checked against the reference
before it is timed, all in one process (so the versions share the card, the inputs and the baselines).

    python scripts/gpu_variants.py kernels._triton.topk_routing.SELECT_MODE=0,1 nsa-decode-128k-kv2 nsa-64k-kv2

The switch is ``<module under dash_eval>.<NAME>=<v1>,<v2>,...`` (integers, floats or True/False); cases are
names from any of ``dash-eval bench``'s shape sets. One line per case and value: ms, routing ms, check.
Settings held fixed for the whole run come first, each as ``--set <module>.<NAME>=<value>``:

    python scripts/gpu_variants.py --set kernels._triton.topk_routing.ROUTE_ROWS=128 \
        kernels._triton.topk_routing.ROUTE_STAGES=1,2,3 nsa-64k-kv2
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

from _gpu_script import start  # noqa: E402  (this folder: sys.path[0] when run)

start(__doc__)

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))
import dash_eval  # noqa: E402

dash_eval.__path__.append(str(root))

import torch  # noqa: E402

from dash_eval.kernels.bench import SHAPE_SETS, SparseRun, _median_ms, _route_time, structured_inputs  # noqa: E402


def _switch(target: str):
    """The module under dash_eval and the attribute that ``<module>.<NAME>`` names."""
    module_name, attr = target.rsplit(".", 1)
    module = importlib.import_module(f"dash_eval.{module_name}")
    if not hasattr(module, attr):
        raise SystemExit(f"dash_eval.{module_name} has no {attr}")
    return module, attr


def main() -> int:
    import dash_eval.kernels.triton_backend  # noqa: F401

    args = sys.argv[1:]
    fixed = []
    while len(args) > 1 and args[0] == "--set":
        fixed.append(args[1])
        args = args[2:]
    for setting in fixed:
        target, value = setting.split("=", 1)
        module, attr = _switch(target)
        setattr(module, attr, ast.literal_eval(value))
    switch, names = args[0], args[1:]
    target, values = switch.split("=", 1)
    module, attr = _switch(target)
    original = getattr(module, attr)
    choices = [ast.literal_eval(v) for v in values.split(",")]
    cases = {c.name: c for cases in SHAPE_SETS.values() for c in cases}
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; accepted: {sorted(cases)}")
    held = f" (held: {', '.join(fixed)})" if fixed else ""
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; {target} in {choices}{held}")
    print("case | value | ms | route ms | check")
    for name in names:
        case = cases[name]
        q, k, v = structured_inputs(case, torch.bfloat16, torch.device("cuda"))
        run = SparseRun(case, q, k, v, case.head_dim**-0.5)
        if case.target_sparsity is not None:
            run.calibrate(case.target_sparsity, lambda msg: None)
        decode = case.nq < case.tokens
        for value in choices:
            setattr(module, attr, value)
            try:
                out, _ = run.forward()
            except Exception as e:  # noqa: BLE001  (a variant out of resources must not stop the others)
                print(f"{name} | {value} | - | - | failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            torch.cuda.synchronize()
            verdict = run.check(out, lambda msg: None)
            ok = verdict.startswith("ok")
            ms = _median_ms(lambda run=run: run.forward(), graph=decode) if ok else float("nan")
            route = _route_time(run) if ok else float("nan")
            print(f"{name} | {value} | {ms:.4f} | {route:.4f} | {verdict}", flush=True)
        setattr(module, attr, original)
    return 0


if __name__ == "__main__":
    sys.exit(main())
