"""The checkout's ``kernels/``, ``tasks/`` and ``evals/`` folders, imported under their bare names (the checkout's root
on ``sys.path``, as with ``python -m pytest`` run there), stand aside for the packages that own those names, or, with
none installed, leave an empty module without a file; ``dash_eval.<name>`` is unaffected (dash_eval/_shadow.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_at_root(code: str, pythonpath: str = "") -> str:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath, "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_bare_names_are_empty_where_no_package_owns_them():
    out = _run_at_root(
        "import kernels, tasks, evals\n"
        "for m in (kernels, tasks, evals):\n"
        "    print(m.__name__, getattr(m, '__file__', None), sorted(k for k in vars(m) if not k.startswith('__')))\n"
        "import dash_eval.kernels, dash_eval.tasks\n"
        "print(callable(dash_eval.kernels.sparse_attention), 'niah_single' in dash_eval.tasks.task_names())\n"
    )
    assert out.splitlines() == ["kernels None []", "tasks None []", "evals None []", "True True"]


def test_bare_names_go_to_the_installed_packages(tmp_path):
    for name in ("kernels", "evals"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'the real {name}'\n")
        (tmp_path / name / "sub.py").write_text("VALUE = 3\n")
    out = _run_at_root(
        "import dash_eval.kernels\n"  # the checkout's packages first, then the bare names
        "import kernels, evals, kernels.sub\n"
        "print(kernels.OWNER, evals.OWNER, kernels.sub.VALUE, kernels.__file__.startswith(%r))\n"
        "print(callable(dash_eval.kernels.sparse_attention))\n" % str(tmp_path),
        pythonpath=str(tmp_path),
    )
    assert out.splitlines() == ["the real kernels the real evals 3 True", "True"]
