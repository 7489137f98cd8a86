"""Hugging Face integration: loading causal LMs (the embedded default included) with a sparse
attention method, the per-model sparsity tally, and DashAttention routers."""

from dash_eval.dash_models.embedded import DEFAULT_MODEL_NAME, embedded_model_path, resolve_model_path
from dash_eval.dash_models.loading import load_model
from dash_eval.dash_models.patch import (
    SUPPORTED_MODEL_TYPES,
    apply_attention,
    current_attention,
    get_tally,
    patch_attention,
    remove_attention,
)
from dash_eval.dash_models.router import attach_routers, load_router_file, model_routers
from dash_eval.dash_models.tally import SparsityTally

__all__ = [
    "DEFAULT_MODEL_NAME",
    "SUPPORTED_MODEL_TYPES",
    "SparsityTally",
    "apply_attention",
    "attach_routers",
    "current_attention",
    "embedded_model_path",
    "get_tally",
    "load_model",
    "load_router_file",
    "model_routers",
    "patch_attention",
    "remove_attention",
    "resolve_model_path",
]
