"""How much a query tile's union of `dash` selections costs on a real model, against the benchmark's inputs.

The fine stage walks, for each tile of queries, every block that any of its queries selected
(docs/perf-notes.md, "Query-tile height against the union"). On `dash-eval bench`'s structured random inputs
a tile of 4 queries (32 query heads over 2 KV heads: 64 rows) walks 0.59 of the causal range at 75% per-query
sparsity, and a tile of 16 queries (8 KV heads) 0.83. This script measures the same fraction on the embedded
model's own queries and keys: a needle-in-a-haystack prompt (essay haystack) runs through SmolLM2-135M with
`dash` at its defaults while each layer's rotated queries and keys are recorded; then one routing `scale` is
bisected until the selection of all layers together is 75% (or `--sparsity`) sparse (METHODS.md's measure),
and the visited fraction is counted for tiles of 1, 2, 4, 8 and 16 queries (the GQA group shares the selection,
so the union depends only on the queries per tile), as `dash-eval bench` counts it.

`--inputs bench` (or `bench-coherent`) takes `dash-eval bench`'s structured random inputs of that length
instead (32 query heads over `--kv-heads`, head dim 128). `--reorder W` adds columns for tiles of 4 and 16
queries formed not of neighbours but greedily, within each window of `W` queries, from queries that selected
the same blocks: what a fine stage that permutes its queries by selection could walk (docs/perf-notes.md,
session 18).

    python scripts/union_on_model.py --tokens 4096 [--sparsity 0.75] [--block-size 64] [--reorder 256]
    python scripts/union_on_model.py --inputs bench --tokens 8192 --kv-heads 2 --reorder 256

CPU only, about a minute on 2 cores. Prints a table per layer group and the whole model.
"""

from __future__ import annotations

import argparse
import math

import torch
from dash_eval.dash_models import apply_attention, load_model
from dash_eval.dash_models import patch as patch_module
from dash_eval.kernels.common import num_blocks
from dash_eval.kernels.dash.naive import dash_block_summaries, dash_route
from dash_eval.tasks import generate_samples

TILES = (1, 2, 4, 8, 16)


Layers = list[tuple[torch.Tensor, torch.Tensor, float]]  # each layer's (q, k, softmax scale)


def capture(tokens: int) -> tuple[Layers, int]:
    """Each layer's (q, k, softmax scale) on a needle prompt of about ``tokens`` tokens."""
    model, tokenizer = load_model("default", method="full")
    sample = generate_samples("niah_single", length=tokens, n=1, seed=0, tokenizer=tokenizer, haystack="essay")[0]
    ids = tokenizer(sample.prompt(), return_tensors="pt").input_ids
    apply_attention(model, "dash")
    seen: Layers = []
    original = patch_module.sparse_attention

    def recording(query, key, value, method, **kw):
        seen.append((query.detach().clone(), key.detach().clone(), kw.get("softmax_scale") or query.shape[-1] ** -0.5))
        return original(query, key, value, method, **kw)

    patch_module.sparse_attention = recording
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        patch_module.sparse_attention = original
    return seen, ids.shape[1]


def bench_layers(tokens: int, kv_heads: int, coherent: bool) -> tuple[Layers, int]:
    """``dash-eval bench``'s structured random q and k (float32) as one layer."""
    from dash_eval.kernels.bench_cases import Case, structured_inputs

    case = Case("union", "dash", tokens, kv_heads=kv_heads, noise=0.25 if coherent else 1.0)
    q, k, _ = structured_inputs(case, torch.float32, torch.device("cpu"))
    return [(q, k, q.shape[-1] ** -0.5)], tokens


