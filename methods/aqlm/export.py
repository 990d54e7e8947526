"""Export a model with `AQLMLinear` layers as a checkpoint of the `aqlm` inference package,
loadable by transformers' AQLM integration (`AutoModelForCausalLM.from_pretrained(path)` with
`pip install aqlm[cpu]` or `aqlm[gpu]`).

Layout: `config.json` (the model config plus `quantization_config`, see
`aqlm_quantization_config`) and `model.safetensors` with, per AQLM layer, `<name>.codes`
[out, in/g, M] int8/int16, `<name>.codebooks` [M, K, 1, g], `<name>.scales` [out, 1, 1, 1]
(and `<name>.bias`), and every other tensor of the model. Transformers replaces every
`nn.Linear` not listed in `linear_weights_not_to_quantize`, so every quantized linear must
share (g, M, b) and every dense linear (e.g. `lm_head`) is listed there.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from methods.aqlm.layer import AQLMLinear, aqlm_quantization_config

__all__ = ["export_aqlm_checkpoint", "save_weights"]

WEIGHTS_FILE = "model.safetensors"


def save_weights(
    model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path, *, quantized: Iterable[str],
    dtype: torch.dtype,
) -> Path:
    """Write `tensors` (the quantized layers' own) plus every other tensor of `model`'s state dict
    outside the `quantized` module names (floating ones in `dtype`; tied tensors once) to
    `path/model.safetensors`; returns the directory."""
    skip = set(quantized)
    tensors = dict(tensors)
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key, value in model.state_dict().items():
        if key.rpartition(".")[0] in skip:
            continue
        ident = (value.untyped_storage().data_ptr() + value.storage_offset() * value.element_size(), tuple(value.shape))
        if ident in seen:  # a tied weight
            continue
        seen.add(ident)
        tensors[key] = value.to(dtype) if value.is_floating_point() else value
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_FILE),
              metadata={"format": "pt"})
    return out


def export_aqlm_checkpoint(
    model: nn.Module, path: str | Path, *, dtype: torch.dtype = torch.float16, tokenizer: Any = None
) -> dict[str, Any]:
    """Write `model` (a transformers causal LM whose quantized linears are `AQLMLinear`) to the
    directory `path`; returns the quantization config.

    dtype: storage dtype of codebooks, scales and the dense floating tensors (float16 as aqlm
    checkpoints use; the aqlm CPU kernels then need `torch_dtype=torch.float32` at load time).
    Tied tensors are written once (the model config's `tie_word_embeddings` re-ties them).
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, AQLMLinear)}
    if not layers:
        raise ValueError("export_aqlm_checkpoint: the model has no AQLMLinear layers")
    dense = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    qconfig = aqlm_quantization_config(layers, not_quantized=dense)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        for key, value in layer.to_aqlm_state_dict().items():
            tensors[f"{name}.{key}"] = value.to(dtype) if value.is_floating_point() else value
    out = save_weights(model, tensors, path, quantized=layers.keys(), dtype=dtype)
    config = model.config.to_dict()
    config["quantization_config"] = qconfig
    config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return qconfig
