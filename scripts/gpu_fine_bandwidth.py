# ruff: noqa: I001  (the path setup must run before the package imports)
"""How fast decode's fine stage streams the selected blocks, against dense decode reading the same bytes.

One query (per sequence) against a 131,072-token bf16 cache, 32 query heads, head dim 128, blocks of 64 keys.
The selection is given, not routed: a fraction ``d`` of each KV head's blocks, either scattered at random or the
first ``d`` of the cache (contiguous), the current block always in. Timed with CUDA graphs: the fine stage and its
combine (the visit lists are built once, outside the timing), and cuDNN decode over a cache of ``d`` x 131,072
tokens, which reads the same K and V bytes. Each selection is checked against the reference on the CPU first.

    python scripts/gpu_fine_bandwidth.py                 # densities x patterns x 2 / 8 KV heads
    python scripts/gpu_fine_bandwidth.py --settings      # also DECODE_STAGES x DECODE_PROGRAMS_PER_SM at d=0.25

Prints one line per configuration: us, GB moved, TB/s, and the ratio to cuDNN's time for the same bytes.
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

from dash_eval.kernels.bench import _median_ms, _sdpa  # noqa: E402

TOKENS, HQ, D, BS = 131072, 32, 128, 64
DENSITIES = (0.125, 0.25, 0.5, 1.0)


def selection(hkv: int, density: float, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """``[1, hkv, 1, nblocks]`` bool: ``density`` of the blocks, scattered or the first ones, the last one in."""
    nb = TOKENS // BS
    want = max(1, round(density * nb))
    sel = torch.zeros(1, hkv, 1, nb, dtype=torch.bool)
    for h in range(hkv):
        if pattern == "random":
            idx = torch.randperm(nb - 1, generator=gen)[: want - 1]
        else:
            idx = torch.arange(want - 1)
        sel[0, h, 0, idx] = True
    sel[..., -1] = True
    return sel


def fine_time(q, k, v, sel, splits=None) -> float:
    from dash_eval.kernels._triton.block_sparse import decode_splits, default_tile_q, sparse_attention_from_words
    from dash_eval.kernels._triton.selection import pack_selection, tile_union

    words = pack_selection(sel).cuda()
    splits = decode_splits(q, k, BS) if splits is None else splits
    tile_q = default_tile_q(q.shape[1] // k.shape[1], 1)
    tiles = tile_union(words, k.shape[2], block_size=BS, tile_q=tile_q)
    kw = dict(block_size=BS, softmax_scale=D**-0.5, splits=splits, tiles=tiles, tile_q=tile_q)
    return _median_ms(lambda: sparse_attention_from_words(q, k, v, words, **kw), graph=True) * 1e3


def check(q, k, v, sel) -> float:
    from dash_eval.kernels._triton.block_sparse import decode_splits, sparse_attention_from_words
    from dash_eval.kernels._triton.selection import pack_selection
    from dash_eval.kernels.common import block_sparse_attention

    words = pack_selection(sel).cuda()
    out = sparse_attention_from_words(q, k, v, words, block_size=BS, softmax_scale=D**-0.5,
                                      splits=decode_splits(q, k, BS))
    ref = block_sparse_attention(q.float().cpu(), k.float().cpu(), v.float().cpu(), sel, None, block_size=BS,
                                 softmax_scale=D**-0.5)
    return float((out.float().cpu() - ref).norm() / ref.norm())


def main() -> int:
    from dash_eval.kernels._triton import block_sparse

    settings = "--settings" in sys.argv[1:]
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    cudnn = _sdpa("cudnn")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; decode fine stage + combine, "
          f"{TOKENS} cached tokens, {HQ} query heads, head dim {D}, bf16")
    print("kv heads | pattern | density | us | GB | TB/s | cuDNN us (same bytes) | x cuDNN | check")
    for hkv in (2, 8):
        q = torch.randn(1, HQ, 1, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, hkv, TOKENS, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, hkv, TOKENS, D, device=dev, dtype=torch.bfloat16)
        for density in DENSITIES:
            n = round(density * TOKENS)
            kk, vv = k[:, :, :n].contiguous(), v[:, :, :n].contiguous()
            dense_us = _median_ms(lambda q=q, kk=kk, vv=vv: cudnn(q, kk, vv), graph=True) * 1e3
            for pattern in ("random", "contiguous"):
                if density == 1.0 and pattern == "contiguous":
                    continue
                sel = selection(hkv, density, pattern, gen)
                err = check(q, k, v, sel)
                us = fine_time(q, k, v, sel)
                gb = int(sel.sum()) * BS * D * 2 * 2 / 1e9
                print(f"{hkv} | {pattern} | {density} | {us:.2f} | {gb:.3f} | {gb * 1e3 / us:.2f} | "
                      f"{dense_us:.2f} | {dense_us / us:.2f} | rel err {err:.1e}")
        if settings:
            sel = selection(hkv, 0.25, "random", gen)
            default = (block_sparse.DECODE_STAGES, block_sparse.DECODE_PROGRAMS_PER_SM)
            print(f"## {hkv} KV heads, density 0.25 random: DECODE_STAGES x DECODE_PROGRAMS_PER_SM (us)")
            for stages in (2, 3, 4, 5):
                block_sparse.DECODE_STAGES = stages
                row = []
                for per_sm in (1, 2, 3, 4):
                    block_sparse.DECODE_PROGRAMS_PER_SM = per_sm
                    row.append(f"{fine_time(q, k, v, sel):.2f}")
                print(f"  stages {stages}: " + " / ".join(row) + "  (1 / 2 / 3 / 4 programs per SM)")
            block_sparse.DECODE_STAGES, block_sparse.DECODE_PROGRAMS_PER_SM = default
    return 0


if __name__ == "__main__":
    sys.exit(main())
