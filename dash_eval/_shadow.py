"""The checkout's folders ``kernels/``, ``tasks/`` and ``evals/`` are ``dash_eval.kernels``, ``dash_eval.tasks`` and
``dash_eval.evals`` (setup.py maps them); their bare names belong to other projects (Hugging Face's ``kernels``, which
transformers imports when it is installed; OpenAI's ``evals``) and are never installed by this one. Where the
checkout's root is on ``sys.path`` (``python -m pytest`` or ``python -c`` run there, or a script that puts it there),
``import kernels`` would still find the folder, and transformers, asking for its hub kernels, would get ours and fail.

So each of those folders, imported under its bare name, stands aside: the package of that name from elsewhere (any
finder, any ``sys.path`` entry that is not a dash-eval checkout) takes its place, or, where there is none, an empty
namespace-like module without a file, which importers read as absent (transformers' own test for such shadowing)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types


def _checkout(entry: str) -> bool:
    """Whether a ``sys.path`` entry is the root of a dash-eval checkout (this one or another)."""
    return os.path.isfile(os.path.join(entry or os.getcwd(), "dash_eval", "_shadow.py"))


def _find_elsewhere(name: str) -> importlib.machinery.ModuleSpec | None:
    elsewhere = [p for p in sys.path if isinstance(p, str) and not _checkout(p)]
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            spec = finder.find_spec(name, elsewhere)
        elif hasattr(finder, "find_spec"):
            spec = finder.find_spec(name, None)  # an editable install's finder, say
        else:
            continue
        if spec is None or spec.loader is None:
            continue
        if spec.origin and _checkout(os.path.dirname(os.path.dirname(spec.origin))):
            continue  # a checkout's folder, found by a finder of its own
        return spec
    return None


def stand_aside(name: str) -> None:
    """Put what ``import <name>`` should give in ``sys.modules[name]``; called by the folder's ``__init__`` while it
    is imported under the bare ``name`` (the import statement returns whatever ``sys.modules`` then holds)."""
    spec = _find_elsewhere(name)
    if spec is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return
    stub = types.ModuleType(name, f"Not {name!r}: a dash-eval checkout's {name}/ folder is dash_eval.{name}.")
    stub.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    stub.__path__ = []
    sys.modules[name] = stub
