"""The checkout's ``kernels/``, ``tasks/`` and ``evals/`` folders, imported under their bare names (the checkout's root
on ``sys.path``, as with ``python -m pytest`` run there), stand aside for the packages that own those names, or, with
none installed, leave an empty namespace-like module; ``dash_eval.<name>`` is unaffected (dash_eval/_shadow.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, pythonpath: str = "", cwd: Path = ROOT) -> str:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath, "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def _real_packages(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"OWNER = 'the real {name}'\n")
        (folder / name / "sub.py").write_text("VALUE = 3\n")
    return folder


def test_bare_names_are_empty_where_no_package_owns_them():
    out = _run(
        "import importlib.util, kernels, tasks, evals\n"
        "for m in (kernels, tasks, evals):\n"
        "    print(m.__name__, getattr(m, '__file__', None), sorted(k for k in vars(m) if not k.startswith('__')))\n"
        "print(importlib.util.find_spec('kernels').origin)\n"  # a spec, as transformers' availability checks need
        "from transformers import LlamaForCausalLM\n"
        "import dash_eval.kernels, dash_eval.tasks\n"
        "print(callable(dash_eval.kernels.sparse_attention), 'niah_single' in dash_eval.tasks.task_names())\n"
    )
    assert out.splitlines() == ["kernels None []", "tasks None []", "evals None []", "None", "True True"]


def test_bare_names_go_to_the_installed_packages(tmp_path):
    site = _real_packages(tmp_path / "site", "kernels", "evals")
    out = _run(
        "import dash_eval.kernels\n"  # the checkout's packages first, then the bare names
        "import kernels, evals, kernels.sub\n"
        f"print(kernels.OWNER, evals.OWNER, kernels.sub.VALUE, kernels.__file__.startswith({str(site)!r}))\n"
        "print(callable(dash_eval.kernels.sparse_attention))\n",
        pythonpath=str(site),
    )
    assert out.splitlines() == ["the real kernels the real evals 3 True", "True"]


def test_an_installed_package_found_by_its_own_finder(tmp_path):
    """A package installed in editable mode is found by a ``sys.meta_path`` finder, not on ``sys.path``."""
    site = _real_packages(tmp_path / "elsewhere", "kernels")
    out = _run(
        "import importlib.util, sys\n"
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'kernels':\n"
        f"            return importlib.util.spec_from_file_location(name, {str(site / 'kernels' / '__init__.py')!r})\n"
        "sys.meta_path.append(Finder())\n"  # after the path finder, which meets the checkout's folder first
        "import kernels\n"
        "print(kernels.OWNER)\n"
    )
    assert out == "the real kernels"


def test_two_checkouts_on_the_path_leave_each_other_alone(tmp_path):
    """Each checkout's folder skips every checkout, not only its own: no back and forth between two."""
    other = tmp_path / "other-checkout"
    for part in ("dash_eval/__init__.py", "dash_eval/_shadow.py", "kernels/__init__.py"):
        (other / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / part, other / part)
    out = _run("import kernels\nprint(getattr(kernels, '__file__', None))", pythonpath=str(other))
    assert out == "None"
    site = _real_packages(tmp_path / "site", "kernels")
    out = _run("import kernels\nprint(kernels.OWNER)", pythonpath=f"{other}:{site}", cwd=other)
    assert out == "the real kernels"
