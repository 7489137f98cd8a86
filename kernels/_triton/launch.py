"""Helpers shared by the Triton launchers."""

from __future__ import annotations

import functools
import os

import torch

# dtypes the Triton kernels take; float64 goes to the reference.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Block sizes the fine-stage kernel tiles directly (one key block = one tensor-core tile).
KERNEL_BLOCK_SIZES = (16, 32, 64, 128)


# Triton decides at decoration time whether a kernel runs on the CPU interpreter; the kernels of this
# package are decorated when this module is first imported, so the flag is read once, here.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreting() -> bool:
    """True when the kernels run on the CPU interpreter, whose ``range`` cannot take a loaded bound and
    whose ``dot`` cannot multiply bfloat16."""
    return _INTERPRETED


def dot_mode(dtype: torch.dtype) -> int:
    """``ops.mma``'s mode for inputs of ``dtype``."""
    if dtype == torch.float32:
        return 1
    return 2 if interpreting() else 0


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


# Programmatic dependent launch (Hopper and later): a kernel is launched while the one before it in the
# stream drains, and waits (``ops.chain_start``) until that one's writes are visible before touching
# memory, so a chain of short launches (a decode step) does not pay each launch's ramp-up in turn.
# A module switch, so that scripts/gpu_variants.py can time both.
USE_PDL = True


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def hopper(device: torch.device) -> bool:
    """Whether ``device`` is an NVIDIA GPU of compute capability 9.0 or later (never the interpreter or
    ROCm, whose capabilities also reach 9). ``scripts/compile_sm90.py`` replaces it to compile for sm_90."""
    if interpreting() or device.type != "cuda" or torch.version.hip is not None:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index) >= (9, 0)


