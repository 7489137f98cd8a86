"""Maps the project's top-level folders into the single import namespace ``dash_eval``.

The folders ``kernels/``, ``dash_models/``, ``tasks/`` and ``evals/`` stay at the top of the repository
(the layout the project asked for) but install only as ``dash_eval.kernels`` and so on, so nothing
named ``kernels``, ``tasks`` or ``evals`` lands in site-packages.
"""

from setuptools import find_packages, setup

SUBPACKAGES = ("kernels", "dash_models", "tasks", "evals")

package_dir = {"dash_eval": "dash_eval"}
packages = ["dash_eval"] + [f"dash_eval.{p}" for p in find_packages("dash_eval")]
for folder in SUBPACKAGES:
    package_dir[f"dash_eval.{folder}"] = folder
    packages.append(f"dash_eval.{folder}")
    packages += [f"dash_eval.{folder}.{p}" for p in find_packages(folder)]

setup(
    package_dir=package_dir,
    packages=packages,
    package_data={
        "dash_eval.tasks": ["**/*.yaml", "**/*.txt", "**/*.json", "**/*.jsonl"],
        "dash_eval.evals": ["**/*.yaml"],
    },
    include_package_data=True,
)
