"""Incremental routing state for generation on GPU: DashAttention's block summaries, the kernel keys of
``nsa`` and ``infllmv2``.

During decoding the keys grow by one token a step; recomputing every summary (or kernel key) from all
cached keys each step would read the whole cache again. Each attention layer keeps its state here: a
prefill (re)computes it, a decode step that continues the sequence appends what became complete (a
block of ``block_size`` keys for ``dash``; a kernel of ``kernel_size`` keys every ``kernel_stride`` for the
top-k methods). Used only on the Triton path (CUDA inputs the kernels take, no padding); anything else
takes the ordinary route.
"""

from __future__ import annotations

import dataclasses

import torch

_ATTR = "_dash_decode_cache"
_GROWTH_BLOCKS = 64  # spare capacity so that a long generation rarely reallocates


@dataclasses.dataclass
class _LayerCache:
    method: str
    params: dict  # the method's plain parameters (``MethodParams.to_dict``) the state was built with
    state: object  # BlockSummaries (dash) or KernelKeys (nsa, infllmv2)
    nk: int
    batch: int


class _DashState:
    """Block summaries (``kernels.dash.triton_summaries``)."""

    @staticmethod
    def unsupported(query, params) -> str | None:
        from dash_eval.kernels._triton.launch import kernel_supports

        return kernel_supports(query, params.block_size)

    @staticmethod
    def allocate(key, params):
        from dash_eval.kernels.dash.triton_summaries import allocate_summaries

        return allocate_summaries(key, max(1, key.shape[2] // params.block_size) + _GROWTH_BLOCKS)

    @staticmethod
    def fits(state, nk: int, params) -> bool:
        return state.kbar.shape[2] >= nk // params.block_size

    @staticmethod
    def update(state, key, params, softmax_scale: float) -> None:
        from dash_eval.kernels.dash.triton_attention import _router
        from dash_eval.kernels.dash.triton_summaries import update_summaries

        update_summaries(state, key, _router(params, key), params.block_size, softmax_scale)

    @staticmethod
    def forward(query, key, value, params, softmax_scale: float, state):
        from dash_eval.kernels.dash.triton_attention import dash_attention_triton

        return dash_attention_triton(query, key, value, params, softmax_scale=softmax_scale, return_stats=True,
                                     summaries=state)


class _KernelKeyState:
    """Kernel keys (``kernels._triton.kernel_keys``) of ``nsa`` / ``infllmv2``."""

    def __init__(self, method: str) -> None:
        self.method = method

    @staticmethod
    def unsupported(query, params) -> str | None:
        from dash_eval.kernels._triton.topk_attention import topk_unsupported

        return topk_unsupported(query, params)

    @staticmethod
    def allocate(key, params):
        from dash_eval.kernels._triton.kernel_keys import allocate_kernel_keys, complete_kernels, split_keys

        spare = _GROWTH_BLOCKS * params.block_size // params.kernel_stride
        total = complete_kernels(key.shape[2], params.kernel_size, params.kernel_stride)
        return allocate_kernel_keys(key, total + spare, params.kernel_size, params.kernel_stride, split_keys(params))

    @staticmethod
    def fits(state, nk: int, params) -> bool:
        from dash_eval.kernels._triton.kernel_keys import complete_kernels

        return state.capacity >= complete_kernels(nk, params.kernel_size, params.kernel_stride)

    @staticmethod
    def update(state, key, params, softmax_scale: float) -> None:
        from dash_eval.kernels._triton.kernel_keys import update_kernel_keys

        update_kernel_keys(state, key)

    def forward(self, query, key, value, params, softmax_scale: float, state):
        from dash_eval.kernels import get_backend

        fn = get_backend(self.method, "triton")  # nsa_attention_triton / infllmv2_attention_triton
        return fn(query, key, value, params, softmax_scale=softmax_scale, return_stats=True, kernel_keys=state)


_STATES = {
    "dash": _DashState(),
    "nsa": _KernelKeyState("nsa"),
    "infllmv2": _KernelKeyState("infllmv2"),
}


def triton_cache_available(query: torch.Tensor, backend: str, method: str, params) -> bool:
    """True when this layer call can run on the Triton kernels with a decode cache."""
    state = _STATES.get(method)
    if state is None or backend == "reference" or not query.is_cuda:
        return False
    try:
        import dash_eval.kernels.triton_backend  # noqa: F401
    except ImportError:
        return False
    return state.unsupported(query, params) is None


def forward_with_cache(module, method: str, query, key, value, params, softmax_scale: float):
    """``method`` on the Triton kernels with this layer's cached routing state; returns ``(out, stats)``.

    The state is appended to only when this call continues the cached sequence (one new query, same
    batch, one more key, same method and parameters); otherwise it is rebuilt from ``key``.
    """
    kind = _STATES[method]
    b, _, nq, _ = query.shape
    nk = key.shape[2]
    cache: _LayerCache | None = module.__dict__.get(_ATTR)
    continues = (
        cache is not None and cache.method == method and nq == 1 and cache.batch == b and cache.nk + 1 == nk
        and cache.params == params.to_dict() and kind.fits(cache.state, nk, params)
    )
    if not continues:
        cache = _LayerCache(method, params.to_dict(), kind.allocate(key, params), nk, b)
        module.__dict__[_ATTR] = cache
    kind.update(cache.state, key, params, softmax_scale)
    cache.nk = nk
    return kind.forward(query, key, value, params, softmax_scale, cache.state)


def clear(module: torch.nn.Module) -> None:
    module.__dict__.pop(_ATTR, None)
