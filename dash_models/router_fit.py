"""Fitting DashAttention routers (``indexer_q``) on a frozen dense model.

The frozen model runs with full attention over calibration text; for a sample of query positions of
every layer we keep the RoPE-rotated queries, the keys, and the attention mass that full attention puts
on each complete past block. Then, per layer and KV head, the router vector ``u`` (METHODS.md stage 1)
is fitted with Adam so that the alpha-entmax block distribution of stage 2,
``p = entmax(s * c * q . kbar(u) / sqrt(D))`` over the candidate blocks ``j < b(i)``, matches that mass
under the entmax Fenchel-Young loss. ``c`` is an optional per-head routing scale (``fit_scale``); the
``dash`` method applies only its global ``scale``, so ``c`` is recorded in ``router.json`` and not used
at inference.

>>> from dash_eval.dash_models import load_model
>>> from dash_eval.dash_models.router_fit import FitSettings, fit_router
>>> model, tok = load_model("default")                                    # doctest: +SKIP
>>> result = fit_router(model, tok, FitSettings(tokens=2048), "routers/smollm2")  # doctest: +SKIP
>>> model, tok = load_model("default", method="dash", router="routers/smollm2")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dash_eval.dash_models.router_calibration import (  # noqa: F401 - part of this module's API
    CALIBRATION_SOURCES,
    calibration_ids,
    calibration_text,
    repeat_passages,
)
from dash_eval.kernels.dash.naive import dash_block_summaries
from dash_eval.kernels.entmax import entmax, entmax_with_support

logger = logging.getLogger(__name__)

CAPTURE_IMPLEMENTATION = "dash_eval_router_capture"
# What each query head's entmax distribution is fitted to: the group's mean block mass (what METHODS.md's
# pbar averages to; the definition) or the head's own mass, whose supports then union to the
# routed set the way pbar > 0 unions the heads' supports.
FIT_TARGETS = {
    "group": "full attention's group-mean block mass",
    "head": "that query head's own full-attention block mass",
}


# --- settings -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitSettings:
    """Everything that determines a fit. ``tokens`` is the length of each calibration sequence."""

    tokens: int = 4096
    sequences: int = 2
    queries: int = 768  # fitted query positions per sequence (the same in every layer)
    holdout_queries: int = 256  # other positions, for the reported loss and recall
    steps: int = 100
    batch: int = 128  # fitted positions drawn for each Adam step
    lr: float = 0.1
    block_size: int = 64
    alpha: float = 1.5
    scale: float = 1.0
    init_blocks: int = 0
    local_blocks: int = 1
    fit_scale: bool = True
    budget: float = 0.25  # the fraction of candidate blocks the ranking recall keeps
    seed: int = 0
    source: str = "python-docs"  # or the path of a UTF-8 text file
    # each query head fitted to its own full-attention block mass ("head", the default since session 8: it beat
    # mean pooling on needles at 2k and 4k where "group" did not at 4k; docs/router_fitting.md) or to the
    # group-mean one ("group")
    target: str = "head"

    def __post_init__(self) -> None:
        ints = {"tokens": 1, "sequences": 1, "queries": 1, "holdout_queries": 1, "steps": 0, "batch": 1,
                "block_size": 1, "init_blocks": 0, "local_blocks": 1, "seed": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"fit-router: {name}={v!r}; accepted: an integer >= {low}")
        checks = {
            "lr": (self.lr > 0, "a number > 0"),
            "alpha": (1.0 < self.alpha <= 2.0, "a number in (1, 2]"),
            "scale": (self.scale > 0, "a number > 0"),
            "budget": (0.0 < self.budget <= 1.0, "a number in (0, 1]"),
        }
        for name, (ok, accepted) in checks.items():
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not ok:
                raise ValueError(f"fit-router: {name}={v!r}; accepted: {accepted}")
        if self.tokens < self.min_tokens:
            raise ValueError(
                f"fit-router: tokens={self.tokens} is too short to route anything with block_size="
                f"{self.block_size}, init_blocks={self.init_blocks}, local_blocks={self.local_blocks}: a query "
                f"needs at least two complete past blocks, one of them not forced; accepted: tokens >= "
                f"{self.min_tokens}"
            )
        if self.target not in FIT_TARGETS:
            raise ValueError(f"fit-router: target={self.target!r}; accepted: {', '.join(FIT_TARGETS)}")
        if self.source not in CALIBRATION_SOURCES and not os.path.isfile(self.source):
            raise ValueError(
                f"fit-router: source={self.source!r} is neither a built-in calibration source "
                f"({', '.join(CALIBRATION_SOURCES)}) nor an existing text file"
            )
        if self.source not in CALIBRATION_SOURCES:  # read now, so a bad file stops before any weight loads
            try:
                text = Path(self.source).read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"fit-router: source={self.source!r} is not UTF-8 text (byte {exc.start}); "
                                 "accepted: a UTF-8 text file") from None
            if not text.strip():
                raise ValueError(f"fit-router: source={self.source!r} is empty; accepted: a UTF-8 text file")

    @property
    def min_blocks(self) -> int:
        """The smallest query block with something to route: >= 2 candidates, >= 1 of them not forced."""
        return max(2, self.init_blocks + self.local_blocks)

    @property
    def min_tokens(self) -> int:
        return self.min_blocks * self.block_size + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- capture ------------------------------------------------------------------------------------------------


@dataclass
class Capture:
    """What the fit needs from the full-attention pass, for ``B`` sequences, ``L`` layers and ``M``
    sampled query positions (the same positions in every sequence and layer)."""

    layers: list[int]  # layer indices, in order
    keys: torch.Tensor  # [B, L, Hkv, nc * C, D] float32: the keys of the complete blocks
    queries: torch.Tensor  # [B, L, Hkv, G, M, D] float32
    mass: torch.Tensor  # [B, L, Hkv, G, M, nc]: full attention's mass on each complete block, per query head
    softmax_scale: torch.Tensor  # [L]: each layer's logit scaling (1/sqrt(D) unless the model says otherwise)
    positions: torch.Tensor  # [M] sampled query positions, sorted
    holdout: torch.Tensor  # [M] bool: held out of the fit, used for the reported figures
    seq_len: int


def sample_positions(settings: FitSettings, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint fitted and held-out query positions among those with something to route."""
    eligible = torch.arange(settings.min_blocks * settings.block_size, seq_len)
    gen = torch.Generator().manual_seed(settings.seed)
    order = eligible[torch.randperm(eligible.numel(), generator=gen)]
    want = settings.queries + settings.holdout_queries
    n_fit = settings.queries if order.numel() >= want else order.numel() * settings.queries // want
    n_hold = min(settings.holdout_queries, order.numel() - n_fit)
    if n_fit < 1 or n_hold < 1:
        raise ValueError(f"fit-router: a {seq_len}-token sequence has only {order.numel()} query positions with "
                         f"blocks to route, too few to split into fitted and held-out queries; accepted: "
                         f"tokens >= {settings.min_tokens + 1}")
    if n_fit < settings.queries or n_hold < settings.holdout_queries:
        logger.warning(
            f"fit-router: a {seq_len}-token sequence has {order.numel()} query positions with blocks to route, "
            f"fewer than queries + holdout_queries = {want}; using {n_fit} fitted and {n_hold} held-out per "
            "sequence (more tokens give the asked-for numbers)")
    chosen = torch.cat([order[:n_fit], order[n_fit : n_fit + n_hold]])
    holdout = torch.cat([torch.zeros(n_fit, dtype=torch.bool), torch.ones(n_hold, dtype=torch.bool)])
    idx = torch.argsort(chosen)
    return chosen[idx], holdout[idx]


