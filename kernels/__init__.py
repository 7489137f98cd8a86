"""The four attention methods of METHODS.md behind one function, ``sparse_attention``.

Each method lives in its own folder (``full/``, ``dash/``, ``nsa/``, ``infllmv2/``) with a readable
PyTorch reference in ``naive.py``; Triton kernels plug in as the ``triton`` backend.
"""

if "." not in __name__:  # imported as a bare top-level name from the checkout's root: dash_eval/_shadow.py
    from dash_eval._shadow import stand_aside

    stand_aside(__name__)
else:
    from dash_eval.kernels import dash, full, infllmv2, nsa  # noqa: F401  (registers the methods)
    from dash_eval.kernels.api import BACKENDS, sparse_attention
    from dash_eval.kernels.common import block_sparse_attention
    from dash_eval.kernels.entmax import entmax
    from dash_eval.kernels.registry import (
        AttentionMethod,
        MethodParams,
        get_backend,
        get_method,
        method_names,
        register_backend,
        register_method,
    )
    from dash_eval.kernels.stats import AttentionStats

    __all__ = [
        "BACKENDS",
        "AttentionMethod",
        "AttentionStats",
        "MethodParams",
        "block_sparse_attention",
        "entmax",
        "get_backend",
        "get_method",
        "method_names",
        "register_backend",
        "register_method",
        "sparse_attention",
    ]
