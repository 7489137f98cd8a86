"""``infllmv2``: InfLLM-V2 (arXiv 2509.24663) training-free block selection, no added parameters."""

from __future__ import annotations

import dataclasses

from dash_eval.kernels._topk_params import TopkParams
from dash_eval.kernels.infllmv2.naive import infllmv2_attention_naive, infllmv2_select, topk_block_select
from dash_eval.kernels.registry import AttentionMethod, register_method


@dataclasses.dataclass(frozen=True)
class InfLLMv2Params(TopkParams):
    """Defaults are the MiniCPM4 setting (METHODS.md)."""


@register_method("infllmv2")
class InfLLMv2Attention(AttentionMethod):
    params_cls = InfLLMv2Params

    def reference(self, q, k, v, params, *, softmax_scale, return_stats):
        return infllmv2_attention_naive(
            q, k, v, softmax_scale=softmax_scale, return_stats=return_stats, **params.to_dict()
        )


__all__ = [
    "InfLLMv2Attention", "InfLLMv2Params", "infllmv2_attention_naive", "infllmv2_select", "topk_block_select",
]
