"""Shared pieces of the reference implementations: block geometry, forced blocks, the block-sparse
softmax stage, and the query-chunked driver that bounds memory at any length.

Notation as in METHODS.md: ``q: [B, Hq, Nq, D]``, ``k, v: [B, Hkv, Nk, D]``; query ``i`` sits at
position ``Nk - Nq + i``; token ``t`` lies in block ``t // block_size``. A selection is
``selected: [B, Hkv, Nq, nblocks] bool`` (shared by the GQA group), optionally with a per-block
additive logit ``bias`` of the same shape.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from dash_eval.kernels.stats import AttentionStats, chunk_stats, concat_stats

# Upper bound on the elements of one chunk's [B, Hq, L, Nk] logit mask (~128 MB in float32).
_CHUNK_ELEMENTS = 1 << 25

SelectFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None, int]"]


class LastResult:
    """The result of a function of one tensor, kept while that tensor lives unchanged: a patched model's layers
    pass the same padding mask, so the host copies it once a forward pass instead of once a layer."""

    def __init__(self, fn):
        self.fn, self.entry = fn, None  # (weak reference to the tensor, its version and the other arguments, result)

    def __call__(self, tensor: torch.Tensor, *extra):
        if tensor.is_inference():  # no version counter (made under torch.inference_mode): nothing to trust
            return self.fn(tensor, *extra)
        key = (tensor._version, *extra)
        entry = self.entry  # read once: another thread may replace it, never half of it
        if entry is not None and entry[0]() is tensor and entry[1] == key:
            return entry[2]
        value = self.fn(tensor, *extra)
        self.entry = (weakref.ref(tensor), key, value)
        return value


def sdpa_any_length(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` for unmasked calls whose key length changes from call to call (a decode
    step): on CUDA, with PyTorch's cuDNN backend switched off for the call; the other backends stay as the caller
    set them, PyTorch choosing among them as usual. cuDNN builds an execution plan for every new shape: on an H200
    with torch 2.11, a one-query call against a key length it had not seen took about 72 ms, against 0.16-0.37 ms
    once planned and 0.13-0.22 ms with the flash backend (docs/perf-notes.md, session 15). A decode step meets a
    new key length every time, so a patched ``full`` paid that plan on every step. Not for masked calls with GQA:
    flash and memory-efficient refuse those, so without cuDNN they fall to the math backend (measured 2-10x slower,
    with 10-16x the memory)."""
    if not (q.is_cuda and torch.backends.cuda.cudnn_sdp_enabled()):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


