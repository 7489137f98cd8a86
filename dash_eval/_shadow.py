"""The checkout's folders ``kernels/``, ``tasks/`` and ``evals/`` are ``dash_eval.kernels``, ``dash_eval.tasks`` and
``dash_eval.evals`` (setup.py maps them); their bare names belong to other projects (Hugging Face's ``kernels``, which
transformers imports when it is installed; OpenAI's ``evals``) and are never installed by this one. Where the
checkout's root is on ``sys.path`` (``python -m pytest`` or ``python -c`` run there, or a script that puts it there),
``import kernels`` would still find the folder, and transformers, asking for its hub kernels, would get ours and fail.

So each of those folders, imported under its bare name, stands aside: the package of that name from elsewhere on
``sys.path`` takes its place, or, where there is none, an empty module without a file, which importers read as a
namespace folder, not as an installed package (transformers' own test for such shadowing)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types


def stand_aside(name: str, init_file: str) -> None:
    """Put what ``import <name>`` should give in ``sys.modules[name]``; called by the folder's ``__init__`` while it
    is imported under the bare ``name`` (the import statement returns whatever ``sys.modules`` then holds)."""
    root = os.path.realpath(os.path.dirname(os.path.dirname(init_file)))
    elsewhere = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return
    stub = types.ModuleType(name, f"Not {name!r}: this checkout's {name}/ folder is dash_eval.{name}.")
    stub.__path__ = []
    sys.modules[name] = stub
