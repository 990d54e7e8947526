"""The public surface for methods: everything a method (built-in under `methods/` or in a
third-party package) may import from `harness`. Import from here, never from other harness
modules; `tests/test_import_graph.py` enforces it for `methods/`.

The contract (see `harness.quantizer` for the full docstrings):
  Quantizer, MethodConfig: the method class (typed `Config`, `presets(budget)`,
    `quantize_linear`, optional `finetune_block`, `bits_for_shape`) and its config base;
  QuantizedLinear, StoredTensor: the packed layer a method returns and the tensors it stores
    (with their bit widths); a layer's `bits_per_weight(shape, config)` is the format's closed form;
  LayerStats, QuantContext: what `quantize_linear` is given (input statistics, seeded generator,
    layer log).
  BlockData: what `finetune_block` is given as `inputs` (`hidden`, `batches()`, `run(...)`).
Helpers:
  relative_output_error(W, W_hat, H): tr((Ŵ-W) H (Ŵ-W)ᵀ) / tr(W H Wᵀ), the layer error every
    calibrated method minimises (the engine logs it as `output_error`);
  tunable_parameters(block), restore_state(...): the tensors block fine-tuning may train, and the
    state a tuning run ends in (shared with end-to-end fine-tuning);
  register_method(name): register a class in-process (packages use the entry-point group
    `harness.methods` instead).
A plugin author checks a method against the contract with `harness.testing.check_quantizer`.
"""
from __future__ import annotations

from harness.analysis.layers import relative_output_error
from harness.calibration import BlockData
from harness.quantizer import LayerStats, MethodConfig, QuantContext, QuantizedLinear, Quantizer, StoredTensor
from harness.registry import register_method
from harness.tuning import restore_state, tunable_parameters

__all__ = [
    "BlockData", "LayerStats", "MethodConfig", "QuantContext", "QuantizedLinear", "Quantizer", "StoredTensor",
    "register_method", "relative_output_error", "restore_state", "tunable_parameters",
]