def block_mass(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, block_size: int,
               softmax_scale: float, chunk: int = 256) -> torch.Tensor:
    """Causal softmax attention of the queries ``q: [Hq, M, D]`` at ``positions`` over ``k: [Hkv, N, D]``,
    summed over each complete block's tokens: ``[Hq, M, N // block_size]``."""
    hq, hkv, n = q.shape[0], k.shape[0], k.shape[1]
    nc = n // block_size
    kk = k.float().repeat_interleave(hq // hkv, dim=0)
    out = []
    for a in range(0, q.shape[1], chunk):
        pos = positions[a : a + chunk].to(q.device)
        logits = torch.einsum("hmd,hnd->hmn", q[:, a : a + chunk].float(), kk) * softmax_scale
        future = torch.arange(n, device=q.device)[None, None, :] > pos[None, :, None]
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)[..., : nc * block_size]
        out.append(probs.reshape(hq, -1, nc, block_size).sum(-1))
    return torch.cat(out, dim=1)


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    record: Callable | None = getattr(module, "_dash_router_capture", None)
    if record is None:
        raise RuntimeError("the router-capture attention ran on a module that is not being captured")
    record(module, query, key, scaling)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=True, **kwargs)


def _register_capture() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if CAPTURE_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capture_attention)
    if CAPTURE_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


