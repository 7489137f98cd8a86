"""Functions the dash YAML configs name with ``!function utils.NAME`` (lm-eval loads this file by path)."""

from dash_eval.tasks.lm_eval_support import generated_dataset, jsonl_dataset, process_results

__all__ = ["generated_dataset", "jsonl_dataset", "process_results"]