def selections(layers, scale: float, block_size: int) -> list[torch.Tensor]:
    """Per layer ``[Hkv, N, nblocks]`` bool: the routed or forced blocks of every query at routing ``scale``."""
    out = []
    for q, k, softmax_scale in layers:
        b, hq, n, d = q.shape
        hkv = k.shape[1]
        kbar = dash_block_summaries(k, None, block_size, softmax_scale)
        qg = q.view(b, hkv, hq // hkv, n, d)
        parts = []
        for s in range(0, n, 1024):  # chunks of queries: the scores of a long prompt at once need gigabytes
            sel, _, _ = dash_route(qg[:, :, :, s : s + 1024], kbar, torch.arange(s, min(n, s + 1024)),
                                   num_blocks(n, block_size), alpha=1.5, scale=scale, sigma=1e6, init_blocks=0,
                                   local_blocks=1, block_size=block_size, softmax_scale=softmax_scale)
            parts.append(sel[0])
        out.append(torch.cat(parts, 1))
    return out


def block_keys(n: int, nblocks: int, block_size: int) -> torch.Tensor:
    """``[N, nblocks]``: the causal keys of block ``j`` that query ``i`` may attend."""
    i = torch.arange(n)[:, None]
    start = torch.arange(nblocks)[None, :] * block_size
    return (i - start + 1).clamp(min=0, max=block_size)


def sparsity(sels: list[torch.Tensor], block_size: int) -> float:
    attended = causal = 0
    for sel in sels:
        hkv, n, nb = sel.shape
        keys = block_keys(n, nb, block_size)
        attended += int((sel * keys).sum())
        causal += hkv * n * (n + 1) // 2
    return 1 - attended / causal


def visited(sels: list[torch.Tensor], tile: int, block_size: int) -> float:
    """``dash-eval bench``'s ``visited``: blocks in the union of each tile, times the tile's queries and the
    block size, over the causal pairs (at most 1)."""
    walked = causal = 0
    for sel in sels:
        hkv, n, nb = sel.shape
        pad = (-n) % tile
        s = torch.nn.functional.pad(sel, (0, 0, 0, pad)).view(hkv, -1, tile, nb)
        walked += int(s.any(2).sum()) * tile * block_size
        causal += hkv * n * (n + 1) // 2
    return min(1.0, walked / causal)


def greedy_tiles(sel: torch.Tensor, tile: int, window: int) -> torch.Tensor:
    """``[N]``: an order of the queries of ``sel: [N, nblocks]`` (one KV head) whose consecutive runs of ``tile``
    form the tiles. Within each window of ``window`` queries, the earliest query not yet placed opens a tile
    and the tile takes, one at a time, the queries that add the fewest blocks to its union."""
    n = sel.shape[0]
    order = []
    for start in range(0, n, window):
        s = sel[start : start + window].float()
        left = list(range(s.shape[0]))
        while left:
            group = [left.pop(0)]
            union = s[group[0]].clone()
            while len(group) < tile and left:
                added = (s[left] * (1 - union)).sum(1)
                group.append(left.pop(int(added.argmin())))
                union = torch.maximum(union, s[group[-1]])
            order.extend(start + i for i in group)
    return torch.tensor(order)


def reordered_visited(sels: list[torch.Tensor], tile: int, window: int, block_size: int) -> float:
    """``visited`` for tiles formed by ``greedy_tiles`` (each KV head on its own)."""
    return visited([torch.stack([h[greedy_tiles(h, tile, window)] for h in sel]) for sel in sels], tile, block_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--sparsity", type=float, default=0.75)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--inputs", choices=("model", "bench", "bench-coherent"), default="model")
    parser.add_argument("--kv-heads", type=int, default=None, help="--inputs bench: KV heads of 32 query heads (2)")
    parser.add_argument("--reorder", type=int, default=0, metavar="W",
                        help="also count tiles of 4 and 16 queries grouped by selection within windows of W queries")
    args = parser.parse_args()
    if not 0 < args.sparsity < 1:
        parser.error(f"--sparsity {args.sparsity}: accepted: a fraction strictly between 0 and 1")
    if args.block_size < 1 or args.tokens < 2 * args.block_size:
        parser.error(f"--tokens {args.tokens} --block-size {args.block_size}: accepted: a positive block size and at "
                     "least two blocks of tokens")
    if args.inputs == "model" and args.kv_heads is not None:
        parser.error("--kv-heads: the model has its own heads; accepted only with --inputs bench or bench-coherent")
    args.kv_heads = 2 if args.kv_heads is None else args.kv_heads
    if args.kv_heads not in (1, 2, 4, 8, 16, 32):
        parser.error(f"--kv-heads {args.kv_heads}: accepted: a divisor of the 32 query heads")
    if args.reorder < 0 or (args.reorder and args.reorder % 16):
        parser.error(f"--reorder {args.reorder}: accepted: 0 (off) or a positive multiple of 16 queries")
    if args.inputs == "model":
        layers, n = capture(args.tokens)
    else:
        layers, n = bench_layers(args.tokens, args.kv_heads, args.inputs == "bench-coherent")
    lo, hi = -4.0, 10.0  # log2(scale)
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        sp = sparsity(selections(layers, 2.0**mid, args.block_size), args.block_size)
        if best is None or abs(sp - args.sparsity) < abs(best[1] - args.sparsity):
            best = (mid, sp)
        if abs(sp - args.sparsity) < 0.002:
            break
        lo, hi = (mid, hi) if sp < args.sparsity else (lo, mid)
    scale = 2.0 ** best[0]
    sels = selections(layers, scale, args.block_size)
    source = (f"SmolLM2-135M-Instruct (embedded), {n} tokens (niah_single, essay haystack)" if args.inputs == "model"
              else f"dash-eval bench's {args.inputs} inputs, {n} tokens, 32 query heads over {args.kv_heads} KV heads")
    print(f"# {source}, block {args.block_size}, alpha 1.5, mean-pooled summaries; one scale {scale:.4g} for all "
          f"layers -> sparsity {sparsity(sels, args.block_size):.3f}")
    reordered = (4, 16) if args.reorder else ()
    print("| layers | sparsity | " + " | ".join(f"visited, {t}-query tiles" for t in TILES)
          + "".join(f" | {t} grouped by selection (window {args.reorder})" for t in reordered) + " |")
    print("|---|---:|" + "---:|" * (len(TILES) + len(reordered)))
    groups = [(f"{a}-{min(a + 9, len(sels) - 1)}", sels[a : a + 10]) for a in range(0, len(sels), 10)]
    for name, group in [*groups, ("all", sels)] if len(sels) > 1 else [("all", sels)]:
        cells = [f"{visited(group, t, args.block_size):.3f}" for t in TILES]
        cells += [f"{reordered_visited(group, t, args.reorder, args.block_size):.3f}" for t in reordered]
        print(f"| {name} | {sparsity(group, args.block_size):.3f} | {' | '.join(cells)} |")
    if not math.isfinite(scale):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
