"""Parameters shared by the two top-k methods (``infllmv2`` and ``nsa``)."""

from __future__ import annotations

import dataclasses

from dash_eval.kernels.registry import IDENTITY_WHEN_SET, MethodParams, check_int

# How the kernel scores are computed: "float32" (METHODS.md: float32 kernel keys, exact) or "input": the
# kernel keys rounded to the inputs' dtype first, as the published NSA and InfLLM-V2 kernels compute
# compressed attention (one 16-bit tensor-core product per score instead of two; products accumulated in
# float32). Float32 inputs score the same either way.
SCORE_PRECISIONS = ("float32", "input")


@dataclasses.dataclass(frozen=True)
class TopkParams(MethodParams):
    kernel_size: int = 32
    kernel_stride: int = 16
    init_blocks: int = 1
    local_blocks: int = 32
    topk: int = 63
    score_precision: str = dataclasses.field(default="float32", metadata=IDENTITY_WHEN_SET)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.method_name
        check_int(name, "kernel_size", self.kernel_size, minimum=1)
        check_int(name, "kernel_stride", self.kernel_stride, minimum=1)
        check_int(name, "init_blocks", self.init_blocks, minimum=0)
        check_int(name, "local_blocks", self.local_blocks, minimum=1)
        check_int(name, "topk", self.topk, minimum=0)
        if self.score_precision not in SCORE_PRECISIONS:
            raise ValueError(
                f"{name}: parameter score_precision={self.score_precision!r} must be one of "
                f"{', '.join(map(repr, SCORE_PRECISIONS))}"
            )
        if self.kernel_size % self.kernel_stride:
            raise ValueError(
                f"{name}: kernel_size={self.kernel_size} must be a multiple of kernel_stride={self.kernel_stride}"
            )
        if self.block_size % self.kernel_stride:
            raise ValueError(
                f"{name}: block_size={self.block_size} must be a multiple of kernel_stride={self.kernel_stride}"
            )
