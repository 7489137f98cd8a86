"""The compact block selection shared by the three sparse methods.

``words: [B, Hkv, Nq, ceil(nblocks / 32)] int32``: bit ``j % 32`` of word ``j // 32`` is set when query
``i`` attends block ``j`` (routed or forced; the GQA group shares it). That is 1/32 of a bool mask and
1/(32 * 4 * G) of one float score per query head and block.

The fine stage walks query tiles; ``tile_union`` turns the bits of a tile's queries into the sorted
list of blocks that any of them attends (plus the blocks under NSA's sliding window), so the kernel
loops over exactly those blocks and masks per query inside.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from dash_eval.kernels._triton.launch import chain_options, next_pow2
from dash_eval.kernels._triton.ops import chain_start

# A visit-list entry is a block index, plus FULL_FLAG when every query of the tile attends the whole
# block (all select it and it lies strictly before the tile): the fine stage then skips masking.
FULL_FLAG = tl.constexpr(1 << 30)
FULL_MASK = tl.constexpr((1 << 30) - 1)


def num_words(nblocks: int) -> int:
    return max(1, -(-nblocks // 32))


def pack_selection(selected: torch.Tensor) -> torch.Tensor:
    """``[..., nblocks] bool -> [..., ceil(nblocks / 32)] int32`` bit-packed (bit ``j % 32`` of word ``j // 32``)."""
    nb = selected.shape[-1]
    nw = num_words(nb)
    pad = nw * 32 - nb
    bits = torch.nn.functional.pad(selected.to(torch.int64), (0, pad)).view(*selected.shape[:-1], nw, 32)
    shifts = torch.arange(32, device=selected.device, dtype=torch.int64)
    words = (bits << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_selection(words: torch.Tensor, nblocks: int) -> torch.Tensor:
    """Inverse of ``pack_selection``: ``[..., nw] int32 -> [..., nblocks] bool``."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    bits = (words.to(torch.int64)[..., None] >> shifts) & 1
    return bits.flatten(-2)[..., :nblocks].bool()


@triton.jit
def store_words(sel, WORDS, bh, Nq, qpos, q_ok, n_words, first_word, TQ: tl.constexpr, N: tl.constexpr):
    """Pack ``sel [TQ, N]`` (blocks ``32 * first_word ..`` of queries ``qpos``) into their selection words:
    32-bit shifts OR-reduced, bit 31 being the sign bit (v24; a 64-bit sum before, 3-6% slower routing)."""
    bits = tl.reshape(sel.to(tl.int32), (TQ, N // 32, 32))
    words = tl.reduce(bits << tl.arange(0, 32)[None, None, :], 2, _bit_or)
    wcol = first_word + tl.arange(0, N // 32)
    tl.store(WORDS + (bh * Nq + qpos)[:, None] * n_words + wcol[None, :], words,
             mask=q_ok[:, None] & (wcol < n_words)[None, :])


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _bit_and(a, b):
    return a & b


@triton.jit
def _tile_union_kernel(
    WORDS, TLIST, TCOUNT,
    Nq, q_off, n_words, nblocks, n_tiles, block_size, window,
    TQ: tl.constexpr, NWP: tl.constexpr,
    PDL: tl.constexpr = False,
):
    chain_start(PDL)
    t = tl.program_id(0)
    bh = tl.program_id(1)
    tile_visit_list(WORDS, bh, t, Nq, q_off, n_words, nblocks, block_size, window,
                    TLIST + (bh * n_tiles + t) * nblocks, TCOUNT + bh * n_tiles + t, TQ, NWP)


@triton.jit
def tile_visit_list(WORDS, bh, t, Nq, q_off, n_words, nblocks, block_size, window, LIST, COUNT,
                    TQ: tl.constexpr, NWP: tl.constexpr):
    """Query tile ``t``'s visit list (``write_visit_list``) from its queries' selection words. The words are
    read from L2 (``.cg``), so a launch may also call this on words other programs of it have just written
    (after an acquiring arrival counter)."""
    qi = t * TQ + tl.arange(0, TQ)
    w = tl.arange(0, NWP)
    ptrs = WORDS + (bh * Nq + qi)[:, None] * n_words + w[None, :]
    q_ok = (qi < Nq)[:, None]
    w_ok = (w < n_words)[None, :]
    words = tl.load(ptrs, mask=q_ok & w_ok, other=0, cache_modifier=".cg")
    union = tl.reduce(words, 0, _bit_or)  # [NWP]
    common = tl.reduce(tl.where(q_ok, words, -1), 0, _bit_and)
    shifts = tl.arange(0, 32)[None, :]
    bits = tl.reshape((union[:, None] >> shifts) & 1, (NWP * 32,))
    all_bits = tl.reshape((common[:, None] >> shifts) & 1, (NWP * 32,))
    j = tl.arange(0, NWP * 32)
    first = t * TQ + q_off
    last = tl.minimum(t * TQ + TQ, Nq) - 1 + q_off
    write_visit_list(bits != 0, all_bits != 0, j, first, last, window, nblocks, block_size, LIST, COUNT)


@triton.jit
def write_visit_list(any_sel, all_sel, j, first, last, window, nblocks, block_size, LIST, COUNT):
    """A tile's visit list from its queries' selections over blocks ``j`` (``any_sel``: some query attends
    the block, ``all_sel``: every query does), for queries at positions ``first..last``: the sorted blocks,
    flagged ``FULL_FLAG`` when every query attends all of the block, plus NSA's window blocks."""
    # NSA's window: every block that holds one of the last `window` keys of some query of the tile.
    win_lo = tl.maximum(first - window + 1, 0) // block_size
    in_window = (window > 0) & (j >= win_lo) & (j <= last // block_size)
    keep = (any_sel | in_window) & (j < nblocks)
    slot = tl.cumsum(keep.to(tl.int32), 0) - 1
    full = all_sel & (j < first // block_size)
    tl.store(LIST + slot, j | tl.where(full, FULL_FLAG, 0), mask=keep)
    tl.store(COUNT, tl.sum(keep.to(tl.int32), 0))


def routing_visit_list(words: torch.Tensor, nblocks: int, listed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The buffers a decode routing launch writes the single tile's visit list into (``tile_union``'s layout:
    ``[B, Hkv, 1, nblocks]`` and ``[B, Hkv, 1]`` int32) when ``listed``; otherwise ``words`` as never-written
    stand-ins for the kernel's unused pointers."""
    if not listed:
        return words, words
    b, hkv = words.shape[:2]
    tlist = torch.empty(b, hkv, 1, nblocks, dtype=torch.int32, device=words.device)
    return tlist, torch.empty(b, hkv, 1, dtype=torch.int32, device=words.device)


def tile_union(
    words: torch.Tensor, nk: int, *, block_size: int, tile_q: int, window: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query tile of ``tile_q`` queries: the sorted blocks any of them attends.

    Returns ``tlist: [B, Hkv, n_tiles, nblocks] int32`` (entries past the count are unused; an entry is
    ``block | FULL_FLAG`` when the whole tile attends all of that block) and ``tcount: [B, Hkv, n_tiles] int32``.
    """
    b, hkv, nq, nw = words.shape
    nblocks = -(-nk // block_size)
    n_tiles = -(-nq // tile_q)
    tlist = torch.empty(b, hkv, n_tiles, nblocks, dtype=torch.int32, device=words.device)
    tcount = torch.empty(b, hkv, n_tiles, dtype=torch.int32, device=words.device)
    _tile_union_kernel[(n_tiles, b * hkv)](
        words, tlist, tcount, nq, nk - nq, nw, nblocks, n_tiles, block_size, window,
        TQ=tile_q, NWP=next_pow2(nw),
        **chain_options(words.device),
    )
    return tlist, tcount