def check_model(model: torch.nn.Module) -> tuple[list[torch.nn.Module], int, int, int]:
    """The attention modules, ``Hq``, ``Hkv`` and ``D``; an error names what is missing."""
    from dash_eval.dash_models.patch import attention_modules, check_supported

    check_supported(model.config)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"fit-router: {type(model).__name__} has no attention modules with layer_idx and k_proj; "
                         f"accepted: a causal LM whose attention calls transformers' attention interface")
    cfg = model.config
    hq = cfg.num_attention_heads
    hkv = getattr(cfg, "num_key_value_heads", None) or hq
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    return modules, hq, hkv, d


def capture(model: torch.nn.Module, input_ids: torch.Tensor, settings: FitSettings,
            progress: bool = True) -> Capture:
    """Run the frozen model with full attention over ``input_ids: [B, N]`` and keep, per layer, the keys
    of the complete blocks, the sampled queries and full attention's per-block mass."""
    from dash_eval.dash_models.patch import _set_implementation
    from tqdm.auto import tqdm

    modules, hq, hkv, d = check_model(model)
    n = input_ids.shape[1]
    if n < settings.min_tokens:
        raise ValueError(f"fit-router: calibration sequences have {n} tokens, under two blocks of block_size="
                         f"{settings.block_size} plus a query; accepted: >= {settings.min_tokens} tokens")
    positions, holdout = sample_positions(settings, n)
    c, nc, g = settings.block_size, n // settings.block_size, hq // hkv
    slots: dict[int, dict[str, list]] = {m.layer_idx: {"k": [], "q": [], "mass": [], "scale": []} for m in modules}

    def record(module, query, key, scaling):
        if query.shape[1:3] != (hq, n) or key.shape[1:3] != (hkv, n):
            raise ValueError(
                f"fit-router: layer {module.layer_idx} passed queries {tuple(query.shape)} and keys "
                f"{tuple(key.shape)} to attention; expected [1, {hq}, {n}, {d}] and [1, {hkv}, {n}, {d}] "
                f"(whole sequence, no cache, the config's head counts)"
            )
        sm = float(scaling) if scaling is not None else d ** -0.5
        q = query[0, :, positions.to(query.device)].float()
        slot = slots[module.layer_idx]
        slot["k"].append(key[0, :, : nc * c].float().cpu())
        slot["q"].append(q.reshape(hkv, g, -1, d).cpu())
        slot["mass"].append(block_mass(q, key[0], positions, c, sm).reshape(hkv, g, -1, nc).cpu())
        slot["scale"].append(sm)

    _register_capture()
    previous = model.config._attn_implementation
    device = next(model.parameters()).device
    try:
        for m in modules:
            m._dash_router_capture = record
        _set_implementation(model, CAPTURE_IMPLEMENTATION)
        with torch.no_grad():
            for row in tqdm(input_ids, desc="full-attention pass", unit="seq", disable=not progress):
                model.base_model(input_ids=row[None].to(device), use_cache=False)
    finally:
        for m in modules:
            m.__dict__.pop("_dash_router_capture", None)
        _set_implementation(model, previous)
    order = sorted(slots)
    if any(len(slots[i]["k"]) != input_ids.shape[0] for i in order):
        raise ValueError("fit-router: not every attention layer ran through transformers' attention interface; "
                         "accepted: models whose attention modules call it (see SUPPORTED_MODEL_TYPES)")

    def stack(key: str) -> torch.Tensor:
        return torch.stack([torch.stack([slots[i][key][b] for i in order]) for b in range(input_ids.shape[0])])

    scale = torch.tensor([slots[i]["scale"][0] for i in order], dtype=torch.float32)
    return Capture(order, stack("k"), stack("q"), stack("mass"), scale, positions, holdout, n)


# --- targets, loss, routing ---------------------------------------------------------------------------------


