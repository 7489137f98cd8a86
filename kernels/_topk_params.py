"""Parameters shared by the two top-k methods (``infllmv2`` and ``nsa``)."""

from __future__ import annotations

import dataclasses

from dash_eval.kernels.registry import MethodParams, check_int


@dataclasses.dataclass(frozen=True)
class TopkParams(MethodParams):
    kernel_size: int = 32
    kernel_stride: int = 16
    init_blocks: int = 1
    local_blocks: int = 32
    topk: int = 63

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.method_name
        check_int(name, "kernel_size", self.kernel_size, minimum=1)
        check_int(name, "kernel_stride", self.kernel_stride, minimum=1)
        check_int(name, "init_blocks", self.init_blocks, minimum=0)
        check_int(name, "local_blocks", self.local_blocks, minimum=1)
        check_int(name, "topk", self.topk, minimum=0)
        if self.kernel_size % self.kernel_stride:
            raise ValueError(
                f"{name}: kernel_size={self.kernel_size} must be a multiple of kernel_stride={self.kernel_stride}"
            )
        if self.block_size % self.kernel_stride:
            raise ValueError(
                f"{name}: block_size={self.block_size} must be a multiple of kernel_stride={self.kernel_stride}"
            )
