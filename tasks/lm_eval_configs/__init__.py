"""lm-eval task configs for the dash tasks (YAML beside ``utils.py``); point lm-eval here with
``--include_path`` (``dash_eval.tasks.lm_eval_task_dir()``)."""
