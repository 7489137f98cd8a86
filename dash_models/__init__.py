"""Hugging Face integration: loading models (the embedded default included) with a sparse attention method."""

from dash_eval.dash_models.embedded import DEFAULT_MODEL_NAME, embedded_model_path, resolve_model_path

__all__ = ["DEFAULT_MODEL_NAME", "embedded_model_path", "resolve_model_path"]
