# ruff: noqa: I001  (the path setup must run before the package imports)
"""Where the prefill routing of ``nsa`` / ``infllmv2`` spends its time: the routing launch timed whole, then
with its later phases cut from the kernel's source (in a temporary copy of the module; nothing of the
package changes):

- ``whole``: as the package runs it;
- ``no select``: the pooled block scores reduced to one number per query instead of the exact top-k, the
  bits and the counts;
- ``scores only``: the two score passes (normaliser, then the group-summed probabilities written to the
  scratch rows), no pooling and no select.

The differences are the select's and the pooling's share. Outputs of the cut variants are garbage; only
their time counts.

``dash`` cases (prefill; the scale calibrated to the case's sparsity first) cut ``_dash_route_kernel`` the
same way: ``no select`` keeps the scores and the Newton threshold (the thresholds are stored), ``scores only``
keeps the scores (their row maxima are stored); the difference of ``whole`` and ``no select`` is the
selection (pbar over the group, the bits, the per-query stats), that of ``no select`` and ``scores only`` the
threshold. Each is timed with the routing in one launch and in ``ROUTE_WIDTHS`` launches by causal width.

    python scripts/gpu_route_phases.py [case ...]   # from a checkout, on a CUDA machine
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import tempfile
from pathlib import Path

from _gpu_script import start  # noqa: E402  (this folder: sys.path[0] when run)

start(__doc__)

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))
import dash_eval  # noqa: E402

dash_eval.__path__.append(str(root))

import torch  # noqa: E402
import triton  # noqa: E402

from dash_eval.kernels.bench import SHAPE_SETS, SparseRun, _kernel_keys, structured_inputs  # noqa: E402

SELECT_START = "            _select_and_store(score, "
SELECT_END = ")\n"  # the end of that call
NO_SELECT = """            tl.store(ACTIVE + bh * Nq + qpos, tl.sum(score, 1).to(tl.int32), mask=q_ok)
"""
PHASES_START = "        for s in tl.static_range(TQ // TS):\n"
PHASES_END = "        tile += n_prog\n"


def _variant(source: str, name: str, tmp: Path):
    path = tmp / f"route_variant_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"route_variant_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the module's dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


# dash: the cuts run from these lines to the end of the tile loop's body
DASH_SELECT_START = "        qpos = q_lo + qt * TQ + lane\n"
DASH_SCORES_START = "        has = ncand_row > 0\n"
DASH_STORE = "        tl.store(TAU + (b * HKV * G + head) * Nq + pos, {}, mask=row_ok)\n"


def _cut(source: str, what: str) -> str:
    head, kernel = source.split("def _topk_route_kernel(", 1)
    first, last = (SELECT_START, SELECT_END) if what == "no select" else (PHASES_START, PHASES_END)
    try:
        start = kernel.index(first)
        end = kernel.index(last, start) + (len(last) if what == "no select" else 0)
    except ValueError:
        raise SystemExit(f"_topk_route_kernel no longer holds {first.strip()!r} ... {last.strip()!r}; "
                         "update this script's markers") from None
    middle = NO_SELECT if what == "no select" else ""
    return head + "def _topk_route_kernel(" + kernel[:start] + middle + kernel[end:]


def _cut_dash(source: str, what: str) -> str:
    head, kernel = source.split("def _dash_route_kernel(", 1)
    first = DASH_SELECT_START if what == "no select" else DASH_SCORES_START
    try:
        start = kernel.index(first)
        end = kernel.index(PHASES_END, start)
    except ValueError:
        raise SystemExit(f"_dash_route_kernel no longer holds {first.strip()!r} ... {PHASES_END.strip()!r}; "
                         "update this script's markers") from None
    middle = DASH_STORE.format("tau" if what == "no select" else "tl.max(x, 1)")
    return head + "def _dash_route_kernel(" + kernel[:start] + middle + kernel[end:]


def dash_phases(names: list[str], cases: dict, tmp: Path) -> None:
    from dash_eval.kernels.dash import triton_routing, triton_summaries
    from dash_eval.kernels.dash.triton_attention import _router

    source = Path(triton_routing.__file__).read_text()
    variants = {"whole": triton_routing}
    for what in ("no select", "scores only"):
        variants[what] = _variant(_cut_dash(source, what), "dash_" + what.replace(" ", "_"), tmp)
    widths = sorted({1, triton_routing.ROUTE_WIDTHS})
    print("case | launches | whole ms | no select ms | scores only ms | select share | threshold share")
    for name in names:
        case = cases[name]
        q, k, v = structured_inputs(case, torch.bfloat16, torch.device("cuda"))
        run = SparseRun(case, q, k, v, case.head_dim**-0.5)
        run.calibrate(case.target_sparsity, lambda msg: None)
        p = run.params
        summ = triton_summaries.block_summaries(k, _router(p, k), p.block_size, run.scale)
        for n in widths:
            ms = {}
            for what, module in variants.items():
                module.ROUTE_WIDTHS = n
                route = functools.partial(
                    module.dash_route, q, summ, k.shape[2], alpha=p.alpha, scale=p.scale, softmax_scale=run.scale,
                    init_blocks=p.init_blocks, local_blocks=p.local_blocks, block_size=p.block_size, sigma=p.sigma,
                )
                ms[what] = triton.testing.do_bench(route, warmup=50, rep=300)
            whole, no_sel, scores = ms["whole"], ms["no select"], ms["scores only"]
            print(f"{name} | {n} | {whole:.3f} | {no_sel:.3f} | {scores:.3f} | {(whole - no_sel) / whole:.2f} | "
                  f"{(no_sel - scores) / whole:.2f}", flush=True)
        for module in variants.values():
            module.ROUTE_WIDTHS = triton_routing.ROUTE_WIDTHS


def main() -> int:
    import dash_eval.kernels.triton_backend  # noqa: F401
    from dash_eval.kernels._triton import topk_routing

    names = sys.argv[1:] or ["nsa-32k-kv2", "nsa-32k-kv8", "nsa-64k-kv2", "infllmv2-128k-kv2"]
    cases = {c.name: c for cases in SHAPE_SETS.values() for c in cases}
    prefill = [n for n in names if n in cases and cases[n].nq == cases[n].tokens]
    dash = [n for n in prefill if cases[n].method == "dash" and cases[n].target_sparsity is not None]
    names = [n for n in prefill if cases[n].method in ("nsa", "infllmv2")]
    unknown = [n for n in sys.argv[1:] if n not in dash and n not in names]
    if unknown:
        raise SystemExit(f"not prefill cases of dash-eval bench (nsa, infllmv2, or dash with a target sparsity): "
                         f"{unknown}")
    source = Path(topk_routing.__file__).read_text()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    if dash:
        with tempfile.TemporaryDirectory() as tmp:
            dash_phases(dash, cases, Path(tmp))
    if not names:
        return 0
    print("case | whole ms | no select ms | scores only ms | select share | pooling share")
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"whole": topk_routing}
        for what in ("no select", "scores only"):
            variants[what] = _variant(_cut(source, what), what.replace(" ", "_"), Path(tmp))
        for name in names:
            case = cases[name]
            q, k, v = structured_inputs(case, torch.bfloat16, torch.device("cuda"))
            run = SparseRun(case, q, k, v, case.head_dim**-0.5)
            p = run.params
            keys = _kernel_keys(run)  # in the form the case's score_precision scores
            ms = {}
            for what, module in variants.items():
                pool = module.POOL_WEIGHTED if case.method == "nsa" else module.POOL_MAX
                route = functools.partial(
                    module.topk_route, q, keys, k.shape[2], pool=pool, block_size=p.block_size,
                    init_blocks=p.init_blocks, local_blocks=p.local_blocks, topk=p.topk, softmax_scale=run.scale,
                    window=getattr(p, "window", 0),
                )
                ms[what] = triton.testing.do_bench(route, warmup=50, rep=300)
            whole, no_sel, scores = ms["whole"], ms["no select"], ms["scores only"]
            print(f"{name} | {whole:.3f} | {no_sel:.3f} | {scores:.3f} | {(whole - no_sel) / whole:.2f} | "
                  f"{(no_sel - scores) / whole:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
