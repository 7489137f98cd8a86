"""``nsa``: Native Sparse Attention (arXiv 2502.11089) in its training-free form: the compressed branch
is off (``g_cmp = 0``) and the sliding window joins the selection softmax."""

from __future__ import annotations

import dataclasses

from dash_eval.kernels._topk_params import TopkParams
from dash_eval.kernels.nsa.naive import nsa_attention_naive, nsa_select
from dash_eval.kernels.registry import AttentionMethod, check_int, register_method


@dataclasses.dataclass(frozen=True)
class NSAParams(TopkParams):
    local_blocks: int = 2
    topk: int = 13
    window: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.method_name, "window", self.window, minimum=0)


@register_method("nsa")
class NSAAttention(AttentionMethod):
    params_cls = NSAParams

    def reference(self, q, k, v, params, *, softmax_scale, return_stats):
        return nsa_attention_naive(
            q, k, v, softmax_scale=softmax_scale, return_stats=return_stats, **params.to_dict()
        )


__all__ = ["NSAAttention", "NSAParams", "nsa_attention_naive", "nsa_select"]
