"""Kernel (compressed) keys shared by ``nsa`` and ``infllmv2``: mean-pooled keys over windows of
``kernel_size`` tokens every ``kernel_stride`` tokens, their per-query scores, and the map from
kernels onto the selection blocks they overlap."""

from __future__ import annotations

from collections.abc import Callable

import torch
from dash_eval.kernels.common import chunked_sparse_attention, num_blocks
from dash_eval.kernels.stats import AttentionStats


def kernel_keys(x: torch.Tensor, kernel_size: int, kernel_stride: int) -> torch.Tensor:
    """``[B, H, N, D] -> [B, H, M, D]``: ``kc_m = mean(x[m*stride : m*stride + kernel_size])``."""
    n = x.shape[2]
    if n < kernel_size:
        return x.new_zeros(x.shape[0], x.shape[1], 0, x.shape[3])
    return x.unfold(2, kernel_size, kernel_stride).mean(-1)


def kernel_probs(
    qg: torch.Tensor, kc: torch.Tensor, positions: torch.Tensor, kernel_size: int, kernel_stride: int,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the kernels visible to each query (``m*stride + kernel_size - 1 <= i``), per query head.

    ``qg: [B, Hkv, G, L, D]``, ``kc: [B, Hkv, M, D]`` -> ``probs: [B, Hkv, G, L, M]`` (0 on invisible
    kernels, all 0 for a query that sees none) and ``visible: [L, M]``.
    """
    m = kc.shape[2]
    ends = torch.arange(m, device=qg.device) * kernel_stride + kernel_size - 1
    visible = ends[None, :] <= positions[:, None]
    logits = torch.einsum("bhgld,bhmd->bhglm", qg.float(), kc.float()) * softmax_scale
    logits = logits.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.where(visible.any(-1)[:, None], probs, torch.zeros((), device=qg.device))
    return probs.nan_to_num(0.0), visible


def pooled_kernels(max_pool: bool, kernel_size: int, kernel_stride: int) -> int:
    """How many kernels before ``j*r`` block ``j`` pools (``r = block_size / kernel_stride``), with the ``r``
    from ``j*r`` on.

    InfLLM-V2's max-pooling (``max_pool``) takes kernels ``j*r - 1 .. j*r + r - 1`` whatever the kernel size
    (METHODS.md: pool ``r + 1``, stride ``r``, padding 1). NSA's overlap-weighted sum takes the kernels that
    share tokens with the block: ``kernel_size / kernel_stride - 1`` of them start before it. With the
    defaults (``kernel_size = 2 * kernel_stride``) both are one."""
    return 1 if max_pool else kernel_size // kernel_stride - 1


def block_kernel_index(
    nblocks: int, num_kernels: int, block_size: int, kernel_size: int, kernel_stride: int, device, lead: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernels block ``j`` pools, ``j*r - lead .. j*r + r - 1`` (``pooled_kernels``): ``index [nblocks, W]``
    (clamped), ``in_range [nblocks, W]``, and ``overlap [W]``: the number of tokens kernel ``j*r - lead + o``
    shares with block ``j``, in units of ``kernel_stride`` (``[1, 2, 2, 2, 1]`` for the defaults)."""
    r = block_size // kernel_stride
    a = lead
    width = a + r
    offsets = torch.arange(width, device=device)
    index = torch.arange(nblocks, device=device)[:, None] * r - a + offsets[None, :]
    in_range = (index >= 0) & (index < num_kernels)
    start = (offsets - a) * kernel_stride
    overlap = (torch.clamp(start + kernel_size, max=block_size) - torch.clamp(start, min=0)) / kernel_stride
    return index.clamp(0, max(num_kernels - 1, 0)), in_range, overlap


def gather_block_kernels(
    scores: torch.Tensor, visible: torch.Tensor, nk: int, block_size: int, kernel_size: int, kernel_stride: int,
    lead: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scores: [B, Hkv, L, M]`` -> per block ``[B, Hkv, L, nblocks, W]`` kernel scores (the kernels
    ``block_kernel_index`` gives with ``lead``), the mask of visible kernels ``[L, nblocks, W]`` and the
    overlap weights ``[W]``."""
    nb = num_blocks(nk, block_size)
    m = scores.shape[-1]
    index, in_range, overlap = block_kernel_index(
        nb, m, block_size, kernel_size, kernel_stride, scores.device, lead
    )
    if m == 0:
        shape = scores.shape[:-1] + index.shape
        none_visible = torch.zeros(visible.shape[0], *index.shape, dtype=torch.bool, device=visible.device)
        return scores.new_zeros(shape), none_visible, overlap
    gathered = scores[..., index.reshape(-1)].view(*scores.shape[:-1], *index.shape)
    vis = visible[:, index.reshape(-1)].view(visible.shape[0], *index.shape) & in_range
    return gathered, vis, overlap


def kernel_topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    select: Callable[..., torch.Tensor],
    *,
    block_size: int,
    kernel_size: int,
    kernel_stride: int,
    init_blocks: int,
    local_blocks: int,
    topk: int,
    window: int = 0,
    score_precision: str = "float32",
    softmax_scale: float | None = None,
    return_stats: bool = False,
) -> tuple[torch.Tensor, AttentionStats | None]:
    """The driver of ``nsa`` and ``infllmv2``: kernel keys once, then per query chunk
    ``select(qg, kc, positions, nk, **selection_params)`` and the fine stage. ``score_precision="input"``
    rounds the float32 kernel keys to the inputs' dtype before they are scored (``_topk_params``)."""
    softmax_scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    nk = k.shape[2]
    kc = kernel_keys(k.float(), kernel_size, kernel_stride)
    if score_precision == "input":
        kc = kc.to(k.dtype).float()
    ends = torch.arange(kc.shape[2], device=q.device) * kernel_stride + kernel_size - 1
    scores_per_query = q.shape[1] * q.shape[0]

    def select_chunk(qg_chunk: torch.Tensor, pos: torch.Tensor):
        selected = select(
            qg_chunk, kc, pos, nk, block_size=block_size, kernel_size=kernel_size, kernel_stride=kernel_stride,
            init_blocks=init_blocks, local_blocks=local_blocks, topk=topk, softmax_scale=softmax_scale,
        )
        return selected, None, int((ends[None, :] <= pos[:, None]).sum()) * scores_per_query

    return chunked_sparse_attention(
        q, k, v, select_chunk, block_size=block_size, softmax_scale=softmax_scale, window=window,
        return_stats=return_stats,
    )
