"""The one public entry point: ``sparse_attention``. Inputs are checked here, once, before any compute."""

from __future__ import annotations

import importlib
import logging
import math
import numbers
from typing import Any

import torch
from dash_eval.kernels.common import LastResult
from dash_eval.kernels.registry import MethodParams, get_backend, get_method
from dash_eval.kernels.stats import AttentionStats, counts_deferred

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_MODULE = "dash_eval.kernels.triton_backend"


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_valid: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-d tensor [B, H, N, D]; got {shape}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; accepted: float16, bfloat16, float32, float64")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must have one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    b, hq, nq, d = q.shape
    _, hkv, nk, dk = k.shape
    if k.shape[0] != b or dk != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and head dim")
    if d == 0:
        raise ValueError(f"head dim D must be at least 1; got q {tuple(q.shape)}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads Hq={hq} must be a multiple of key/value heads Hkv={hkv}")
    if not 1 <= nq <= nk:
        raise ValueError(f"query length Nq={nq} must be between 1 and the key length Nk={nk}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type == "meta":
        raise ValueError("q, k, v are meta tensors, which hold no values; accepted: tensors on a CPU or CUDA device")
    if kv_valid is not None and (
        not isinstance(kv_valid, torch.Tensor) or kv_valid.dtype != torch.bool or tuple(kv_valid.shape) != (b, nk)
    ):
        got = (f"{kv_valid.dtype} {tuple(kv_valid.shape)}" if isinstance(kv_valid, torch.Tensor)
               else type(kv_valid).__name__)
        raise ValueError(f"kv_valid must be a bool tensor of shape [B, Nk] = [{b}, {nk}], or None; got {got}")
    if kv_valid is not None and kv_valid.device.type == "meta":
        raise ValueError("kv_valid is a meta tensor, which holds no values; accepted: a bool tensor on a CPU or CUDA "
                         "device")


def _resolve_backend(method: str, backend: str, device: torch.device):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend == "reference" or (backend == "auto" and device.type != "cuda"):
        return None
    try:
        importlib.import_module(_TRITON_MODULE)
    except ImportError as exc:
        if backend == "triton":
            raise ValueError(f"backend='triton' is unavailable: {exc}") from exc
        logger.warning("Triton backend unavailable (%s); using the reference implementation", exc)
        return None
    if device.type != "cuda":  # backend="triton" asked for on another device
        from dash_eval.kernels._triton.launch import interpreting

        if not interpreting():
            raise ValueError(f"backend='triton' needs CUDA tensors (got {device.type}); on a CPU, Triton's "
                             "interpreter runs the kernels (slowly) when TRITON_INTERPRET=1 is set before they are "
                             "imported; or use backend='reference'")
    fn = get_backend(method, "triton")
    if fn is None and backend == "triton":
        raise ValueError(f"method {method!r} has no Triton backend; use backend='reference'")
    return fn


def _row_spans(kv_valid: torch.Tensor) -> list[tuple[int, int]]:
    """Each row's ``(start, stop)`` of valid keys (``(0, 0)`` for none); one copy of ``kv_valid`` to the host."""
    spans = []
    for row, valid in enumerate(kv_valid.cpu()):
        idx = torch.nonzero(valid).flatten()
        if idx.numel() == 0:
            spans.append((0, 0))
            continue
        start, stop = int(idx[0]), int(idx[-1]) + 1
        if stop - start != idx.numel():
            raise ValueError(
                f"kv_valid row {row}: valid keys must form one contiguous run (left or right padding); "
                f"got {idx.numel()} valid keys spread over positions {start}..{stop - 1}"
            )
        spans.append((start, stop))
    return spans


row_spans = LastResult(_row_spans)


def _empty_stats(b: int, hkv: int, nq: int, block_size: int, device: torch.device) -> AttentionStats:
    deferred = counts_deferred()  # then the rows' counts stay where the kernels wrote them
    return AttentionStats(
        attended_pairs=torch.zeros((), dtype=torch.int64, device=device) if deferred else 0,
        causal_pairs=0, routing_scores=0,
        active_blocks=torch.zeros(b, hkv, nq, dtype=torch.int64, device=device),
        valid_queries=torch.zeros(b, nq, dtype=torch.bool, device=device),
        attended_per_row=torch.zeros(b, dtype=torch.int64, device=device if deferred else None),
        causal_per_row=torch.zeros(b, dtype=torch.int64),
        block_size=block_size,
    )


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    method: str,
    *,
    backend: str = "auto",
    return_stats: bool = False,
    softmax_scale: float | None = None,
    kv_valid: torch.Tensor | None = None,
    **params: Any,
) -> torch.Tensor | tuple[torch.Tensor, AttentionStats]:
    """Causal attention with one of the registered methods (``full``, ``dash``, ``nsa``, ``infllmv2``).

    Args:
        q: ``[B, Hq, Nq, D]``; the queries are the last ``Nq`` positions of the keys.
        k, v: ``[B, Hkv, Nk, D]`` (RoPE already applied), ``Hq % Hkv == 0``.
        method: a name from ``method_names()``; ``params`` are its METHODS.md parameters.
        backend: ``"reference"``, ``"triton"`` or ``"auto"`` (Triton on CUDA tensors when available); ``full`` is
            PyTorch's SDPA under each.
        softmax_scale: logit scale, default ``1 / sqrt(D)``.
        kv_valid: optional ``[B, Nk]`` bool, True on real tokens (one contiguous run per row). Padded
            rows are computed as if alone; padded query rows return zeros and are not counted.

    Returns:
        ``out: [B, Hq, Nq, D]``, or ``(out, stats)`` when ``return_stats``.

    >>> q, k, v = torch.randn(1, 8, 300, 64), torch.randn(1, 2, 300, 64), torch.randn(1, 2, 300, 64)
    >>> out, stats = sparse_attention(q, k, v, "dash", block_size=32, return_stats=True)
    >>> out.shape, 0.0 <= stats.sparsity < 1.0
    (torch.Size([1, 8, 300, 64]), True)
    """
    spec = get_method(method)
    p: MethodParams = spec.make_params(**params)
    _check_inputs(q, k, v, kv_valid)
    if not isinstance(return_stats, bool):
        raise ValueError(f"return_stats={return_stats!r}; accepted: True or False")
    if softmax_scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real) \
            or not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale={softmax_scale!r}; accepted: a finite number > 0, or None for 1/sqrt(D)")
    else:
        scale = float(softmax_scale)
    fn = _resolve_backend(method, backend, q.device)

    def run(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor):
        if fn is not None:
            return fn(qq, kk, vv, p, softmax_scale=scale, return_stats=return_stats)
        return spec.reference(qq, kk, vv, p, softmax_scale=scale, return_stats=return_stats)

    b, _, nq, _ = q.shape
    nk = k.shape[2]
    spans = None if kv_valid is None else row_spans(kv_valid)
    if spans is None or all(span == (0, nk) for span in spans):
        out, stats = run(q, k, v)
        return (out, stats) if return_stats else out

    first_q = nk - nq
    out = torch.zeros_like(q)
    stats = _empty_stats(b, k.shape[1], nq, p.block_size, q.device) if return_stats else None
    for row, (start, stop) in enumerate(spans):
        q_lo, q_hi = max(start, first_q) - first_q, stop - first_q
        if q_hi <= q_lo:
            continue  # no real query in this row
        o, s = run(q[row : row + 1, :, q_lo:q_hi], k[row : row + 1, :, start:stop], v[row : row + 1, :, start:stop])
        out[row, :, q_lo:q_hi] = o[0]
        if s is not None:
            stats.attended_pairs += s.attended_pairs
            stats.causal_pairs += s.causal_pairs
            stats.routing_scores += s.routing_scores
            stats.active_blocks[row, :, q_lo:q_hi] = s.active_blocks[0]
            stats.valid_queries[row, q_lo:q_hi] = True
            stats.attended_per_row[row] = s.attended_per_row[0]
            stats.causal_per_row[row] = s.causal_per_row[0]
    return (out, stats) if return_stats else out