def num_blocks(n: int, block_size: int) -> int:
    return -(-n // block_size)


def query_positions(nq: int, nk: int, device: torch.device) -> torch.Tensor:
    return torch.arange(nk - nq, nk, device=device)


def forced_blocks(qblock: torch.Tensor, nblocks: int, init_blocks: int, local_blocks: int) -> torch.Tensor:
    """``[L, nblocks]`` bool: the first ``init_blocks`` blocks and the ``local_blocks`` most recent
    blocks (the current one included), never past the current block."""
    j = torch.arange(nblocks, device=qblock.device)
    cur = qblock[:, None]
    return (j <= cur) & ((j < init_blocks) | (j > cur - local_blocks))


def topk_recent(scores: torch.Tensor, eligible: torch.Tensor, topk: int) -> torch.Tensor:
    """Pick the ``topk`` highest ``scores`` among ``eligible`` along the last dim; ties go to the
    more recent (higher-index) block. Ineligible entries are never picked."""
    if topk == 0:
        return torch.zeros_like(eligible)
    neg = torch.full((), float("-inf"), dtype=scores.dtype, device=scores.device)
    keyed = torch.where(eligible, scores, neg).flip(-1)  # most recent first, so a stable sort keeps it first
    order = torch.sort(keyed, dim=-1, descending=True, stable=True).indices
    elig_sorted = torch.gather(eligible.flip(-1), -1, order)
    chosen_sorted = elig_sorted & (elig_sorted.cumsum(-1) <= topk)
    chosen = torch.zeros_like(eligible).scatter(-1, order, chosen_sorted)
    return chosen.flip(-1)


def _attend_chunk(
    qg: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selected: torch.Tensor,
    bias: torch.Tensor | None,
    positions: torch.Tensor,
    block_size: int,
    softmax_scale: float,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over the selected blocks' tokens (plus an optional causal window) for one query chunk.

    The mask is built once per KV head at block level, expanded over each block's tokens, and shared
    by the group's query heads (the KV head is folded into the batch, so SDPA broadcasts it).

    ``qg: [B, Hkv, G, L, D]``. Returns ``out: [B, Hkv, G, L, D]``, ``attended: [B, Hkv, L]`` (tokens
    each query attends) and ``active: [B, Hkv, L]`` (blocks in which it attends at least one token).
    """
    b, hkv, g, length, d = qg.shape
    c = block_size
    kend = int(positions[-1]) + 1
    nbk = num_blocks(kend, c)
    dtype, device = qg.dtype, qg.device
    neg = torch.full((), float("-inf"), dtype=dtype, device=device)
    sel = selected[..., :nbk]  # [B, Hkv, L, nbk]
    if bias is None:
        add = torch.zeros((), dtype=dtype, device=device)
    else:
        # Each query's largest selected bias moved to 0 (the softmax is unchanged) before the cast to the inputs'
        # dtype: float16 holds no logit above 65504, and dash's prior reaches 87.34 / sigma.
        beta = bias[..., :nbk]
        top = torch.where(sel, beta, float("-inf")).amax(-1, keepdim=True)
        add = (beta - torch.where(torch.isfinite(top), top, 0)).to(dtype)
    block_mask = torch.where(sel, add, neg)
    token_mask = block_mask[..., None].expand(b, hkv, length, nbk, c).reshape(b, hkv, length, nbk * c)[..., :kend]
    t = torch.arange(kend, device=device)
    causal = t[None, :] <= positions[:, None]  # [L, K]
    tokens_in_block = (positions[:, None] + 1 - torch.arange(nbk, device=device)[None, :] * c).clamp(0, c)
    if window > 0:
        in_window = causal & (t[None, :] > positions[:, None] - window)
        token_mask = torch.where(in_window, token_mask.clamp(min=0), token_mask)
        window_tokens = F.pad(in_window, (0, nbk * c - kend)).view(length, nbk, c).sum(-1)
        attended = torch.where(sel, tokens_in_block, window_tokens).sum(-1)
        active = ((sel & (tokens_in_block > 0)) | (window_tokens > 0)).sum(-1)
    else:
        attended = torch.where(sel, tokens_in_block, 0).sum(-1)
        active = (sel & (tokens_in_block > 0)).sum(-1)
    token_mask = torch.where(causal, token_mask, neg)
    out = F.scaled_dot_product_attention(
        qg.reshape(b * hkv, g, length, d),
        k[:, :, :kend].reshape(b * hkv, 1, kend, d),
        v[:, :, :kend].reshape(b * hkv, 1, kend, d),
        attn_mask=token_mask.reshape(b * hkv, 1, length, kend),
        scale=softmax_scale,
        enable_gqa=True,
    )
    return out.view(b, hkv, g, length, d), attended, active


def chunked_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    select: SelectFn,
    *,
    block_size: int,
    softmax_scale: float,
    window: int = 0,
    return_stats: bool = False,
    chunk: int | None = None,
) -> tuple[torch.Tensor, AttentionStats | None]:
    """Route and attend one query chunk at a time.

    ``select(qg_chunk, positions) -> (selected, bias, routing_scores)`` returns the chunk's block
    selection ``[B, Hkv, L, nblocks]`` (bias likewise, or None) for ``qg_chunk: [B, Hkv, G, L, D]``.
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    qg = q.view(b, hkv, g, nq, d)
    positions = query_positions(nq, nk, q.device)
    if chunk is None:
        chunk = max(block_size, min(nq, _CHUNK_ELEMENTS // max(1, b * hq * nk)))
    out = torch.empty_like(qg)
    stats = []
    for start in range(0, nq, chunk):
        stop = min(nq, start + chunk)
        pos = positions[start:stop]
        q_chunk = qg[:, :, :, start:stop]
        selected, bias, routing_scores = select(q_chunk, pos)
        o, attended, active = _attend_chunk(q_chunk, k, v, selected, bias, pos, block_size, softmax_scale, window)
        out[:, :, :, start:stop] = o
        if return_stats:
            stats.append(chunk_stats(attended, active, nk - nq + start, block_size, routing_scores))
    return out.view(b, hq, nq, d), (concat_stats(stats) if return_stats else None)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selected: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    block_size: int,
    softmax_scale: float | None = None,
    window: int = 0,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, AttentionStats]:
    """Reference fine stage: causal softmax over the tokens of the selected blocks.

    Args:
        q: ``[B, Hq, Nq, D]``; k, v: ``[B, Hkv, Nk, D]``.
        selected: ``[B, Hkv, Nq, nblocks]`` bool; the current block of each query must be selected.
        bias: optional ``[B, Hkv, Nq, nblocks]`` logit added to every token of a block.
        window: also attend the last ``window`` tokens (NSA's merged sliding window).

    >>> q, k, v = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    >>> sel = torch.ones(1, 2, 8, 2, dtype=torch.bool)
    >>> block_sparse_attention(q, k, v, sel, block_size=4).shape
    torch.Size([1, 4, 8, 16])
    """
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5

    def select(qg_chunk: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        rows = pos - (k.shape[2] - q.shape[2])
        return (
            selected.index_select(2, rows),
            None if bias is None else bias.index_select(2, rows),
            0,
        )

    out, stats = chunked_sparse_attention(
        q, k, v, select, block_size=block_size, softmax_scale=scale, window=window, return_stats=return_stats
    )
    return (out, stats) if return_stats else out
