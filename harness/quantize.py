"""`quantize(model, quantizer, ...)`: the one call that applies a method to a model.

Every method goes through the one pipeline (`harness.pipeline.run_pipeline`): calibrated
methods with their calibration tokens, data-free methods as its trivial case (no calibration).
The returned list holds one log entry per quantized layer (stored in the cell record).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.models.adapters import FamilyAdapter, get_adapter
from harness.pipeline import run_pipeline
from harness.quantizer import Quantizer


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

    calibration: [n, seqlen] int64 token ids, required when `quantizer.requires_calibration`
        (ignored otherwise).
    seed: seeds the `torch.Generator` handed to the method (global RNGs are never touched).
    checkpoint_dir: where calibrated runs keep per-block checkpoints to resume after a kill.
    calibration_dtype: dtype of the calibration forward passes (e.g. bfloat16 autocast on CPU).
    """
    if not quantizer.modifies_weights:
        return []
    if quantizer.requires_calibration and calibration is None:
        raise ValueError(f"method '{quantizer.name}' needs calibration data but none was given")
    return run_pipeline(
        model, quantizer, adapter or get_adapter(model), calibration if quantizer.requires_calibration else None,
        seed=seed, progress=progress, checkpoint_dir=checkpoint_dir, compute_dtype=calibration_dtype,
    )
