"""dash-eval: an evaluation harness for sparse hierarchical attention in long-context LMs.

Sub-packages (each a top-level folder of the repository):

- ``dash_eval.kernels``: the attention methods (reference and Triton), ``sparse_attention``.
- ``dash_eval.dash_models``: patching Hugging Face causal LMs, the embedded default model, routers.
- ``dash_eval.tasks``: long-context tasks generated offline (needle-in-a-haystack, RULER-style).
- ``dash_eval.evals``: the lm-evaluation-harness model, sweeps, leaderboards and reports.

Importing this package patches nothing.
"""

__version__ = "0.1.0"
