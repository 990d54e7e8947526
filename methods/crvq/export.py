"""Export a CRVQ-quantized model in the spec's inference form: per layer a gather index and two
layers in the `aqlm` inference package's layout, y = base(x[..., perm]) + extended(x[..., perm][..., :n_crit·g]).

Layout: `config.json` (the model config plus `quantization_config`, below) and
`model.safetensors` with, per CRVQ layer `<name>`:
  <name>.perm                       int32 [in]          original column of each permuted column
  <name>.base.codes / .codebooks / .scales (/ .bias)    1-codebook aqlm layer over all `in` columns
  <name>.extended.codes / .codebooks / .scales          E-codebook aqlm layer over n_crit·g columns
(aqlm layout: codes [out, G, M] int8/int16, codebooks [M, K, 1, g], scales [out, 1, 1, 1]; the
extended layer repeats the row scales), per plain-VQ fallback layer (`AQLMLinear`) its aqlm
tensors under `<name>.base.`, and every other tensor of the model. No inference library reads
this format as a whole; each base/extended layer is an `aqlm.QuantizedLinear` state dict.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.aqlm.export import save_weights
from methods.aqlm.layer import AQLMLinear
from methods.crvq.layer import CRVQLinear

__all__ = ["export_crvq_checkpoint"]


def export_crvq_checkpoint(model: nn.Module, path: str | Path, *, dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Write `model` (a causal LM whose quantized linears are `CRVQLinear` or fallback
    `AQLMLinear`) to the directory `path` in the layout of the module docstring; returns the
    quantization config ({"quant_method": "crvq", "layers": {name: {in/out features, g, nbits,
    extended_nbits, n_crit}}}). dtype: storage dtype of codebooks, scales and dense tensors."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, AQLMLinear)}
    if not any(isinstance(m, CRVQLinear) for m in layers.values()):
        raise ValueError("export_crvq_checkpoint: the model has no CRVQLinear layers")
    tensors: dict[str, torch.Tensor] = {}
    qlayers: dict[str, Any] = {}
    for name, layer in layers.items():
        if isinstance(layer, CRVQLinear):
            parts = layer.to_aqlm_state_dicts()
            qlayers[name] = {k: v for k, v in layer.layer_config().items() if k != "bias_dtype"}
        else:
            parts = {"base": layer.to_aqlm_state_dict()}
            qlayers[name] = {"in_features": layer.in_features, "out_features": layer.out_features,
                             "in_group_size": layer.in_group_size, "nbits": layer.nbits[0], "extended_nbits": [],
                             "n_crit": 0}
        for part, values in parts.items():
            for key, value in values.items():
                full = f"{name}.perm" if part == "perm" else f"{name}.{part}.{key}"
                tensors[full] = value.to(dtype) if value.is_floating_point() else value
    out = save_weights(model, tensors, path, quantized=layers.keys(), dtype=dtype)
    qconfig = {"quant_method": "crvq", "out_group_size": 1, "layers": qlayers}
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config["quantization_config"] = qconfig
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    return qconfig
