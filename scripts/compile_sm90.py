# ruff: noqa: I001  (the path setup must run before the package imports)
"""Compile, for an sm_90 (Hopper) GPU and without one, every Triton kernel that ``dash-eval bench`` launches
for prefill and decode of ``dash``, ``nsa`` and ``infllmv2``, with the launch options the GPU uses
(native bf16 dots, pipelined loops, programmatic dependent launch).

The CPU interpreter accepts some programs the compiler rejects (a loop variable reassigned with another
dtype inside an ``if``, a ``tl.constexpr`` reassigned in ``static_range``); this catches those before a
device call is spent on them. Kernels are not run: each launch is compiled and skipped, so the outputs
are garbage and only the compilation is checked.

    python scripts/compile_sm90.py          # from a checkout; exits 1 if any kernel fails to compile
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # before the slow imports: --help answers at once
    argparse.ArgumentParser(
        description="Compile, for an sm_90 (Hopper) GPU and without one (Triton's compiler and ptxas on the CPU), "
        "every Triton kernel that 'dash-eval bench' launches for prefill and decode of dash, nsa and infllmv2, with "
        "the GPU's launch options. Kernels are compiled, not run. Takes a few minutes; exits 1 if any kernel fails "
        "to compile or needs more shared memory than sm_90 has.",
        epilog="Run it from a checkout: python scripts/compile_sm90.py (no options; no GPU needed).",
    ).parse_args()

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter
root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))
import dash_eval  # noqa: E402

dash_eval.__path__.append(str(root))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402
from triton.runtime.jit import JITFunction, mangle_type  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

TARGET = GPUTarget("cuda", 90, 64)
SHARED_LIMIT = 232448  # bytes of shared memory a block may use on sm_90 (227 KB)
OPTIONS = ("num_warps", "num_stages", "num_ctas", "launch_pdl", "maxnreg")
_TENSOR_TYPES = {
    torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
    torch.int64: "*i64", torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1",
}
compiled: dict[str, int] = {}
failed: list[str] = []


class CompileFailed(Exception):
    pass


def _arg_type(name: str, value) -> str:
    if isinstance(value, torch.Tensor):
        return _TENSOR_TYPES[value.dtype]
    if isinstance(value, TensorDescriptor):
        return mangle_type(value)  # "tensordesc<bf16[1, 1, 64, 128]>"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"argument {name}: no Triton type for {type(value).__name__}")


def _compile_instead(self: JITFunction, *args, grid, warmup, **kwargs):
    options = {k: kwargs.pop(k) for k in OPTIONS if k in kwargs}
    bound = inspect.signature(self.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    constexpr_names = {self.arg_names[i] for i in self.constexprs}
    signature, constexprs = {}, {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        if name in constexpr_names:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        else:
            signature[name] = _arg_type(name, value)
    key = f"{self.fn.__name__}{sorted(constexprs.items())}{sorted(options.items())}"
    if key not in compiled:
        t0 = time.perf_counter()
        try:
            kernel = triton.compile(ASTSource(self, signature, constexprs=constexprs), target=TARGET, options=options)
        except Exception as e:  # noqa: BLE001  (front end, MLIR passes and ptxas raise different types)
            failed.append(f"{self.fn.__name__} {options}: {type(e).__name__}: {e}")
            raise CompileFailed(failed[-1]) from e
        compiled[key] = kernel.metadata.shared
        over = f", over sm_90's {SHARED_LIMIT}: fewer stages" if compiled[key] > SHARED_LIMIT else ""
        print(f"  ok {time.perf_counter() - t0:5.1f}s  {self.fn.__name__}  {options}  shared {compiled[key]}{over}",
              flush=True)
    if compiled[key] > SHARED_LIMIT:  # the GPU's launch would refuse it
        raise OutOfResources(compiled[key], SHARED_LIMIT, "shared memory")
    return None


def main() -> int:
    from dash_eval.kernels import triton_backend  # noqa: F401  (registers the backends)
    from dash_eval.kernels._triton import launch, topk_attention, topk_routing
    from dash_eval.kernels.bench import Case, SparseRun, structured_inputs
    from dash_eval.kernels.dash import triton_attention, triton_routing

    JITFunction.run = _compile_instead
    launch.hopper = lambda device: True  # as on an sm_90 device: chained launches, TMA descriptors
    launch.num_sms = lambda index: 132  # an H200's, for the launch choices that depend on the GPU's fill
    tma_min = launch.TMA_MIN_PROGRAMS_PER_SM
    dash_route = triton_routing.dash_route
    cases = []
    for hkv in (2, 8):
        cases += [
            Case(f"dash-decode-kv{hkv}", "dash", 8192, kv_heads=hkv, queries=1, params={"scale": 1.0}),
            # 32k: the routing in launches by causal width, rows of 512 blocks (scratch) down to 64
            Case(f"dash-prefill-kv{hkv}", "dash", 32768, kv_heads=hkv, params={"scale": 1.0}),
        ]
        for method in ("nsa", "infllmv2"):
            cases += [
                Case(f"{method}-decode-kv{hkv}", method, 8192, kv_heads=hkv, queries=1),
                Case(f"{method}-prefill-kv{hkv}", method, 1024, kv_heads=hkv),
            ]
    # the prior rebuilt in the fine stage (a sigma at which it can move bf16 outputs), and entmax's other powers:
    # alpha 1.25 and 2 (integer exponents 4 and 1), 1.75 (the general power)
    for alpha, queries in ((1.25, 1), (2.0, 1), (1.75, None)):
        kind = "decode" if queries else "prefill"
        cases.append(Case(f"dash-{kind}-kv2-alpha{alpha}-prior", "dash", 32768 if queries is None else 8192,
                          queries=queries, params={"scale": 1.0, "alpha": alpha, "sigma": 1.0}))
    for method in ("nsa", "infllmv2"):  # kernel keys without the residual: one product per score
        cases += [
            Case(f"{method}-decode-kv2-input", method, 8192, queries=1, params={"score_precision": "input"}),
            Case(f"{method}-prefill-kv2-input", method, 1024, params={"score_precision": "input"}),
        ]
    # other geometries and dtypes: the embedded SmolLM2's (9 query heads, 3 KV heads, head dim 64), float16 and
    # float32 inputs, head dims 96 (pointer loads) and 256 (shared memory: fewer pipeline stages)
    dtypes = {}
    for method in ("dash", "nsa", "infllmv2"):
        params = {"scale": 1.0} if method == "dash" else {}
        for queries in (None, 1):
            kind = "decode" if queries else "prefill"
            cases += [
                Case(f"{method}-{kind}-smollm2", method, 4096, q_heads=9, kv_heads=3, head_dim=64, queries=queries,
                     params=params),
                Case(f"{method}-{kind}-fp32", method, 2048, queries=queries, params=params),
                Case(f"{method}-{kind}-d256", method, 2048, head_dim=256, queries=queries, params=params),
            ]
            dtypes[f"{method}-{kind}-fp32"] = torch.float32
        cases.append(Case(f"{method}-prefill-d96-fp16", method, 2048, head_dim=96, params=params))
        dtypes[f"{method}-prefill-d96-fp16"] = torch.float16
    # the widest rows, fp32 at head dim 256: the routings narrow their score chunks to fit (dash's at 256 blocks, so
    # 16k tokens), the fine stage runs one pipeline stage
    cases += [Case("nsa-prefill-d256-fp32", "nsa", 2048, head_dim=256),
              Case("dash-prefill-d256-fp32", "dash", 16384, head_dim=256, params={"scale": 1.0})]
    dtypes.update({"nsa-prefill-d256-fp32": torch.float32, "dash-prefill-d256-fp32": torch.float32})
    for case in cases:
        print(f"# {case.name}", flush=True)
        decode = case.queries == 1
        # the launch paths a GPU takes: block-parallel decode routing, a split fine stage in decode
        triton_attention.dash_route = functools.partial(dash_route, precompute=decode)
        topk_routing.kernel_parallel_pays = lambda *args, decode=decode: decode
        q, k, v = structured_inputs(case, dtypes.get(case.name, torch.bfloat16), torch.device("cpu"))
        # decode's score launches read through TMA only when they fill the GPU (launch.tma_pays), and its fine
        # stage is split (4 pipeline stages) unless the batch alone fills the GPU (one program a tile): both ways
        for min_per_sm, splits in ((tma_min, 8), (0, 1)) if decode else ((tma_min, 1),):
            launch.TMA_MIN_PROGRAMS_PER_SM = min_per_sm
            for module in (triton_attention, topk_attention):
                module.decode_splits = lambda q, k, c, visits=None, splits=splits: splits
            try:
                SparseRun(case, q, k, v, case.head_dim**-0.5).forward()
            except CompileFailed as e:
                print(f"FAILED: {case.name}\n{e}")
            except OutOfResources as e:  # even one pipeline stage does not fit
                failed.append(f"{case.name}: {e}")
                print(f"FAILED: {case.name}\n{e}")
            except Exception as e:  # noqa: BLE001  (the skipped launches leave garbage; only compiling counts)
                print(f"  (after the compiled launches: {type(e).__name__}: {str(e)[:120]})")
        launch.TMA_MIN_PROGRAMS_PER_SM = tma_min
    if failed:
        print(f"{len(failed)} kernel(s) failed to compile for sm_90")
        return 1
    print(f"{len(compiled)} kernel specialisations compiled for sm_90, none failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
