"""The startup hook that makes plain ``lm_eval --model dash`` work: installed by the package, registers
``dash`` without hiding lm-eval's own models, indexes the project's task directory, changes nothing else."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PTH_NAME = "dash_eval_lm_eval.pth"
PTH_LINE = "import dash_eval.evals._lm_eval_hook as hook; hook.install()"


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        cwd=ROOT.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_installed_environment_resolves_hf_and_dash():
    # A fresh interpreter of the environment the package is installed in (editable in CI): the .pth
    # file put the hook in place, so both names resolve, lm-eval's own models first.
    out = _python(
        "from lm_eval.api.registry import get_model, model_registry\n"
        "hf, dash = get_model('hf'), get_model('dash')\n"
        "names = list(model_registry.keys())\n"
        "print(hf.__name__, dash.__name__, names.index('dash') > names.index('hf'))\n"
    )
    assert out.splitlines()[-1] == "HFLM DashLM True"


def test_hook_imports_nothing_heavy_at_start():
    out = _python(
        "import sys\n"
        "import dash_eval.evals._lm_eval_hook as hook\n"
        "hook.install()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'dash_eval.evals.lm_model') if m in sys.modules))"
    )
    assert out == "[]"


def test_importing_the_model_first_keeps_builtin_models():
    # Without the startup hook (removed here), importing DashLM before lm-eval's registry has loaded its
    # models must not leave 'dash' as the only name (lm-eval would then never load 'hf').
    out = _python(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_PostImportFinder']\n"
        "from dash_eval.evals.lm_model import DashLM\n"
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('hf').__name__, get_model('dash') is DashLM)"
    )
    assert out.splitlines()[-1] == "HFLM True"


def test_task_manager_indexes_the_project_task_dir(tmp_path):
    # The project's task directory is indexed by default, after lm-eval's and before --include_path.
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "probe.yaml").write_text(
        "task: dash_hook_probe\ndataset_path: json\noutput_type: generate_until\n"
        "test_split: test\ndoc_to_text: '{{x}}'\ndoc_to_target: '{{y}}'\n"
    )
    out = _python(
        "import json\n"
        "import dash_eval.tasks\n"
        "from pathlib import Path\n"
        f"dash_eval.tasks.lm_eval_task_dir = lambda: Path({str(tasks)!r})\n"
        "from lm_eval.tasks import TaskManager\n"
        "everything = TaskManager().all_tasks\n"
        "print(json.dumps([\n"
        "    'dash_hook_probe' in everything,\n"
        "    'niah_single_1' in everything,\n"
        "    'dash_hook_probe' in TaskManager(include_defaults=False).all_tasks,\n"
        "]))"
    )
    assert json.loads(out.splitlines()[-1]) == [True, True, False]


def test_evaluate_wrapper_only_acts_for_models_that_annotate():
    from types import SimpleNamespace

    import dash_eval.evals._lm_eval_hook as hook

    def evaluate(lm, task_dict=None, limit=None, samples=None):
        if lm == "boom":
            raise RuntimeError("boom")
        return {"results": {"t": {"acc,none": 1.0}}}

    module = SimpleNamespace(evaluate=evaluate)
    hook._annotate_results(module)
    hook._annotate_results(module)  # idempotent: wrapped once
    assert module.evaluate.__wrapped__ is evaluate

    assert module.evaluate(object()) == {"results": {"t": {"acc,none": 1.0}}}

    calls = []

    class Annotating(str):
        def dash_annotate_results(self, results, samples=None):
            calls.append((results, samples))
            return None if results is None else {**results, "annotated": samples}

    out = module.evaluate(Annotating("lm"), None, None, {"t": [3]})
    assert out["annotated"] == {"t": [3]} and out["results"] == {"t": {"acc,none": 1.0}}
    with pytest.raises(RuntimeError):
        module.evaluate(Annotating("boom"), samples={"t": [1]})
    assert calls[-1] == (None, {"t": [1]})  # a failed evaluation's records are dropped


def test_wheel_carries_the_pth_file(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".ci-venv",
            ".whl",
            "results",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".pytest_cache",
        ),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("dash_eval-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read(PTH_NAME).decode().strip() == PTH_LINE
        record = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))).decode()
        assert "dash_eval/evals/_lm_eval_hook.py" in zf.namelist()
    assert f"{PTH_NAME}," in record
