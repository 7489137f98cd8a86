"""Startup hook that lets a plain ``lm_eval`` command find the ``dash`` model and this project's tasks.

lm-eval 0.4.13 has no plugin mechanism for models, and its registry fills itself with the built-in
models only when it is still empty (``get_model`` imports ``lm_eval.models`` when ``len(registry) == 0``),
so registering ``dash`` any earlier would hide ``hf`` and every other built-in model. This module is
therefore run from a ``.pth`` file at interpreter start (see ``setup.py``) and installs one small
import hook that waits for lm-eval's own modules and acts right after each one has finished loading:

- ``lm_eval.models``: adds ``dash`` as a lazy placeholder (``dash_eval.evals.lm_model:DashLM``), after the
  built-in names and only if no one (an ``lm_eval.models`` entry point, say) has registered it already.
- ``lm_eval.tasks.manager``: a ``TaskManager`` that includes lm-eval's default tasks also indexes
  ``dash_eval.tasks.lm_eval_task_dir()``, between the defaults and any ``--include_path``.
- ``lm_eval.evaluator``: ``evaluate`` lets a model that offers ``dash_annotate_results`` add its
  measured sparsity to the results it returns (only ``DashLM`` does); for every other model the
  results are returned untouched.

Nothing here imports lm-eval, torch or transformers at start-up (the module imports only what the
interpreter has loaded already); until lm-eval is imported the hook costs one dictionary lookup per
import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

MODEL_NAME = "dash"
MODEL_TARGET = "dash_eval.evals.lm_model:DashLM"
ANNOTATE_ATTR = "dash_annotate_results"


def _warn(message: str, *args, exc_info: bool = False) -> None:
    import logging

    logging.getLogger(__name__).warning(message, *args, exc_info=exc_info)


def _register_model(module: ModuleType) -> None:
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def _project_task_dir() -> Path | None:
    try:
        from dash_eval.tasks import lm_eval_task_dir
    except ImportError as exc:
        _warn("dash-eval: this project's lm-eval tasks are not indexed: %s", exc)
        return None
    path = lm_eval_task_dir()
    return path if path.is_dir() else None


def _add_task_dir(module: ModuleType) -> None:
    import functools
    import inspect

    manager_cls = module.TaskManager
    original = manager_cls.__init__
    if getattr(original, "_dash_eval_wrapped", False):
        return
    signature = inspect.signature(original)
    if "include_path" not in signature.parameters:
        _warn("dash-eval: this lm-eval's TaskManager takes no include_path; tasks not added")
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        task_dir = _project_task_dir() if bound.arguments.get("include_defaults", True) else None
        if task_dir is not None:
            given = bound.arguments["include_path"]
            given = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
            # After lm-eval's defaults, before the user's paths, so that a user's task of the same name wins.
            if task_dir.resolve() not in {Path(p).expanduser().resolve() for p in given}:
                bound.arguments["include_path"] = [task_dir, *given]
        original(*bound.args, **bound.kwargs)

    __init__._dash_eval_wrapped = True
    manager_cls.__init__ = __init__


def _annotate_results(module: ModuleType) -> None:
    import functools
    import inspect

    original = module.evaluate
    if getattr(original, "_dash_eval_wrapped", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def evaluate(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        # CachingLM forwards attribute look-ups to the model it wraps, so this finds DashLM there too.
        annotate = getattr(bound.arguments.get("lm"), ANNOTATE_ATTR, None)
        if not callable(annotate):
            return original(*args, **kwargs)
        samples = bound.arguments.get("samples")
        try:
            results = original(*args, **kwargs)
        except BaseException:
            annotate(None, samples=samples)  # forget this evaluation's records
            raise
        return annotate(results, samples=samples)

    evaluate._dash_eval_wrapped = True
    module.evaluate = evaluate


AFTER_IMPORT: dict[str, Callable[[ModuleType], None]] = {  # module name -> run right after it loads
    "lm_eval.models": _register_model,
    "lm_eval.tasks.manager": _add_task_dir,
    "lm_eval.evaluator": _annotate_results,
}


class _RunAfterExec:
    """Wraps a module's loader: executes the module, then the callback on it."""

    def __init__(self, loader, callback: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # The hook must never be what breaks lm-eval: a failure only loses the added names.
        try:
            self._callback(module)
        except Exception:
            _warn("dash-eval: post-import hook for %s failed", module.__name__, exc_info=True)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _PostImportFinder:
    """A meta path finder that finds nothing itself: for the watched names it asks the finders after it
    and wraps the loader of the spec they return."""

    def find_spec(self, fullname: str, path=None, target=None):
        callback = AFTER_IMPORT.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RunAfterExec(spec.loader, callback)
        return spec

    def invalidate_caches(self) -> None:
        pass


def install() -> None:
    """Install the hook (idempotent). Modules of lm-eval imported before this get the same treatment now."""
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
    for name, callback in AFTER_IMPORT.items():
        module = sys.modules.get(name)
        if module is not None:
            callback(module)