@dataclass
class Batch:
    """The queries ``sel`` of a capture with their candidate masks and targets."""

    queries: torch.Tensor  # [B, L, Hkv, G, M', D]
    candidates: torch.Tensor  # [M', nc]: j < b(i)
    routable: torch.Tensor  # [M', nc]: candidates that are not forced
    target: torch.Tensor  # [B, L, Hkv, M', nc]: group-mean block mass on routable blocks, renormalised
    weight: torch.Tensor  # [B, L, Hkv, M']: the share of attention the routable blocks hold (0: skip)
    head_target: torch.Tensor | None = None  # [B, L, Hkv, G, M', nc]: each head's own (target="head")
    head_weight: torch.Tensor | None = None  # [B, L, Hkv, G, M']


def candidate_masks(positions: torch.Tensor, nc: int, settings: FitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """``[M, nc]`` candidates (``j < b(i)``) and the candidates the routing decides (not forced)."""
    qb = positions // settings.block_size
    j = torch.arange(nc)[None, :]
    candidates = j < qb[:, None]
    routable = candidates & (j >= settings.init_blocks) & (j < qb[:, None] - (settings.local_blocks - 1))
    return candidates, routable


def _renormalised(mass: torch.Tensor, routable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass on the routable blocks summed to one, and the share of attention they hold (0 where none)."""
    mass = mass * routable
    share = mass.sum(-1)
    return mass / share.clamp(min=torch.finfo(share.dtype).tiny)[..., None], share * routable.any(-1)


def make_batch(cap: Capture, sel: torch.Tensor, settings: FitSettings) -> Batch:
    candidates, routable = candidate_masks(cap.positions[sel], cap.mass.shape[-1], settings)
    mass = cap.mass[..., sel, :]
    target, weight = _renormalised(mass.mean(3), routable)
    batch = Batch(cap.queries[..., sel, :], candidates, routable, target, weight)
    if settings.target == "head":
        batch.head_target, batch.head_weight = _renormalised(mass, routable)
    return batch


class _EntmaxFenchelYoung(torch.autograd.Function):
    """``L(z; y) = (p - y) . z + Omega(y) - Omega(p)``, ``p = entmax(z)``, ``Omega`` the Tsallis negentropy
    ``(sum p^alpha - 1) / (alpha (alpha - 1))``; its gradient in ``z`` is exactly ``p - y``."""

    @staticmethod
    def forward(ctx, z, y, mask, alpha):
        z = torch.where(mask, z, torch.zeros_like(z))
        p = entmax(z, alpha, mask)

        def omega(x):
            return (x.pow(alpha).sum(-1) - 1) / (alpha * (alpha - 1))

        ctx.save_for_backward(p - y)
        return ((p - y) * z).sum(-1) + omega(y) - omega(p)

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        return grad[..., None] * diff, None, None, None


def entmax_fy_loss(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """The alpha-entmax Fenchel-Young loss over the last dimension (entries outside ``mask`` ignored;
    ``y`` sums to one over ``mask``). Zero exactly when ``entmax(z) == y``."""
    return _EntmaxFenchelYoung.apply(z, y, mask.expand_as(z), alpha)


def block_summaries(cap: Capture, u: torch.Tensor | None, block_size: int) -> torch.Tensor:
    """Stage 1 for every layer at once: ``kbar: [B, L, Hkv, nc, D]`` from routers ``u: [L, Hkv, D]``."""
    b, n_layers, hkv, n, d = cap.keys.shape
    # dash_block_summaries scales u . k by one softmax_scale; each layer's own is folded into its u
    router = None if u is None else (u * cap.softmax_scale[:, None, None]).reshape(-1)
    kbar = dash_block_summaries(cap.keys.reshape(b, n_layers * hkv, n, d), router, block_size, 1.0)
    return kbar.reshape(b, n_layers, hkv, -1, d)


def routing_logits(cap: Capture, batch: Batch, kbar: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Stage 2's ``z = s * (q . kbar) * softmax_scale``: ``[B, L, Hkv, G, M', nc]``; ``scale: [L, Hkv]``."""
    z = torch.einsum("blhgmd,blhjd->blhgmj", batch.queries, kbar)
    return z * (scale * cap.softmax_scale[:, None])[None, :, :, None, None, None]


def fit_losses(cap: Capture, batch: Batch, kbar: torch.Tensor, scale: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per layer ``[L]``: the Fenchel-Young loss of each query head's block distribution against the
    group's target (or, with head targets, the head's own), weighted over heads and queries by the share
    of attention the routable blocks hold."""
    z = routing_logits(cap, batch, kbar, scale)
    if batch.head_target is None:
        target, w = batch.target[:, :, :, None], batch.weight[:, :, :, None].expand(z.shape[:-1])
    else:
        target, w = batch.head_target, batch.head_weight
    loss = entmax_fy_loss(z, target, batch.candidates, alpha)
    return (loss * w).sum((0, 2, 3, 4)) / w.sum((0, 2, 3, 4)).clamp(min=torch.finfo(w.dtype).tiny)


def routed_sets(cap: Capture, batch: Batch, kbar: torch.Tensor, scale: torch.Tensor, alpha: float) -> torch.Tensor:
    """``R_i`` as the ``dash`` method builds it (``pbar > 0``, METHODS.md stage 2: the union of the heads'
    supports), restricted to the routable blocks: ``[B, L, Hkv, M', nc]`` bool."""
    z = routing_logits(cap, batch, kbar, scale)
    return entmax_with_support(z, alpha, batch.candidates)[1].any(3) & batch.routable


def recall_and_fraction(batch: Batch, routed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer ``[L]``: mean over queries of the target mass that ``routed`` keeps, and of the share of
    routable blocks it holds."""
    valid = batch.weight > 0
    cnt = valid.sum((0, 2, 3)).clamp(min=1)
    recall = ((batch.target * routed).sum(-1) * valid).sum((0, 2, 3)) / cnt
    frac = (routed.sum(-1) / batch.routable.sum(-1).clamp(min=1)) * valid
    return recall, frac.sum((0, 2, 3)) / cnt


# The bracket of the bisections on the routing scale, and the routing passes the held-out figures take
# (evaluate twice: 24 + 1; the layer profile: 16 + 1 + 16), for the progress bar.
SCALE_LO, SCALE_HI = 1e-3, 1e3
EVAL_PASSES = 2 * (24 + 1) + (16 + 1 + 16)


def recall_at_fraction(cap: Capture, batch: Batch, kbar: torch.Tensor, settings: FitSettings,
                       steps: int = 24, fraction: torch.Tensor | None = None, tick: Callable[[], Any] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per layer, the global routing scale whose routed fraction is ``settings.budget`` (or ``fraction[l]``
    in layer ``l``; bisection on ``log s``; a larger scale routes fewer blocks), with the recall and fraction
    there. Comparing routers here compares them at equal sparsity, as a sweep that calibrates ``scale`` does."""
    n_layers, hkv = cap.keys.shape[1], cap.keys.shape[2]
    goal = torch.full((n_layers,), float(settings.budget)) if fraction is None else fraction
    lo = torch.full((n_layers,), math.log(SCALE_LO))
    hi = torch.full((n_layers,), math.log(SCALE_HI))
    for _ in range(steps):
        mid = (lo + hi) / 2
        routed = routed_sets(cap, batch, kbar, mid.exp()[:, None].expand(n_layers, hkv), settings.alpha)
        _, frac = recall_and_fraction(batch, routed)
        dense = frac > goal  # too many blocks: raise the scale
        lo = torch.where(dense, mid, lo)
        hi = torch.where(dense, hi, mid)
        if tick is not None:
            tick()
    s = hi.exp()[:, None].expand(n_layers, hkv)
    recall, frac = recall_and_fraction(batch, routed_sets(cap, batch, kbar, s, settings.alpha))
    return recall, frac, hi.exp()


def global_scale_at_fraction(cap: Capture, batch: Batch, kbar: torch.Tensor, settings: FitSettings,
                             steps: int = 16, tick: Callable[[], Any] | None = None) -> float:
    """The one routing scale (every layer alike, as the ``dash`` method has) whose routed fraction, averaged
    over layers, is ``settings.budget``."""
    n_layers, hkv = cap.keys.shape[1], cap.keys.shape[2]
    lo, hi = math.log(SCALE_LO), math.log(SCALE_HI)
    for _ in range(steps):
        mid = (lo + hi) / 2
        routed = routed_sets(cap, batch, kbar, torch.full((n_layers, hkv), math.exp(mid)), settings.alpha)
        _, frac = recall_and_fraction(batch, routed)
        lo, hi = (mid, hi) if frac.mean() > settings.budget else (lo, mid)
        if tick is not None:
            tick()
    return math.exp(hi)


def profile_layer_scales(cap: Capture, batch: Batch, kbar_mean: torch.Tensor, kbar_fit: torch.Tensor,
                         settings: FitSettings, tick: Callable[[], Any] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-layer multipliers of ``scale`` that give the fitted router mean pooling's budget in every layer.

    At one global scale a fitted router spends its budget differently across layers than mean pooling does
    (sharper pooling routes fewer blocks in some layers, flatter pooling more in others). Mean pooling is
    taken at the global scale ``s0`` that routes ``settings.budget`` of the blocks on average; layer ``l``
    of the fitted router is then bisected to mean pooling's fraction in that layer, at ``s_l``, and
    ``m_l = s_l / s0``. Routing with ``scale * m_l`` keeps mean pooling's allocation over layers and the
    fitted ranking within each layer. Returns ``(m, recall of mean pooling, recall of the fitted router)``,
    per layer, at that allocation."""
    n_layers, hkv = cap.keys.shape[1], cap.keys.shape[2]
    s0 = global_scale_at_fraction(cap, batch, kbar_mean, settings, tick=tick)  # 16 halvings of log s: 2e-4
    if not SCALE_LO * 1.01 < s0 < SCALE_HI / 1.01:
        logger.warning(
            f"fit-router: no routing scale in [{SCALE_LO:g}, {SCALE_HI:g}] routes budget={settings.budget} of the "
            f"blocks on these held-out queries (the nearest routes {'more' if s0 >= 1 else 'fewer'}); the layer "
            "scales are not meaningful: a longer text (tokens) or another budget gives them")
    recall_mean, frac_mean = recall_and_fraction(
        batch, routed_sets(cap, batch, kbar_mean, torch.full((n_layers, hkv), s0), settings.alpha))
    if tick is not None:
        tick()
    recall_fit, _, s_fit = recall_at_fraction(cap, batch, kbar_fit, settings, steps=16, fraction=frac_mean,
                                              tick=tick)
    return s_fit / s0, recall_mean, recall_fit


# --- the fit ------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    routers: dict[int, torch.Tensor]  # layer -> indexer_q [Hkv * D] float32
    routing_scales: dict[int, torch.Tensor] | None  # layer -> [Hkv] (fit_scale only; not read by 'dash')
    layers: list[dict[str, Any]]  # per layer: loss, recall, routed fraction, recall at budget, before/after
    loss_curve: list[float]  # mean minibatch loss over layers at each step
    settings: FitSettings
    # layer -> multiplier of dash's scale that gives this router mean pooling's budget in that layer
    # (profile_layer_scales); applied only when asked for (layer_scales=<router dir>)
    layer_scales: dict[int, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


def evaluate(cap: Capture, u: torch.Tensor | None, log_scale: torch.Tensor | None,
             settings: FitSettings, tick: Callable[[], Any] | None = None) -> list[dict[str, float]]:
    """Per-layer figures on the held-out queries: the fitted loss, recall and routed fraction at the
    fit's global ``scale`` (as the ``dash`` method routes), and recall at routed fraction ``budget``."""
    batch = make_batch(cap, torch.nonzero(cap.holdout).flatten(), settings)
    n_layers, hkv = cap.keys.shape[1], cap.keys.shape[2]
    s = torch.full((n_layers, hkv), float(settings.scale))
    with torch.no_grad():
        kbar = block_summaries(cap, u, settings.block_size)
        fit_scale = s if log_scale is None else s * log_scale.exp()
        loss = fit_losses(cap, batch, kbar, fit_scale, settings.alpha)
        recall, frac = recall_and_fraction(batch, routed_sets(cap, batch, kbar, s, settings.alpha))
        r_iso, f_iso, s_iso = recall_at_fraction(cap, batch, kbar, settings, tick=tick)
    if tick is not None:
        tick()
    return [
        {"loss": float(loss[i]), "recall": float(recall[i]), "routed_fraction": float(frac[i]),
         "recall_at_budget": float(r_iso[i]), "scale_at_budget": float(s_iso[i])}
        for i in range(n_layers)
    ]


def fit_captured(cap: Capture, settings: FitSettings, progress: bool = True) -> FitResult:
    """Adam on every layer's router (and per-head scale) at once; each layer's loss depends only on its
    own parameters, so this is the same as fitting the layers one by one."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(settings.seed)
    b, n_layers, hkv, _, d = cap.keys.shape
    u = torch.zeros(n_layers, hkv, d, requires_grad=True)
    log_scale = torch.zeros(n_layers, hkv, requires_grad=settings.fit_scale)
    opt = torch.optim.Adam([u, log_scale] if settings.fit_scale else [u], lr=settings.lr)
    fit_sel = torch.nonzero(~cap.holdout).flatten()
    if settings.steps == 0:
        logger.warning("fit-router: steps=0, so the routers stay zero: the directory will hold mean pooling "
                       "(what 'dash' does without a router), with its held-out figures")
    if settings.batch > fit_sel.numel():
        logger.warning(f"fit-router: batch={settings.batch} is more than the {fit_sel.numel()} fitted query "
                       f"positions; each step uses all {fit_sel.numel()}")
    # the held-out figures (before, after, layer profile) are bisections; one bar counts their routing passes
    held = tqdm(total=EVAL_PASSES, desc="held-out evaluation", unit="pass", disable=not progress, leave=False)
    before = evaluate(cap, None, None, settings, tick=held.update)
    curve: list[float] = []
    bar = tqdm(range(settings.steps), desc="fitting routers", unit="step", disable=not progress)
    for _ in bar:
        pick = fit_sel[torch.randperm(fit_sel.numel(), generator=gen)[: settings.batch]].sort().values
        batch = make_batch(cap, pick, settings)
        opt.zero_grad(set_to_none=True)
        scale = settings.scale * log_scale.exp()
        losses = fit_losses(cap, batch, block_summaries(cap, u, settings.block_size), scale, settings.alpha)
        losses.sum().backward()
        opt.step()
        curve.append(float(losses.detach().mean()))
        bar.set_postfix(loss=f"{curve[-1]:.4f}")
    bar.close()
    u_fit = u.detach()
    scale_fit = log_scale.detach() if settings.fit_scale else None
    after = evaluate(cap, u_fit, scale_fit, settings, tick=held.update)
    multipliers, recall_mean, recall_fit = layer_profile(cap, u_fit, settings, tick=held.update)
    held.close()
    layers = []
    for i, layer in enumerate(cap.layers):
        row: dict[str, Any] = {"layer": layer}
        for key in before[i]:
            row[f"{key}_before"] = before[i][key]
            row[f"{key}_after"] = after[i][key]
        row["recall_at_profile_before"] = float(recall_mean[i])
        row["recall_at_profile_after"] = float(recall_fit[i])
        layers.append(row)
    routers = {layer: u_fit[i].reshape(hkv * d).contiguous().clone() for i, layer in enumerate(cap.layers)}
    routing_scales = None if scale_fit is None else {
        layer: scale_fit[i].exp().clone() for i, layer in enumerate(cap.layers)
    }
    layer_scales = {layer: float(multipliers[i]) for i, layer in enumerate(cap.layers)}
    return FitResult(routers, routing_scales, layers, curve, settings, layer_scales)


def layer_profile(cap: Capture, u: torch.Tensor, settings: FitSettings, tick: Callable[[], Any] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``profile_layer_scales`` of routers ``u: [L, Hkv, D]`` on the held-out queries."""
    batch = make_batch(cap, torch.nonzero(cap.holdout).flatten(), settings)
    with torch.no_grad():
        kbar_mean = block_summaries(cap, None, settings.block_size)
        kbar_fit = block_summaries(cap, u, settings.block_size)
        return profile_layer_scales(cap, batch, kbar_mean, kbar_fit, settings, tick=tick)


def fit_router(model: torch.nn.Module, tokenizer: Any, settings: FitSettings, output: str | os.PathLike | None = None,
               *, progress: bool = True, model_name: str | None = None) -> FitResult:
    """Calibration text -> full-attention capture -> fit; writes the router directory when ``output``."""
    from dash_eval.dash_models.router_output import check_output, save_router

    check_model(model)
    if output is not None:
        check_output(output)
    t0 = time.perf_counter()
    ids, calib = calibration_ids(tokenizer, settings)
    t1 = time.perf_counter()
    cap = capture(model, ids, settings, progress=progress)
    t2 = time.perf_counter()
    result = fit_captured(cap, settings, progress=progress)
    t3 = time.perf_counter()
    result.timing = {"tokenize_s": t1 - t0, "capture_s": t2 - t1, "fit_s": t3 - t2, "total_s": t3 - t0}
    if output is not None:
        save_router(result, output, model, calibration=calib, model_name=model_name)
    return result
