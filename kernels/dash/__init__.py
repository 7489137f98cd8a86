"""``dash``: DashAttention (arXiv 2605.18753), alpha-entmax routing over router-pooled block summaries."""

from __future__ import annotations

import dataclasses

import torch
from dash_eval.kernels.dash.naive import dash_attention_naive, dash_block_summaries, dash_route
from dash_eval.kernels.registry import AttentionMethod, MethodParams, check_float, check_int, register_method

# Below it, 1 / sigma and the prior's logits overflow float32 (|beta| <= 87.34 / sigma).
SIGMA_MIN = 1e-30


@dataclasses.dataclass(frozen=True, eq=False)
class DashParams(MethodParams):
    alpha: float = 1.5
    scale: float = 1.0
    sigma: float = 1e6
    init_blocks: int = 0
    local_blocks: int = 1
    # [Hkv * D] or [Hkv, D]; None = mean-pooled summaries. Per layer, so never stored in a config.
    router: torch.Tensor | None = dataclasses.field(default=None, metadata={"tensor": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.method_name
        check_float(name, "alpha", self.alpha, low=1.0, high=2.0, low_open=True, accepted="a number in (1, 2]")
        check_float(name, "scale", self.scale, low=0.0)
        check_float(name, "sigma", self.sigma, low=SIGMA_MIN,
                    accepted=f"a number >= {SIGMA_MIN:g} (smaller ones overflow the float32 prior)")
        check_int(name, "init_blocks", self.init_blocks, minimum=0)
        check_int(name, "local_blocks", self.local_blocks, minimum=1)
        if self.router is not None and (
            not isinstance(self.router, torch.Tensor) or not self.router.is_floating_point()
            or self.router.dim() not in (1, 2)
        ):
            got = (f"{self.router.dtype} {tuple(self.router.shape)}" if isinstance(self.router, torch.Tensor)
                   else type(self.router).__name__)
            raise ValueError(f"{name}: parameter router must be a float tensor of shape [Hkv * D] or [Hkv, D], or "
                             f"None; got {got}")
        # A router on the GPU is not scanned: that would make every layer call wait for the device (the inputs
        # are not scanned either). Routers read from files are checked when read (dash_models.router).
        if self.router is not None and self.router.device.type == "cpu" and not bool(self.router.isfinite().all()):
            raise ValueError(f"{name}: parameter router has NaN or infinite values; accepted: finite values")


def layer_router(router: torch.Tensor | None, k: torch.Tensor) -> torch.Tensor | None:
    """``router`` as ``[Hkv * D]`` for keys ``k: [B, Hkv, N, D]``, after checking its shape is ``[Hkv * D]`` or
    ``[Hkv, D]`` (a ``[D, Hkv]`` tensor holds as many values in another order)."""
    if router is None:
        return None
    hkv, d = k.shape[1], k.shape[3]
    if tuple(router.shape) not in ((hkv * d,), (hkv, d)):
        raise ValueError(
            f"dash: router has shape {tuple(router.shape)}; this layer needs [Hkv * D] = [{hkv * d}] or "
            f"[Hkv, D] = [{hkv}, {d}]"
        )
    return router.reshape(hkv * d)


@register_method("dash")
class DashAttention(AttentionMethod):
    params_cls = DashParams

    def reference(self, q, k, v, params, *, softmax_scale, return_stats):
        router = layer_router(params.router, k)
        if router is not None:
            router = router.to(k.device)
        return dash_attention_naive(
            q, k, v, router=router, softmax_scale=softmax_scale, return_stats=return_stats, **params.to_dict()
        )


__all__ = [
    "DashAttention", "DashParams", "dash_attention_naive", "dash_block_summaries", "dash_route", "layer_router",
]
