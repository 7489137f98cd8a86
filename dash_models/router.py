"""DashAttention routers: one ``indexer_q`` vector ``[Hkv * D]`` per layer (the authors' layout).

They come from a trained checkpoint (attention parameter ``...layers.<i>.self_attn.indexer_q``) or
from a router file written by ``dash-eval fit-router`` (``router.safetensors`` in a directory). Either
way they are attached to the attention modules as the buffer ``indexer_q``, which the ``dash`` method
uses as ``u_h`` (METHODS.md, stage 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
ROUTER_FILENAME = "router.safetensors"
ROUTER_JSON = "router.json"
TENSORS_DIGEST = "tensors_sha256"  # router.json's record of the router.safetensors it describes
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


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_record(path: Path, tensors: Path) -> None:
    """A fit-router directory's ``router.json`` must describe the ``router.safetensors`` beside it (the digest it
    records); without one the fit's settings cannot be checked, which is said once."""
    record_path = path / ROUTER_JSON
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        _warn_once(f"router={str(path)!r}: {ROUTER_JSON} is missing beside {ROUTER_FILENAME}, so the fit's settings "
                   "(block size, model) cannot be checked; a fit-router write cut short leaves this, so fit again")
        return
    except (OSError, ValueError) as exc:
        raise ValueError(f"router={str(path)!r}: {ROUTER_JSON} is unreadable ({exc}); accepted: the directory "
                         "dash-eval fit-router wrote, whole") from None
    digest = record.get(TENSORS_DIGEST) if isinstance(record, dict) else None
    if digest is not None and digest != file_sha256(tensors):
        raise ValueError(f"router={str(path)!r}: {ROUTER_JSON} describes other tensors than {ROUTER_FILENAME} "
                         "(a fit-router write cut short, or files mixed from two fits); fit again")


def load_router_file(path: str | os.PathLike) -> dict[int, torch.Tensor]:
    """Routers from a router directory, a ``.safetensors`` file, or a checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        files = [p / ROUTER_FILENAME] if (p / ROUTER_FILENAME).is_file() else sorted(p.glob("*.safetensors"))
        if (p / ROUTER_FILENAME).is_file():
            _check_record(p, p / ROUTER_FILENAME)
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
        where = [f.name for f in files] if files else f"{str(path)!r}: it holds no .safetensors file"
        raise ValueError(f"router={str(path)!r}: no 'layers.<i>.indexer_q' tensors found in {where}; accepted: a "
                         f"directory holding {ROUTER_FILENAME} (dash-eval fit-router writes one), a .safetensors file, "
                         "or a checkpoint directory")
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


def check_routers(routers: dict[int, torch.Tensor], n_layers: int, config, source: str = "router") -> None:
    """Every router layer exists in a model of ``n_layers`` layers and holds ``Hkv * D`` values (``config``);
    ``source`` (``router='DIR'``) opens every message."""
    if not isinstance(routers, dict) or not all(isinstance(layer, int) for layer in routers):
        raise ValueError(f"router must map layer indices to tensors ({{layer: indexer_q}}); got "
                         f"{type(routers).__name__}")
    unknown = sorted(set(routers) - set(range(n_layers)))
    if unknown:
        raise ValueError(f"{source} has layers {unknown} that the model lacks (model layers: 0..{n_layers - 1})")
    hkv, d = router_geometry(config)
    for layer, tensor in routers.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) not in ((hkv * d,), (hkv, d)):
            got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"{source} layer {layer}: indexer_q has {got}; the model needs [Hkv * D] = [{hkv * d}] or "
                f"[Hkv, D] = [{hkv}, {d}]"
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{source} layer {layer}: indexer_q must hold finite float values; got {tensor.dtype}"
                             f"{'' if not tensor.is_floating_point() else ' with NaN or inf'}")


def check_router_file(path: str | os.PathLike, n_layers: int, config) -> dict[int, torch.Tensor]:
    """``load_router_file`` and ``check_routers``, each message naming the file; and where a fit-router
    ``router.json`` records the model it was fitted on, its heads and head size must be this model's (the
    vectors' total size alone can match another model: 1 x 192 against 3 x 64)."""
    source = f"router={str(path)!r}"
    routers = load_router_file(path)
    check_routers(routers, n_layers, config, source)
    fitted = _fit_record(path).get("model")
    if isinstance(fitted, dict):
        hkv, d = router_geometry(config)
        was = (fitted.get("num_key_value_heads"), fitted.get("head_dim"))
        if None not in was and was != (hkv, d):
            raise ValueError(f"{source} was fitted on a model with {was[0]} KV heads of size {was[1]} "
                             f"({fitted.get('name', '?')}); this model has {hkv} of size {d}; accepted: a router "
                             "fitted on this model (dash-eval fit-router --model ...)")
    return routers


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


def _fit_record(path: str | os.PathLike) -> dict:
    """The ``router.json`` of a ``dash-eval fit-router`` directory (or beside its ``router.safetensors``); ``{}``
    for other routers (a checkpoint's) or an unreadable record."""
    p = Path(path)
    try:
        record = json.loads(((p if p.is_dir() else p.parent) / ROUTER_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _fit_block_size(path: str | os.PathLike) -> int | None:
    """The block size a ``dash-eval fit-router`` directory was fitted at (``router.json``), or None."""
    settings = _fit_record(path).get("settings")
    size = settings.get("block_size") if isinstance(settings, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


_WARNED: set = set()


def _warn_once(text: str) -> bool:
    if text in _WARNED:
        return False
    _WARNED.add(text)
    logger.warning(text)
    return True


def block_size_mismatch(source: str | os.PathLike, block_size: int) -> str | None:
    """What to warn where a ``dash-eval fit-router`` directory fitted at another block size routes blocks of
    ``block_size``; None where the sizes agree or the directory does not say."""
    fitted = _fit_block_size(source)
    if fitted is None or fitted == block_size:
        return None
    return (f"router={str(source)!r} was fitted at block_size={fitted} and now routes blocks of "
            f"{block_size}: its vectors pool keys over blocks of a size they were not fitted for "
            f"(fit it again with --block-size {block_size}, or evaluate at block_size={fitted})")


def warn_block_size_mismatch(source: str | os.PathLike, block_size: int) -> bool:
    """``block_size_mismatch`` said once (a sweep's check says it before any cell runs, not again per cell)."""
    text = block_size_mismatch(source, block_size)
    return text is not None and _warn_once(text)


def warn_router_mismatch(source, routers: dict[int, torch.Tensor], n_layers: int, block_size: int) -> list[str]:
    """Warn (once per source and setting) where routers about to drive ``dash`` differ from how they were
    made: fitted at another block size (a fit-router directory records it), or covering only some layers (the
    others pool block keys by their mean). Returns the warnings given this time."""
    said = []
    if isinstance(source, (str, os.PathLike)) and (text := block_size_mismatch(source, block_size)) is not None:
        said.append(text)
    missing = sorted(set(range(n_layers)) - set(routers))
    if missing:
        said.append(f"router{'=' + repr(str(source)) if isinstance(source, (str, os.PathLike)) else ''} covers "
                    f"{n_layers - len(missing)} of {n_layers} layers; layers {missing} pool block keys by their mean")
    return [text for text in said if _warn_once(text)]
