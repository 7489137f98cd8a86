"""``dash-eval bench``: check, then time, the sparse kernels against dense attention on one GPU.

For every case of a named shape set (or of the command line): dense baselines (PyTorch SDPA forced to
cuDNN and to flash; FlexAttention given the very selection of the sparse kernel as a block mask), then
each sparse kernel, checked against the reference implementation before it is timed. One CSV row per
timed call: method, parameters, tokens, heads, head dim, the measured sparsity of that call, median ms,
the ratio to each dense baseline and the GPU name. See docs/bench.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from dash_eval.kernels.bench_cases import (
    SHAPE_SETS,
    SPARSE_METHODS,
    Case,
    custom_cases,
    describe_cases,
    model_geometry,
    parse_list,
    parse_params,
    structured_inputs,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FIELDS = [
    "case", "method", "params", "batch", "tokens", "queries", "q_heads", "kv_heads", "head_dim", "dtype",
    "sparsity", "visited", "active_blocks_mean", "ms", "route_ms", "ms_cudnn", "ms_flash", "ms_flex", "x_cudnn",
    "x_flash", "x_flex", "check", "gpu", "torch", "triton", "inputs",
]


# --- timing ---------------------------------------------------------------------------------------------


def _median_ms(fn, graph: bool = False) -> float:
    import triton.testing

    if graph:
        return float(triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median"))
    return float(triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median"))


def _graph_copies(touched_bytes: float, copy_bytes: float, fixed: int = 0) -> int:
    """How many copies of a decode case's inputs its CUDA-graph timing cycles through.

    ``do_bench`` clears L2 before every call; ``do_bench_cudagraph`` (decode: launch overhead matters) replays
    the same call back to back without that, so a step whose reads fit in L2 (a sparse step reads a few MB of
    a long cache; a short cache is small) would be timed from L2, where a model's step finds its layer's cache
    evicted by the other layers. With copies, one round of calls reads 3x the L2 size (PERF.md: rotate inputs
    that fit in L2); at most 32 copies and 8 GiB of them. ``fixed`` > 0 (``--decode-copies``) sets the count."""
    if fixed > 0:
        return fixed
    want = math.ceil(3 * _l2_mb() * 2**20 / max(touched_bytes, 1.0))
    return int(max(1, min(want, 32, (8 << 30) // max(int(copy_bytes), 1))))


def _l2_mb() -> float:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size / 2**20


def _per_call_ms(fns: list) -> float:
    """Median ms of one call, timed in a CUDA graph that runs each of ``fns`` (one per input copy) in turn."""
    return _median_ms(lambda: [fn() for fn in fns], graph=True) / len(fns)


def _sdpa(backend_name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend_name]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run(q, k, v):
        causal = q.shape[2] == k.shape[2]
        with sdpa_kernel(backend):
            # Decode: one query attends the whole cache, so no causal mask.
            return sdpa(q, k, v, is_causal=causal, enable_gqa=True)

    return run


def _dense_times(q, k, v, decode: bool, log, copies: int = 0) -> dict[str, float]:
    out = {}
    inputs = [(q, k, v)]
    if decode:  # the dense step reads the whole cache; copies where that fits in L2
        kv_bytes = 2 * k.numel() * k.element_size()
        inputs += [(q.clone(), k.clone(), v.clone()) for _ in range(_graph_copies(kv_bytes, kv_bytes, copies) - 1)]
    for name in ("cudnn", "flash"):
        fn = _sdpa(name)
        try:
            fn(q, k, v)
            if decode:
                out[name] = _per_call_ms([lambda fn=fn, x=x: fn(*x) for x in inputs])
            else:
                out[name] = _median_ms(lambda fn=fn: fn(q, k, v))
        except RuntimeError as exc:  # a backend that does not take this shape
            log(f"  {name}: unavailable ({str(exc).splitlines()[0][:120]})")
            out[name] = float("nan")
    return out


def _flex_time(q, k, v, words, block_size: int, log) -> float:
    """FlexAttention with the sparse kernel's own selection: per-128-query tiles list the union of their
    queries' blocks, and a mask_mod applies each query's bits and causality inside them."""
    from dash_eval.kernels._triton.selection import FULL_MASK, tile_union, unpack_selection
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    b, hq, n, _ = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    nblocks = -(-n // block_size)
    tq = 128
    tlist, tcount = tile_union(words, n, block_size=block_size, tile_q=tq)
    in_list = torch.arange(tlist.shape[-1], device=tlist.device) < tcount[..., None]
    tlist = torch.where(in_list, tlist & FULL_MASK.value, 0)  # plain block indices, zero past the count
    sel = unpack_selection(words, nblocks)  # [B, Hkv, N, nblocks] bool

    def mask_mod(bi, h, qi, kv):
        return (kv <= qi) & sel[bi, h // g, qi, kv // block_size]

    mask = BlockMask.from_kv_blocks(
        tcount.repeat_interleave(g, 1).contiguous(), tlist.repeat_interleave(g, 1).contiguous(),
        BLOCK_SIZE=(tq, block_size), mask_mod=mask_mod, seq_lengths=(n, n),
    )
    flex = torch.compile(flex_attention, dynamic=False)
    try:
        flex(q, k, v, block_mask=mask, enable_gqa=True)
        return _median_ms(lambda: flex(q, k, v, block_mask=mask, enable_gqa=True))
    except Exception as exc:  # noqa: BLE001  (report, keep benchmarking)
        log(f"  flex: failed ({str(exc).splitlines()[0][:160]})")
        return float("nan")


# --- the sparse kernels ---------------------------------------------------------------------------------


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30))


class SparseRun:
    """One sparse method on one input set: the call to time, and what the check needs."""

    def __init__(self, case: Case, q, k, v, softmax_scale: float):
        from dash_eval.kernels import get_method

        self.case, self.q, self.k, self.v, self.scale = case, q, k, v, softmax_scale
        self.spec = get_method(case.method)
        self.params = self.spec.make_params(**case.params)
        self.decode = case.nq < case.tokens
        self.summaries = None
        self.kernel_keys = None
        if self.decode and case.method == "dash":
            self._cache_summaries()
        if self.decode and case.method in ("nsa", "infllmv2"):
            self.kernel_keys = _kernel_keys(self)

    def copy(self) -> SparseRun:
        """The same case and parameters on copies of the inputs (other addresses, the same selection), with
        their own decode caches: what a CUDA-graph timing cycles through so that L2 does not serve the step."""
        other = SparseRun(self.case, self.q.clone(), self.k.clone(), self.v.clone(), self.scale)
        other.params = self.params
        return other

    def _cache_summaries(self) -> None:
        """Decode keeps the block summaries of the cache (``update_summaries`` appends each new block), so a
        step routes against them instead of re-reading every key."""
        from dash_eval.kernels.dash.triton_attention import _router
        from dash_eval.kernels.dash.triton_summaries import block_summaries

        p = self.params
        self.summaries = block_summaries(self.k, _router(p, self.k), p.block_size, self.scale)

    def calibrate(self, target: float, log) -> None:
        """dash: bisect log2(scale) until the routed selection's sparsity is within 0.5% of ``target``."""
        lo, hi = -6.0, 14.0
        best = None
        for _ in range(22):
            mid = (lo + hi) / 2
            self.params = self.spec.make_params(**dict(self.case.params, scale=2.0**mid))
            sp = self.sparsity()
            best = (abs(sp - target), mid, sp) if best is None or abs(sp - target) < best[0] else best
            if abs(sp - target) < 0.005:
                break
            lo, hi = (mid, hi) if sp < target else (lo, mid)
        self.params = self.spec.make_params(**dict(self.case.params, scale=2.0 ** best[1]))
        reached = "" if best[0] < 0.005 else "; NOT reached with scale in [2^-6, 2^14]: the row has the measured one"
        log(f"  calibrated scale={2.0 ** best[1]:.4g} -> sparsity {best[2]:.4f} (target {target}{reached})")

    def sparsity(self) -> float:
        _, stats = self.forward(return_stats=True)
        return stats.sparsity

    def forward(self, return_stats: bool = False):
        from dash_eval.kernels import get_backend

        if self.summaries is not None:
            from dash_eval.kernels.dash.triton_attention import dash_attention_triton
            from dash_eval.kernels.dash.triton_summaries import update_summaries

            update_summaries(self.summaries, self.k, self.params.router, self.params.block_size, self.scale)
            return dash_attention_triton(self.q, self.k, self.v, self.params, softmax_scale=self.scale,
                                         return_stats=return_stats, summaries=self.summaries)
        fn = get_backend(self.case.method, "triton")
        if self.kernel_keys is not None:
            from dash_eval.kernels._triton.kernel_keys import update_kernel_keys

            # A decode step as a model takes it: the cache's newest kernel key is rewritten (one step in
            # kernel_stride completes a kernel; here every step does), then routing and the fine stage. A cache
            # shorter than one kernel has none to rewrite.
            if self.kernel_keys.count > 0:
                self.kernel_keys.count -= 1
                update_kernel_keys(self.kernel_keys, self.k)
            return fn(self.q, self.k, self.v, self.params, softmax_scale=self.scale, return_stats=return_stats,
                      kernel_keys=self.kernel_keys)
        return fn(self.q, self.k, self.v, self.params, softmax_scale=self.scale, return_stats=return_stats)

    def check(self, out: torch.Tensor, log) -> str:
        """The reference on query slices (all queries when short): relative error of the output."""
        nq = self.q.shape[2]
        width = min(nq, 256)
        starts = sorted({0, max(0, nq // 2 - width // 2), nq - width}) if nq > 2048 else [0]
        if nq <= 2048:
            width = nq
        tol = 2e-2 if self.q.dtype != torch.float32 else 1e-4
        worst = 0.0
        nk = self.k.shape[2]
        for s in starts:
            q_slice = self.q[:, :, s : s + width]
            kk, vv = self.k[:, :, : nk - nq + s + width], self.v[:, :, : nk - nq + s + width]
            ref, _ = self.spec.reference(q_slice, kk, vv, self.params, softmax_scale=self.scale, return_stats=False)
            err = _rel_err(out[:, :, s : s + width], ref)
            worst = max(worst, err)
        ok = worst < tol and not torch.isnan(out).any()
        log(f"  check vs reference ({len(starts)} slice(s) of {width} queries): rel err {worst:.2e} "
            f"{'ok' if ok else 'FAILED'}")
        return f"{'ok' if ok else 'FAILED'} rel_err={worst:.2e}"


def _visited(run: SparseRun) -> float:
    """Fraction of the causal key range the fine stage's query tiles visit (the union of the tile's
    queries' blocks), against which ``1 - sparsity`` is the per-query fraction."""
    from dash_eval.kernels._triton.block_sparse import default_tile_q
    from dash_eval.kernels._triton.selection import tile_union

    words = _words(run)
    q, k = run.q, run.k
    nq, nk = q.shape[2], k.shape[2]
    tq = default_tile_q(q.shape[1] // k.shape[1], nq)
    window = getattr(run.params, "window", 0)
    _, tcount = tile_union(words, nk, block_size=run.params.block_size, tile_q=tq, window=window)
    causal = (nk - nq + 1 + nk) * nq // 2 * k.shape[1] * k.shape[0]
    return min(1.0, float(tcount.sum()) * min(tq, nq) * run.params.block_size / causal)


def _topk_route(run: SparseRun, keys):
    from dash_eval.kernels._triton.topk_routing import POOL_MAX, POOL_WEIGHTED, topk_route

    p = run.params
    pool = POOL_WEIGHTED if run.case.method == "nsa" else POOL_MAX
    return topk_route(run.q, keys, run.k.shape[2], pool=pool, block_size=p.block_size, init_blocks=p.init_blocks,
                      local_blocks=p.local_blocks, topk=p.topk, softmax_scale=run.scale,
                      window=getattr(p, "window", 0))


def _kernel_keys(run: SparseRun):
    """The kernel keys of ``run``'s keys, in the form its ``score_precision`` scores."""
    from dash_eval.kernels._triton.kernel_keys import kernel_keys_triton, split_keys

    p = run.params
    return kernel_keys_triton(run.k, p.kernel_size, p.kernel_stride, split=split_keys(p))


def _words(run: SparseRun) -> torch.Tensor:
    if run.case.method == "dash":
        return _words_for_flex(run)
    return _topk_route(run, _kernel_keys(run)).words


def _words_for_flex(run: SparseRun) -> torch.Tensor | None:
    from dash_eval.kernels.dash.triton_attention import _router
    from dash_eval.kernels.dash.triton_routing import dash_route
    from dash_eval.kernels.dash.triton_summaries import block_summaries

    if run.case.method != "dash":
        return None
    p = run.params
    summ = block_summaries(run.k, _router(p, run.k), p.block_size, run.scale)
    return dash_route(run.q, summ, run.k.shape[2], alpha=p.alpha, scale=p.scale, softmax_scale=run.scale,
                      init_blocks=p.init_blocks, local_blocks=p.local_blocks, block_size=p.block_size).words


def _route_time(run: SparseRun, copies: list[SparseRun] | None = None) -> float:
    """The routing stage alone; decode cycles through ``copies`` of the run (``_graph_copies``) as the timed
    step does."""
    from dash_eval.kernels.dash.triton_attention import _router
    from dash_eval.kernels.dash.triton_routing import dash_route
    from dash_eval.kernels.dash.triton_summaries import block_summaries

    p = run.params
    runs = copies or [run]
    if run.kernel_keys is not None:  # decode: routing against the cached kernel keys, as the step uses them
        return _per_call_ms([lambda r=r: _topk_route(r, r.kernel_keys) for r in runs])
    if run.case.method in ("nsa", "infllmv2"):
        return _median_ms(lambda: _topk_route(run, _kernel_keys(run)))
    if run.case.method != "dash":
        return float("nan")
    if run.summaries is not None:  # decode: the cached summaries, as the timed call uses

        def route_cached(r: SparseRun):
            return dash_route(r.q, r.summaries, r.k.shape[2], alpha=p.alpha, scale=p.scale,
                              softmax_scale=r.scale, init_blocks=p.init_blocks, local_blocks=p.local_blocks,
                              block_size=p.block_size, sigma=p.sigma)

        return _per_call_ms([lambda r=r: route_cached(r) for r in runs])

    def route():
        summ = block_summaries(run.k, _router(p, run.k), p.block_size, run.scale)
        return dash_route(run.q, summ, run.k.shape[2], alpha=p.alpha, scale=p.scale, softmax_scale=run.scale,
                          init_blocks=p.init_blocks, local_blocks=p.local_blocks, block_size=p.block_size)

    return _median_ms(route)


def sweep_configs(run: SparseRun, log) -> None:
    """dash: time the routing and the fine stage alone over launch configurations (tile rows, warps,
    pipeline stages, routing chunk), on this call's inputs and selection; prints a table."""
    from dash_eval.kernels._triton.block_sparse import DashPrior, prior_matters, sparse_attention_from_words
    from dash_eval.kernels._triton.launch import next_pow2
    from dash_eval.kernels.dash.triton_attention import _router
    from dash_eval.kernels.dash.triton_routing import dash_route
    from dash_eval.kernels.dash.triton_summaries import block_summaries

    p, q, k, v = run.params, run.q, run.k, run.v
    gp = next_pow2(q.shape[1] // k.shape[1])
    summ = block_summaries(k, _router(p, k), p.block_size, run.scale)
    route_kw = dict(alpha=p.alpha, scale=p.scale, softmax_scale=run.scale, init_blocks=p.init_blocks,
                    local_blocks=p.local_blocks, block_size=p.block_size, sigma=p.sigma)
    for rows in (16, 32):
        for chunk in (256,):
            for warps in (4, 8):
                tq = max(1, rows // gp)
                try:
                    def route(tq=tq, chunk=chunk, warps=warps):
                        return dash_route(q, summ, k.shape[2], tile_q=tq, chunk_blocks=chunk, num_warps=warps,
                                          **route_kw)

                    narrowed = route().narrowed_chunk  # where the asked chunk did not fit in shared memory
                    shown = f"{chunk}" if narrowed is None else f"{chunk} (narrowed to {narrowed})"
                    ms = _median_ms(route)
                    log(f"  sweep route rows={gp * tq} chunk={shown} warps={warps}: {ms:.3f} ms")
                except Exception as exc:  # noqa: BLE001  (a configuration that does not compile)
                    log(f"  sweep route rows={gp * tq} chunk={chunk} warps={warps}: failed {str(exc)[:80]}")
    route = dash_route(q, summ, k.shape[2], **route_kw)
    prior = DashPrior(kbar=summ.kbar, tau=route.tau, mean_log=route.mean_log, max_beta=route.max_beta,
                      route_scale=(p.alpha - 1) * p.scale * run.scale, alpha=p.alpha, sigma=p.sigma,
                      init_blocks=p.init_blocks, local_blocks=p.local_blocks)
    from dash_eval.kernels._triton.selection import tile_union

    causal = q.shape[2] * (q.shape[2] + 1) // 2 * k.shape[1] * k.shape[0]
    fine_rows = sorted({max(16, gp), 32, 64, 128})
    for rows in fine_rows:
        _, tcount = tile_union(route.words, k.shape[2], block_size=p.block_size, tile_q=max(1, rows // gp))
        visited = float(tcount.sum()) * max(1, rows // gp) * p.block_size / causal
        log(f"  tiles of {rows} rows visit {visited:.3f} of the causal key range per query (union + diagonal)")
    for rows in fine_rows:
        for warps in (4, 8):
            for stages in (2, 3):
                for with_prior in (prior_matters(prior.sigma, q.dtype),):  # as the fine stage decides
                    tq = max(1, rows // gp)
                    kw = dict(block_size=p.block_size, softmax_scale=run.scale, prior=prior if with_prior else None,
                              tile_q=tq, num_warps=warps, num_stages=stages)
                    label = f"  sweep fine rows={gp * tq} warps={warps} stages={stages} prior={with_prior}"
                    try:
                        ms = _median_ms(lambda kw=kw: sparse_attention_from_words(q, k, v, route.words, **kw))
                        log(f"{label}: {ms:.3f} ms")
                    except Exception as exc:  # noqa: BLE001
                        log(f"{label}: failed {str(exc)[:80]}")


def bench_case(
    case: Case, dtype: torch.dtype, baselines: dict, log, flex: bool, sweep: bool = False, decode_copies: int = 0
) -> dict[str, Any]:
    import dash_eval.kernels.triton_backend  # noqa: F401  (registers the kernels)
    import triton

    device = torch.device("cuda")
    q, k, v = structured_inputs(case, dtype, device)
    scale = case.head_dim**-0.5
    key = (case.batch, case.tokens, case.nq, case.q_heads, case.kv_heads, case.head_dim, dtype)
    decode = case.nq < case.tokens
    if key not in baselines:
        baselines[key] = _dense_times(q, k, v, decode, log, decode_copies)
        log(f"  dense: cuDNN {baselines[key]['cudnn']:.3f} ms, flash {baselines[key]['flash']:.3f} ms")
    dense = baselines[key]
    run = SparseRun(case, q, k, v, scale)
    if case.target_sparsity is not None:
        run.calibrate(case.target_sparsity, log)
    out, stats = run.forward(return_stats=True)
    torch.cuda.synchronize()
    verdict = run.check(out, log)
    if sweep and case.method == "dash" and not decode:
        sweep_configs(run, log)
    row = {
        "case": case.name, "method": case.method, "params": json.dumps(run.params.to_dict(), sort_keys=True),
        "batch": case.batch, "tokens": case.tokens, "queries": case.nq, "q_heads": case.q_heads,
        "kv_heads": case.kv_heads,
        "head_dim": case.head_dim, "dtype": str(dtype).replace("torch.", ""), "sparsity": round(stats.sparsity, 5),
        "active_blocks_mean": round(float(stats.active_blocks.float().mean()), 2), "check": verdict,
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "inputs": f"structured random (block topics, 256-query segments, query noise {case.noise})",
        "ms_cudnn": dense["cudnn"], "ms_flash": dense["flash"],
    }
    if not verdict.startswith("ok"):
        row.update(ms=float("nan"), route_ms=float("nan"), ms_flex=float("nan"), visited=float("nan"))
        return row
    row["visited"] = round(_visited(run), 4)
    if decode:  # copies of the inputs, so that the step's reads come from HBM as in a model (_graph_copies)
        kv_bytes = 2 * k.numel() * k.element_size()
        n_copies = _graph_copies(kv_bytes * (1 - stats.sparsity), kv_bytes, decode_copies)
        runs = [run] + [run.copy() for _ in range(n_copies - 1)]
        row["inputs"] += f"; decode timed over {len(runs)} copies of the inputs (L2 {_l2_mb():.0f} MB)"
        row["ms"] = _per_call_ms([r.forward for r in runs])
        row["route_ms"] = _route_time(run, runs)
        del runs
    else:
        row["ms"] = _median_ms(lambda: run.forward())
        row["route_ms"] = _route_time(run)
    row["ms_flex"] = float("nan")
    if flex and case.flex and not decode:
        row["ms_flex"] = _flex_time(q, k, v, _words(run), run.params.block_size, log)
    for name in ("cudnn", "flash", "flex"):
        base = row[f"ms_{name}"]
        row[f"x_{name}"] = round(base / row["ms"], 3) if math.isfinite(base) and row["ms"] > 0 else float("nan")
    return row


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default=None, help=f"named shape set: {', '.join(SHAPE_SETS)} (default smoke)")
    parser.add_argument("--cases", default="", help="comma-separated case names of the set to run (default all)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="input dtype (default bf16)")
    parser.add_argument("--out", default="results/bench.csv",
                        help="CSV file the rows are appended to (default results/bench.csv; one with other columns is "
                        "refused)")
    parser.add_argument("--flex", action="store_true", help="also time FlexAttention where the case asks")
    parser.add_argument("--sweep", action="store_true", help="dash prefill: also time launch configurations")
    parser.add_argument("--batch", type=int, default=0,
                        help="sequences per call for every case (default: each case's own, 1 unless its name says)")
    parser.add_argument("--decode-copies", type=int, default=0, metavar="N",
                        help="decode cases: input copies a timing cycles through so that L2 does not serve the step "
                        "(default 0: enough to read 3x the L2 size a round; 1: one input set, which L2 may serve)")
    parser.add_argument("--list", action="store_true",
                        help="print the cases these options select (no GPU needed) instead of running them")
    parser.add_argument("--noise", type=float, default=None,
                        help="query noise of the inputs for every case (default: each case's own; 0.25 is coherent)")
    own = parser.add_argument_group("cases of your own, instead of a shape set (e.g. --method dash,nsa "
                                    "--tokens 65536 --q-heads 28 --kv-heads 4 --sparsity 0.75)")
    own.add_argument("--method", default="", help=f"comma-separated sparse methods: {', '.join(SPARSE_METHODS)}")
    own.add_argument("--tokens", default="", help="comma-separated lengths (the cached tokens with --decode)")
    own.add_argument("--model", default="", help="take the heads and head dim from this model's config (default, a "
                     "model directory or a hub name)")
    own.add_argument("--q-heads", type=int, default=None, help="query heads (default 32)")
    own.add_argument("--kv-heads", type=int, default=None, help="KV heads (default 2)")
    own.add_argument("--head-dim", type=int, default=None, help="head dim, 16 to 256 (default 128)")
    own.add_argument("--decode", action="store_true", help="one new query against the cache instead of a prefill")
    own.add_argument("--sparsity", default="", help="dash: comma-separated target sparsities its scale is fitted to")
    own.add_argument("--param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                     help="a method parameter (repeatable), e.g. alpha=1.25, nsa.topk=32, block_size=128")


def _own_cases(args: argparse.Namespace) -> list[Case]:
    """The cases that ``--method`` and its flags describe; ValueError names the flag and what it accepts."""
    if args.shapes is not None or args.cases:
        raise ValueError("--method: cases of your own replace a shape set; accepted: --method with --tokens, or "
                         "--shapes / --cases, not both")
    methods = [m.strip() for m in args.method.split(",")]
    bad = [m for m in methods if m not in SPARSE_METHODS]
    if bad:
        raise ValueError(f"--method {args.method!r}: unknown {', '.join(map(repr, bad))}; accepted: "
                         f"{', '.join(SPARSE_METHODS)} (full attention is timed as the baseline of every case)")
    if not args.tokens:
        raise ValueError("--tokens: required with --method; accepted: comma-separated lengths, e.g. 32768,65536")
    tokens = parse_list("--tokens", args.tokens, int, low=2 if args.decode else 1)
    q_heads, kv_heads, head_dim = 32, 2, 128
    source = {"--q-heads": "--q-heads", "--kv-heads": "--kv-heads", "--head-dim": "--head-dim"}
    if args.model:
        given = [f for f, v in (("--q-heads", args.q_heads), ("--kv-heads", args.kv_heads),
                                ("--head-dim", args.head_dim)) if v is not None]
        if given:
            raise ValueError(f"--model {args.model!r} with {', '.join(given)}: --model sets the heads and head dim; "
                             "accepted: one or the other")
        q_heads, kv_heads, head_dim = model_geometry(args.model)
        source = dict.fromkeys(source, f"--model {args.model!r} (its config's heads and head dim)")
    q_heads, kv_heads, head_dim = (q_heads if args.q_heads is None else args.q_heads,
                                   kv_heads if args.kv_heads is None else args.kv_heads,
                                   head_dim if args.head_dim is None else args.head_dim)
    for flag, value, low, high in (("--q-heads", q_heads, 1, None), ("--kv-heads", kv_heads, 1, None),
                                   ("--head-dim", head_dim, 16, 256)):
        parse_list(source[flag], str(value), int, low=low, high=high)
    sparsities = parse_list("--sparsity", args.sparsity, float, low=0.0, high=1.0, open_low=True) \
        if args.sparsity else []
    return custom_cases(methods, tokens, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                        decode=args.decode, sparsities=sparsities, params=parse_params(args.param, methods),
                        flex=args.flex, dtype=DTYPES[args.dtype])


def _cases(args: argparse.Namespace) -> list[Case]:
    """The cases to run, every flag checked; ValueError names the flag and what it accepts."""
    if args.batch < 0:
        raise ValueError(f"--batch {args.batch}: accepted: a positive number of sequences (0: each case's own)")
    if args.noise is not None and not (args.noise >= 0 and math.isfinite(args.noise)):
        raise ValueError(f"--noise {args.noise}: accepted: a finite number >= 0 (0.25 coherent, 1 the default)")
    own = {"--tokens": args.tokens, "--model": args.model, "--q-heads": args.q_heads, "--kv-heads": args.kv_heads,
           "--head-dim": args.head_dim, "--decode": args.decode, "--sparsity": args.sparsity, "--param": args.param}
    given = [flag for flag, value in own.items() if value is not None and value is not False and value not in ("", [])]
    if args.method or given:
        if not args.method:
            raise ValueError(f"{', '.join(given)}: for cases of your own, which need --method (accepted: "
                             f"{', '.join(SPARSE_METHODS)})")
        cases = _own_cases(args)
    else:
        shapes = args.shapes or "smoke"
        if shapes not in SHAPE_SETS:
            raise ValueError(f"--shapes: unknown shape set {shapes!r}; known: {', '.join(SHAPE_SETS)}")
        cases = SHAPE_SETS[shapes]
        if args.cases:
            wanted = {name.strip() for name in args.cases.split(",") if name.strip()}  # "a, b" as "a,b"
            unknown = wanted - {c.name for c in cases}
            if unknown:
                raise ValueError(f"--cases: unknown case(s) {sorted(unknown)} in set {shapes}; known: "
                                 f"{', '.join(c.name for c in cases)}")
            cases = [c for c in cases if c.name in wanted]
    if args.batch:
        cases = [dataclasses.replace(c, batch=args.batch) for c in cases]
    if args.noise is not None:
        cases = [dataclasses.replace(c, noise=args.noise) for c in cases]
    return cases


def _out_problem(path: Path) -> str | None:
    """Why ``--out`` cannot take this run's rows (None when it can). Rows are appended, so an existing CSV must have
    this version's columns. Creates nothing."""
    accepted = "accepted: a new CSV file (its folder is created) or one written by this version of dash-eval bench"
    if path.is_dir():
        return f"--out {str(path)!r} is a directory; {accepted}"
    if path.exists():
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), None)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return f"--out {str(path)!r} cannot be read as a CSV ({exc}); {accepted}"
        if header is not None and header != FIELDS:
            shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
            return f"--out {str(path)!r} has other columns ({shown}); rows are appended under its header; {accepted}"
        if not os.access(path, os.W_OK):
            return f"--out {str(path)!r} is not writable; {accepted}"
        return None
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"--out {str(path)!r}: {str(folder)!r} is not a folder; {accepted}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--out {str(path)!r}: the folder {str(folder)!r} is not writable; {accepted}"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        cases = _cases(args)
    except ValueError as exc:
        print(f"dash-eval bench: {exc}", file=sys.stderr)
        return 2
    if args.decode_copies < 0 or args.decode_copies > 256:
        print(f"dash-eval bench: --decode-copies {args.decode_copies}; accepted: 0 (automatic) or 1 to 256",
              file=sys.stderr)
        return 2
    if args.list:
        print(describe_cases(cases))
        return 0
    out_path = Path(args.out)
    if (problem := _out_problem(out_path)) is not None:
        print(f"dash-eval bench: {problem}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("dash-eval bench: needs a CUDA GPU, and torch sees none (the kernels are checked on the CPU by the "
              "tests; --list prints the cases without a GPU)", file=sys.stderr)
        return 2
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fh = out_path.open("a", newline="")
    except OSError as exc:
        print(f"dash-eval bench: --out {args.out!r} cannot be written ({exc})", file=sys.stderr)
        return 2
    new = fh.tell() == 0  # a new or empty file gets the header
    baselines: dict = {}
    failed = 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    with fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for case in cases:
            t0 = time.time()
            log(f"[{case.name}] {case.method} B={case.batch} N={case.tokens} Nq={case.nq} Hq={case.q_heads} "
                f"Hkv={case.kv_heads} D={case.head_dim}")
            try:
                row = bench_case(case, DTYPES[args.dtype], baselines, log, args.flex, args.sweep, args.decode_copies)
            except torch.cuda.OutOfMemoryError as exc:
                log(f"  out of memory: {str(exc).splitlines()[0][:200]}")
                failed += 1
                torch.cuda.empty_cache()
                continue
            failed += not str(row["check"]).startswith("ok")
            writer.writerow(row)
            fh.flush()
            log(f"  {row['ms']:.3f} ms (route {row['route_ms']:.3f}) sparsity {row['sparsity']:.3f} "
                f"visited {row.get('visited', float('nan'))}: "
                f"x{row.get('x_cudnn', float('nan'))} vs cuDNN, x{row.get('x_flash', float('nan'))} vs flash, "
                f"x{row.get('x_flex', float('nan'))} vs flex  [{time.time() - t0:.0f}s]")
            del row
            torch.cuda.empty_cache()
    return 1 if failed else 0
