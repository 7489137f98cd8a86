"""How well does a DashAttention router find the needle's blocks? A routing probe on needle prompts.

For a few ``niah_single`` prompts (a seed the sweeps do not use), the model runs once with full attention
and the probe looks at chosen query positions of every layer: the last 16 prompt positions (``--where
prompt``) or the answer's positions with the true answer appended (``--where answer``, what decoding
sees). For each router (``mean`` for mean pooling, or a router directory) it reports, per layer:

- at an equal routed fraction in every layer (``--budget``, the scale bisected per layer): the recall of
  full attention's routable block mass, and how often the block holding the most mass is routed;
- at one global scale (what the ``dash`` method has), bisected so that the mean routed fraction over
  layers equals the budget: the same two figures and each layer's routed fraction.

    python scripts/router_needle_probe.py --where answer mean results/routers/smollm2-135m-b32 \\
        --block-size 32 --init-blocks 2 --local-blocks 4
"""

from __future__ import annotations

import argparse

import torch
from dash_eval.dash_models import load_model
from dash_eval.dash_models import router_fit as rf
from dash_eval.dash_models.router import load_router_file
from dash_eval.tasks import generate_samples, render_prompt


def top_hit(batch: rf.Batch, routed: torch.Tensor) -> torch.Tensor:
    """Per layer: the mass-weighted share of queries whose most-attended routable block is routed."""
    top = batch.target.argmax(-1, keepdim=True)
    hit = routed.gather(-1, top).squeeze(-1).float()
    w = batch.weight
    return (hit * w).sum((0, 2, 3)) / w.sum((0, 2, 3)).clamp(min=1e-30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("routers", nargs="+", help="'mean' or router directories")
    ap.add_argument("--where", choices=("prompt", "answer"), default="answer")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--init-blocks", type=int, default=1)
    ap.add_argument("--local-blocks", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.25)
    args = ap.parse_args()

    model, tok = load_model("default")
    settings = rf.FitSettings(tokens=args.length, block_size=args.block_size, init_blocks=args.init_blocks,
                              local_blocks=args.local_blocks, budget=args.budget)
    samples = generate_samples("niah_single", length=args.length, n=args.samples, seed=args.seed, tokenizer=tok)
    figures: dict[str, list[list[torch.Tensor]]] = {r: [] for r in args.routers}
    for s in samples:
        ids = tok(render_prompt(s.input, s.answer_prefix, tok, False), return_tensors="pt").input_ids
        n_q = 16
        if args.where == "answer":
            ans = tok(" " + s.outputs[0] + ".", add_special_tokens=False, return_tensors="pt").input_ids
            ids, n_q = torch.cat([ids, ans], 1), ans.shape[1]
        n = ids.shape[1]
        positions = torch.arange(n - n_q, n)
        rf.sample_positions = lambda _s, _n, p=positions: (p, torch.ones(p.numel(), dtype=torch.bool))
        cap = rf.capture(model, ids, settings, progress=False)
        batch = rf.make_batch(cap, torch.arange(n_q), settings)
        hkv, d = cap.keys.shape[2], cap.keys.shape[-1]
        for r in args.routers:
            u = None
            if r != "mean":
                routers = load_router_file(r)
                u = torch.stack([routers[layer].reshape(hkv, d) for layer in cap.layers])
            with torch.no_grad():
                kbar = rf.block_summaries(cap, u, args.block_size)
                rec_eq, _, s_eq = rf.recall_at_fraction(cap, batch, kbar, settings)
                routed_eq = rf.routed_sets(cap, batch, kbar, s_eq[:, None].expand(-1, hkv), settings.alpha)
                s_g = torch.full((len(cap.layers), hkv), rf.global_scale_at_fraction(cap, batch, kbar, settings))
                routed_g = rf.routed_sets(cap, batch, kbar, s_g, settings.alpha)
                rec_g, frac_g = rf.recall_and_fraction(batch, routed_g)
            figures[r].append([rec_eq, top_hit(batch, routed_eq), rec_g, top_hit(batch, routed_g), frac_g])
    deep = slice(len(cap.layers) * 2 // 5, None)
    print(f"{args.samples} niah_single prompts at {args.length} tokens (seed {args.seed}), {args.where} positions, "
          f"budget {args.budget:g}; 'deep' = layers {deep.start}-{len(cap.layers) - 1}")
    for r in args.routers:
        rec_eq, hit_eq, rec_g, hit_g, frac_g = (torch.stack(x).mean(0) for x in zip(*figures[r]))
        print(f"\n{r}")
        print(f"  equal fraction per layer: recall {rec_eq.mean():.3f} (deep {rec_eq[deep].mean():.3f}), "
              f"top block routed {hit_eq.mean():.3f} (deep {hit_eq[deep].mean():.3f})")
        print(f"  one global scale:         recall {rec_g.mean():.3f} (deep {rec_g[deep].mean():.3f}), "
              f"top block routed {hit_g.mean():.3f} (deep {hit_g[deep].mean():.3f})")
        print("  routed fraction per layer at the global scale: " + " ".join(f"{x:.2f}" for x in frac_g.tolist()))
        print("  top block routed per layer at the global scale: " + " ".join(f"{x:.2f}" for x in hit_g.tolist()))


if __name__ == "__main__":
    main()
