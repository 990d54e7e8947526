"""`quantize(model, quantizer, ...)`: the one call that applies a method to a model.

Calibration-free methods are applied layer by layer to every linear of every decoder block;
calibrated methods go through the sequential block-wise pipeline (`harness.pipeline`).
The returned list holds one log entry per quantized layer (stored in the cell record).
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.models.adapters import FamilyAdapter, get_adapter, iter_block_linears
from harness.quantizer import QuantContext, QuantizedLinear, Quantizer

logger = logging.getLogger(__name__)


def quantize(
    model: nn.Module,
    quantizer: Quantizer,
    *,
    adapter: FamilyAdapter | None = None,
    calibration: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    calibration_dtype: torch.dtype = torch.float32,
) -> list[dict[str, Any]]:
    """Replace the linear layers of `model`'s decoder blocks by the method's packed layers.

    calibration: [n, seqlen] int64 token ids, required when `quantizer.requires_calibration`.
    seed: seeds the `torch.Generator` handed to the method (global RNGs are never touched).
    checkpoint_dir: where calibrated runs keep per-block checkpoints to resume after a kill.
    calibration_dtype: dtype of the calibration forward passes (e.g. bfloat16 autocast on CPU).
    """
    if not quantizer.modifies_weights:
        return []
    adapter = adapter or get_adapter(model)
    if quantizer.requires_calibration:
        if calibration is None:
            raise ValueError(f"method '{quantizer.name}' needs calibration data but none was given")
        from harness.pipeline import run_pipeline  # calibrated methods only

        return run_pipeline(
            model, quantizer, adapter, calibration,
            seed=seed, progress=progress, checkpoint_dir=checkpoint_dir, compute_dtype=calibration_dtype,
        )
    return _quantize_data_free(model, quantizer, adapter, seed=seed, progress=progress)


def _quantize_data_free(
    model: nn.Module, quantizer: Quantizer, adapter: FamilyAdapter, *, seed: int, progress: bool
) -> list[dict[str, Any]]:
    linears = list(iter_block_linears(model, adapter))
    logs: list[dict[str, Any]] = []
    for name, block_index, linear in tqdm(
        linears, desc=f"quantize ({quantizer.name})", unit="layer", disable=not progress, leave=False
    ):
        ctx = QuantContext(
            layer_name=name, block_index=block_index, generator=layer_generator(seed, name),
            device=linear.weight.device, progress=progress,
        )
        start = time.perf_counter()
        qlayer = quantizer.quantize_linear(linear, None, ctx)
        replace_linear(model, name, qlayer, like=linear)
        logs.append(layer_log(name, qlayer, time.perf_counter() - start, ctx.log))
    return logs


def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, layer name): a layer gets the same random draws
    whatever ran before it, so a resumed run equals an uninterrupted one."""
    digest = hashlib.sha256(f"{seed}:{layer_name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def replace_linear(model: nn.Module, name: str, qlayer: QuantizedLinear, *, like: nn.Linear) -> None:
    """Put `qlayer` where the linear `name` was, on the linear's device."""
    model.set_submodule(name, qlayer.to(like.weight.device))


def layer_log(name: str, qlayer: QuantizedLinear, seconds: float, extra: list[dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "out": qlayer.out_features,
        "in": qlayer.in_features,
        "bits": qlayer.measured_bits(),
        "seconds": round(seconds, 4),
    }
    for item in extra:
        entry.update(item)
    return entry
