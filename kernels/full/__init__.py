"""``full``: plain causal softmax attention, the baseline every sparse method is compared against."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from dash_eval.kernels.common import query_positions, sdpa_any_length
from dash_eval.kernels.registry import AttentionMethod, MethodParams, register_method
from dash_eval.kernels.stats import AttentionStats, causal_pairs_of, counts_deferred


@dataclasses.dataclass(frozen=True)
class FullParams(MethodParams):
    """``block_size`` only sets the granularity of the reported ``active_blocks``."""


def full_attention_stats(b: int, hkv: int, nq: int, nk: int, block_size: int, device) -> AttentionStats:
    causal = causal_pairs_of(nk - nq, nq) * hkv
    active = (query_positions(nq, nk, device) // block_size + 1).to(torch.int64).expand(b, hkv, nq)
    return AttentionStats(
        attended_pairs=causal * b,
        causal_pairs=causal * b,
        routing_scores=0,
        active_blocks=active.clone(),
        valid_queries=torch.ones(b, nq, dtype=torch.bool, device=device),
        # inside deferred_counts, beside the other rows' counts on the device (a padded batch writes them there)
        attended_per_row=torch.full((b,), causal, dtype=torch.int64, device=device if counts_deferred() else None),
        causal_per_row=torch.full((b,), causal, dtype=torch.int64),
        block_size=block_size,
    )


@register_method("full")
class FullAttention(AttentionMethod):
    params_cls = FullParams

    def reference(self, q, k, v, params, *, softmax_scale, return_stats):
        b, hq, nq, _ = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        if nq == nk:  # a prefill: PyTorch's own choice (cuDNN's where available: the fastest once planned,
            # though each new length costs it a plan)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=softmax_scale, enable_gqa=True)
        elif nq == 1:  # one decode query, the last position: it sees every key, no mask to build
            out = sdpa_any_length(q, k, v, scale=softmax_scale, enable_gqa=True)
        else:
            pos = query_positions(nq, nk, q.device)
            mask = torch.arange(nk, device=q.device)[None, :] <= pos[:, None]
            # masked with GQA: only cuDNN and math take it, and math is far slower and larger (sdpa_any_length)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale, enable_gqa=True)
        stats = full_attention_stats(b, hkv, nq, nk, params.block_size, q.device) if return_stats else None
        return out, stats
