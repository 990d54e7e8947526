"""Save and reload a quantized model: packed layers keep their own tensors and dtypes.

Layout of a saved model directory:
  config.json, tokenizer files      the HF model config and tokenizer
  model.safetensors                 every stored tensor, tied weights once; non-quantized floats in
                                    `storage_dtype` (float16, the deployment format the size is
                                    measured in), or with `exact=True` in `storage_dtype` only
                                    where that round-trips exactly and in their own dtype otherwise
                                    (the reloaded model is then exactly the evaluated one)
  quantization.json                 for each packed layer: its class and `layer_config()`
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.metrics.bits import dir_size_bytes
from harness.quantizer import QuantizedLinear, import_layer_class, layer_class_path

MANIFEST = "quantization.json"
WEIGHTS = "model.safetensors"


def _packed_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def _storable(tensor: torch.Tensor, storage_dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `storage_dtype` if that loses nothing, else unchanged: the saved model is
    exactly the evaluated one, and as small as the deployment format wherever that is exact."""
    if tensor.dtype == storage_dtype:
        return tensor
    narrowed = tensor.to(storage_dtype)
    return narrowed if torch.equal(narrowed.to(tensor.dtype), tensor) else tensor


def _unique_state(
    model: nn.Module, storage_dtype: torch.dtype, exact: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with shared tensors stored once; returns (tensors, alias -> stored name)."""
    packed_prefixes = tuple(f"{n}." for n in _packed_layers(model))
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size(), tuple(tensor.shape))
        if ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        if tensor.is_floating_point() and not name.startswith(packed_prefixes):
            tensor = _storable(tensor, storage_dtype) if exact else tensor.to(storage_dtype)
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors, aliases


def save_quantized(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    storage_dtype: torch.dtype = torch.float16,
    exact: bool = False,
) -> int:
    """Write `model` to directory `path` atomically; returns its size on disk in bytes.

    By default non-quantized floats are rounded to `storage_dtype` (the deployment format);
    `exact=True` keeps any tensor that rounding would change in its own dtype.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors, aliases = _unique_state(model, storage_dtype, exact)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        manifest = {
            "storage_dtype": str(storage_dtype).removeprefix("torch."),
            "exact": exact,
            "aliases": aliases,
            "layers": {
                name: {"class": layer_class_path(layer), "config": layer.layer_config()}
                for name, layer in _packed_layers(model).items()
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if hasattr(model, "config"):
            model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dir_size_bytes(path)


def load_quantized(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by `save_quantized` (packed layers restored exactly)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    restore_quantized(model, path, dtype=dtype)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(device).eval()


def restore_quantized(model: nn.Module, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Fill `model` (the saved model's architecture, e.g. built with empty weights) with what
    `save_quantized` wrote to `path`: packed layers rebuilt from the manifest, then every tensor
    loaded (non-quantized floats in `dtype`). Returns `model`."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    for name, entry in manifest["layers"].items():
        layer = import_layer_class(entry["class"]).from_layer_config(entry["config"])
        model.set_submodule(name, layer)
    tensors = load_file(str(path / WEIGHTS))
    packed_prefixes = tuple(f"{n}." for n in manifest["layers"])
    state = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not name.startswith(packed_prefixes):
            tensor = tensor.to(dtype)
        state[name] = tensor
    for alias, target in manifest["aliases"].items():
        state[alias] = state[target]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or missing:
        raise ValueError(f"{path}: saved model does not match its config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model
