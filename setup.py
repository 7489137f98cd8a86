"""Maps the project's top-level folders into the single import namespace ``dash_eval``.

The folders ``kernels/``, ``dash_models/``, ``tasks/`` and ``evals/`` stay at the top of the repository
(the layout the project asked for) but install only as ``dash_eval.kernels`` and so on, so nothing
named ``kernels``, ``tasks`` or ``evals`` lands in site-packages.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

SUBPACKAGES = ("kernels", "dash_models", "tasks", "evals")

package_dir = {"dash_eval": "dash_eval"}
packages = ["dash_eval"] + [f"dash_eval.{p}" for p in find_packages("dash_eval")]
for folder in SUBPACKAGES:
    package_dir[f"dash_eval.{folder}"] = folder
    packages.append(f"dash_eval.{folder}")
    packages += [f"dash_eval.{folder}.{p}" for p in find_packages(folder)]

# --- Added for the lm-eval model `dash` (issue 5; owner: evals/lm_model.py) -----------------------------
# lm-eval 0.4.13 has no plugin mechanism for models, so a one-line .pth file installs a small import hook
# (dash_eval/evals/_lm_eval_hook.py) at interpreter start; the hook registers `dash` right after lm-eval's
# own models load. The .pth file has to land at the top of site-packages: a normal wheel gets it from
# build_lib; an editable (PEP 660) wheel is packed from the folder setuptools hands the `install` command
# as install_lib, so in editable mode it is written there.
LM_EVAL_PTH = "dash_eval_lm_eval.pth"  # sorts after setuptools' __editable__*.pth, which must run first
LM_EVAL_PTH_LINE = "import dash_eval.evals._lm_eval_hook as hook; hook.install()\n"


class build_py_with_lm_eval_pth(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            target = Path(self.get_finalized_command("install").install_lib)
        else:
            target = Path(self.build_lib)
        target.mkdir(parents=True, exist_ok=True)
        (target / LM_EVAL_PTH).write_text(LM_EVAL_PTH_LINE)

    def get_outputs(self, *args, **kwargs):
        outputs = super().get_outputs(*args, **kwargs)
        if self.editable_mode:
            return outputs
        return [*outputs, str(Path(self.build_lib) / LM_EVAL_PTH)]


# ---------------------------------------------------------------------------------------------------------

setup(
    cmdclass={"build_py": build_py_with_lm_eval_pth},
    package_dir=package_dir,
    packages=packages,
    package_data={
        "dash_eval.tasks": ["**/*.yaml", "**/*.txt", "**/*.json", "**/*.jsonl"],
        "dash_eval.evals": ["**/*.yaml"],
    },
    include_package_data=True,
)
