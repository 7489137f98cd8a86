"""DashAttention routers: one ``indexer_q`` vector ``[Hkv * D]`` per layer (the authors' layout).

They come from a trained checkpoint (attention parameter ``...layers.<i>.self_attn.indexer_q``) or
from a router file written by ``dash-eval fit-router`` (``router.safetensors`` in a directory). Either
way they are attached to the attention modules as the buffer ``indexer_q``, which the ``dash`` method
uses as ``u_h`` (METHODS.md, stage 1).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
ROUTER_FILENAME = "router.safetensors"
NO_ROUTER = "none"  # router="none": drop any attached routers, so dash pools block keys by their mean
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn\.)?indexer_q$")


def routers_from_state(tensors: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Pick ``{layer: indexer_q}`` out of a state dict (keys ``...layers.<i>[.self_attn].indexer_q``)."""
    out = {}
    for name, tensor in tensors.items():
        match = _KEY.search(name)
        if match:
            out[int(match.group(1))] = tensor
    return out


def load_router_file(path: str | os.PathLike) -> dict[int, torch.Tensor]:
    """Routers from a router directory, a ``.safetensors`` file, or a checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        files = [p / ROUTER_FILENAME] if (p / ROUTER_FILENAME).is_file() else sorted(p.glob("*.safetensors"))
    elif p.is_file():
        files = [p]
    else:
        raise ValueError(f"router={str(path)!r}: no such file or directory")
    routers: dict[int, torch.Tensor] = {}
    for f in files:
        try:
            state = load_file(str(f))
        except (SafetensorError, OSError) as exc:
            raise ValueError(
                f"router={str(path)!r}: cannot read {f.name} as safetensors ({exc}); accepted: a directory or "
                f".safetensors file written by dash-eval fit-router, or a checkpoint directory whose safetensors "
                f"hold 'layers.<i>.indexer_q' tensors"
            ) from exc
        routers.update(routers_from_state(state))
    if not routers:
        raise ValueError(f"router={str(path)!r}: no 'layers.<i>.indexer_q' tensors found in {[f.name for f in files]}")
    return routers


def checkpoint_routers(model_dir: str | os.PathLike) -> dict[int, torch.Tensor]:
    """``indexer_q`` tensors carried by a checkpoint directory (empty if none), read lazily per tensor."""
    from safetensors import safe_open

    p = Path(model_dir)
    if not p.is_dir():
        return {}
    out = {}
    for f in sorted(p.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                match = _KEY.search(name)
                if match:
                    out[int(match.group(1))] = handle.get_tensor(name)
    return out


def router_geometry(config) -> tuple[int, int]:
    """``(Hkv, D)`` of a model of this (transformers) config: one layer's ``indexer_q`` holds ``Hkv * D`` values."""
    hkv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return hkv, d


def check_routers(routers: dict[int, torch.Tensor], n_layers: int, config) -> None:
    """Every router layer exists in a model of ``n_layers`` layers and holds ``Hkv * D`` values (``config``)."""
    if not isinstance(routers, dict) or not all(isinstance(layer, int) for layer in routers):
        raise ValueError(f"router must map layer indices to tensors ({{layer: indexer_q}}); got "
                         f"{type(routers).__name__}")
    unknown = sorted(set(routers) - set(range(n_layers)))
    if unknown:
        raise ValueError(f"router has layers {unknown} that the model lacks (model layers: 0..{n_layers - 1})")
    hkv, d = router_geometry(config)
    for layer, tensor in routers.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) not in ((hkv * d,), (hkv, d)):
            got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"router layer {layer}: indexer_q has {got}; the model needs [Hkv * D] = [{hkv * d}] or "
                f"[Hkv, D] = [{hkv}, {d}]"
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"router layer {layer}: indexer_q must hold finite float values; got {tensor.dtype}"
                             f"{'' if not tensor.is_floating_point() else ' with NaN or inf'}")


def attach_routers(model: torch.nn.Module, routers: dict[int, torch.Tensor]) -> None:
    """Set each attention layer's ``indexer_q`` buffer; every shape is checked before any is set."""
    from dash_eval.dash_models.patch import ROUTER_BUFFER, attention_modules

    modules = {m.layer_idx: m for m in attention_modules(model)}
    check_routers(routers, len(modules), model.config)
    hkv, d = router_geometry(model.config)
    for layer, tensor in routers.items():
        module = modules[layer]
        weight = next(module.parameters())
        module.register_buffer(ROUTER_BUFFER, tensor.detach().reshape(hkv * d).to(weight.device, torch.float32))


def detach_routers(model: torch.nn.Module) -> None:
    """Remove every attention layer's ``indexer_q`` buffer (``dash`` then pools block keys by their mean)."""
    from dash_eval.dash_models.patch import ROUTER_BUFFER, attention_modules

    for module in attention_modules(model):
        if ROUTER_BUFFER in module._buffers:
            del module._buffers[ROUTER_BUFFER]


def set_routers(model: torch.nn.Module, routers: dict[int, torch.Tensor]) -> None:
    """Make ``routers`` exactly the model's routers: layers not in it lose theirs."""
    from dash_eval.dash_models.patch import ROUTER_BUFFER, attention_modules

    if routers:
        attach_routers(model, routers)  # checks every shape before changing anything
    for module in attention_modules(model):
        if module.layer_idx not in routers and ROUTER_BUFFER in module._buffers:
            del module._buffers[ROUTER_BUFFER]


def model_routers(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """The ``indexer_q`` buffers currently attached, by layer."""
    from dash_eval.dash_models.patch import ROUTER_BUFFER, attention_modules

    return {m.layer_idx: getattr(m, ROUTER_BUFFER) for m in attention_modules(model) if hasattr(m, ROUTER_BUFFER)}


def _fit_block_size(path: str | os.PathLike) -> int | None:
    """The block size a ``dash-eval fit-router`` directory (or its ``router.safetensors``) was fitted at, from the
    ``router.json`` beside it; ``None`` for other routers (a checkpoint's, a mapping) or an unreadable record."""
    p = Path(path)
    record = (p if p.is_dir() else p.parent) / "router.json"
    try:
        size = json.loads(record.read_text(encoding="utf-8"))["settings"]["block_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) else None


_WARNED: set[tuple] = set()


def warn_router_mismatch(source, routers: dict[int, torch.Tensor], n_layers: int, block_size: int) -> list[str]:
    """Warn (once per source and setting) where routers about to drive ``dash`` differ from how they were
    made: fitted at another block size (a fit-router directory records it), or covering only some layers (the
    others pool block keys by their mean). Returns the warnings given this time."""
    said = []
    if isinstance(source, (str, os.PathLike)):
        fitted = _fit_block_size(source)
        if fitted is not None and fitted != block_size:
            said.append(f"router={str(source)!r} was fitted at block_size={fitted} and now routes blocks of "
                        f"{block_size}: its vectors pool keys over blocks of a size they were not fitted for "
                        f"(fit it again with --block-size {block_size}, or evaluate at block_size={fitted})")
    missing = sorted(set(range(n_layers)) - set(routers))
    if missing:
        said.append(f"router{'=' + repr(str(source)) if isinstance(source, (str, os.PathLike)) else ''} covers "
                    f"{n_layers - len(missing)} of {n_layers} layers; layers {missing} pool block keys by their mean")
    fresh = []
    for text in said:
        if text not in _WARNED:
            _WARNED.add(text)
            logger.warning(text)
            fresh.append(text)
    return fresh