def chained(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with programmatic dependent launch (``PDL=`` and
    ``launch_pdl=`` of every launch in this package): Hopper and later."""
    return USE_PDL and hopper(device)


def tma_descriptor(t: torch.Tensor, block_shape: list[int]):
    """A host-side tensor descriptor of ``t`` (Hopper's tensor memory accelerator: a load of ``block_shape``
    at any offset, rows past the tensor's end read as zeros), or ``None`` where the hardware's rules do not
    hold: the last dimension contiguous, the base and every other stride a multiple of 16 bytes, each block
    dimension at most 256 and a power of two. Only for ``hopper`` devices and the interpreter (which runs
    descriptor loads too, so the CPU tests cover the path the GPU takes)."""
    if not (interpreting() or hopper(t.device)):
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    size = t.element_size()
    if t.numel() == 0 or t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * size % 16 for s in t.stride()[:-1]):
        return None
    if any(b > 256 or b & (b - 1) for b in block_shape) or block_shape[-1] * size < 16:
        return None
    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block_shape))


# One-load-per-program launches (decode's block-parallel score launches) read through TMA only with at least
# this many programs per SM: a 1,024-program top-k score launch at 8 KV heads gained 2.5-4 us a step (v31),
# while 64-256 programs (2 KV heads, and dash's score launch) lost up to 0.9 us.
TMA_MIN_PROGRAMS_PER_SM = 4


def tma_pays(device: torch.device, programs: int) -> bool:
    """Whether a launch of ``programs`` programs that each issue one load keeps enough of them in flight for
    TMA's longer issue latency to pay (the interpreter: always, so that the CPU tests run the path)."""
    if interpreting():
        return True
    if not hopper(device):
        return False
    return programs >= TMA_MIN_PROGRAMS_PER_SM * num_sms(device.index or 0)


def descriptor_pair(a: torch.Tensor, b: torch.Tensor, block_shape: list[int], enabled: bool = True):
    """Two tensors a kernel reads with the same box (K and V, or a key's high part and residual) as
    ``(a, b, TMA)``: both as tensor descriptors and ``True``, or, where descriptors are off or either is not
    allowed (``tma_descriptor``), both tensors themselves and ``False``."""
    if enabled:
        da, db = tma_descriptor(a, block_shape), tma_descriptor(b, block_shape)
        if da is not None and db is not None:
            return da, db, True
    return a, b, False


def key_descriptors(hi: torch.Tensor, lo: torch.Tensor | None, count: int, box_rows: int, enabled: bool = True):
    """The arguments ``KHI, KLO`` and ``TMA`` of a kernel that scores rows against cached keys
    (``ops.split_scores``): ``hi`` and ``lo`` (``[B, Hkv, capacity, D]``, of which the first ``count`` rows are
    valid; ``lo`` ``None`` passes ``hi`` in its place) as ``[B * Hkv, count, D]`` descriptors with a box of
    ``box_rows`` keys, or the tensors themselves with ``TMA = False`` where descriptors are off or not allowed."""
    lo_arg = lo if lo is not None else hi
    d = hi.shape[-1]
    if enabled and count > 0 and d == next_pow2(max(d, 16)):  # the kernels' padded head dim, DP
        descs = descriptor_pair(hi.flatten(0, 1)[:, :count], lo_arg.flatten(0, 1)[:, :count], [1, box_rows, d])
        if descs[2]:
            return descs
    return hi, lo_arg, False


def chain_options(device: torch.device) -> dict:
    """The launch keywords of programmatic dependent launch for a kernel taking ``PDL: tl.constexpr``."""
    on = chained(device)
    return {"PDL": on, "launch_pdl": on}


@functools.cache
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def persistent_programs(device: torch.device, per_sm: int = 4) -> int:
    """Programs in flight for a persistent grid (its scratch is sized by this, never by the length)."""
    if device.type == "cuda":
        return num_sms(device.index if device.index is not None else torch.cuda.current_device()) * per_sm
    return 4  # the interpreter runs programs one after another


# The pipeline stages that fit in shared memory, per kernel and specialisation, for the specialisations that
# needed fewer than asked (see launch_with_stages), and the kernels that have any.
_STAGES_THAT_FIT: dict[tuple, int] = {}
_SHRUNK: set = set()


def _specialisation(args: tuple, kwargs: dict) -> tuple:
    """What decides a launch's shared memory: the compile-time keywords and the tensors' dtypes (with a
    descriptor's box)."""
    key = [(k, v) for k, v in sorted(kwargs.items()) if isinstance(v, (bool, int, float, str))]
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append(a.dtype)
        elif hasattr(a, "block_shape"):  # a tensor descriptor
            key.append((a.base.dtype, tuple(a.block_shape)))
    return tuple(key)


def launch_with_stages(kernel, grid, args: tuple, kwargs: dict, stages: int) -> None:
    """``kernel[grid](*args, num_stages=stages, **kwargs)``, with fewer software-pipeline stages where the GPU's
    shared memory cannot hold ``stages`` (Triton refuses such a launch with ``OutOfResources``: fp32 inputs at
    head dim 128 in decode's 4-stage fine stage, head dim 256 in prefill). The count that fits is remembered per
    specialisation, so only a first launch retries (and a kernel that never needed fewer launches directly,
    without building the key); a kernel that does not fit with one stage raises."""
    from triton.runtime.errors import OutOfResources

    name = getattr(getattr(kernel, "fn", kernel), "__name__", None)
    key = (name, stages, _specialisation(args, kwargs)) if name in _SHRUNK else None
    s = _STAGES_THAT_FIT.get(key, stages)
    while True:
        try:
            kernel[grid](*args, num_stages=s, **kwargs)
        except OutOfResources:
            if s <= 1:
                raise
            s -= 1
            continue
        if s != stages:
            _SHRUNK.add(name)
            _STAGES_THAT_FIT[key or (name, stages, _specialisation(args, kwargs))] = s
        return


# The widths (blocks or kernels per score chunk) that fit in shared memory, per launch site and specialisation, for
# the launches that needed narrower chunks than asked (see launch_narrowing).
_WIDTH_THAT_FITS: dict[tuple, int] = {}


def launch_narrowing(launch_at, width: int, key: tuple, least: int = 16) -> int:
    """``launch_at(width)``, halving ``width`` while the GPU refuses the launch for shared memory (Triton's
    ``OutOfResources``): the routing kernels stage a chunk of ``width`` summaries or kernel keys for their score
    products, which at float32 and head dim 256 does not fit sm_90's 227 KB even at one pipeline stage. ``key``
    names the launch site and what decides its shared memory (the device included); the width that fit is
    remembered under it, so only a first launch retries. Raises below ``least``. Returns the width launched."""
    from triton.runtime.errors import OutOfResources

    asked = width
    width = _WIDTH_THAT_FITS.get(key, width)
    while True:
        try:
            launch_at(width)
        except OutOfResources:
            if width // 2 < least:
                raise
            width //= 2
            continue
        if width != asked:
            _WIDTH_THAT_FITS[key] = width
        return width


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def kernel_supports(q: torch.Tensor, block_size: int) -> str | None:
    """Why the Triton kernels cannot take these inputs (None when they can)."""
    if q.dtype not in KERNEL_DTYPES:
        return f"dtype {q.dtype} (kernels take float16, bfloat16, float32)"
    if block_size not in KERNEL_BLOCK_SIZES:
        return f"block_size={block_size} (kernels take {', '.join(map(str, KERNEL_BLOCK_SIZES))})"
    if q.shape[-1] > 256:
        return f"head dim {q.shape[-1]} (kernels take up to 256)"
    return None
