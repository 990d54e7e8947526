"""The one quantization pipeline: it walks the decoder blocks and applies the per-layer step
(`quantize_layer`: context -> `method.quantize_linear` -> replace -> log entry) to each linear.

Data-free methods are its trivial case (`calibration=None`): each block's linears are quantized
in execution order with `stats=None`; nothing is captured, tuned, measured or checkpointed.
Calibrated methods get the sequential block-wise pass, shared by every calibrated method:

For block i = 0, 1, ...: run the calibration activations (outputs of the already-quantized
blocks 0..i-1) through the still-unquantized block while accumulating, for every linear,
H = mean over tokens of x xᵀ (float64); the block's outputs of that pass are the
full-precision targets. Then `method.quantize_linear` replaces each linear, the optional
`method.finetune_block` tunes the block against the targets, and the quantized block's
outputs become the next block's inputs. Only one block's activations live at a time.

Every block is called with the keyword arguments the model itself passes to *that* block
(attention mask, rotary tables, ...): families such as Gemma 3 give sliding-window and global
layers different masks and rotary bases, so the arguments are captured per block
(`capture_block_inputs`) and `BlockData.for_block(i)` selects block i's.

Once a block is finished, every linear's log entry gets `output_error` = tr(ΔW H ΔWᵀ) /
tr(W H Wᵀ) of the final layer (after fine-tuning: the layer that is saved), with W the
original weight and H that block's accumulated H (one H per input shared by several linears).

After each block the block's state (packed layers and any tuned parameters) is written to
`checkpoint_dir`; a killed run reloads the finished blocks, replays the calibration data
through them (one forward pass each, no re-quantization) and continues at the next block.

The calibration activations (`BlockData`, `capture_block_inputs`, `HessianAccumulator`) live
in `harness.calibration`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from harness.analysis.layers import relative_output_error
from harness.calibration import BlockData, accumulate, capture_block_inputs, propagate
from harness.data import token_hash
from harness.models.adapters import FamilyAdapter
from harness.quantizer import (
    LayerStats,
    QuantContext,
    QuantizedLinear,
    Quantizer,
    import_layer_class,
    layer_class_path,
)
from harness.store import atomic_write_json

logger = logging.getLogger(__name__)

def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, layer name): a layer gets the same random draws
    whatever ran before it, so a resumed run equals an uninterrupted one."""
    digest = hashlib.sha256(f"{seed}:{layer_name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def layer_log(name: str, qlayer: QuantizedLinear, seconds: float, extra: list[dict[str, Any]]) -> dict[str, Any]:
    """A layer's log entry (stored in the record's `layers`): shape, measured bits, seconds and
    whatever the method appended to `ctx.log`."""
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


def quantize_layer(
    quantizer: Quantizer, parent: nn.Module, name: str, stats: LayerStats | None, *,
    full_name: str, block_index: int, seed: int, progress: bool,
) -> dict[str, Any]:
    """The per-layer step: replace the linear `name` of `parent` (a block) by the method's packed
    layer, on the linear's device; returns the layer's log entry (named `full_name`)."""
    linear = parent.get_submodule(name)
    device = linear.weight.device
    ctx = QuantContext(
        layer_name=full_name, block_index=block_index, generator=layer_generator(seed, full_name),
        device=device, progress=progress,
    )
    start = time.perf_counter()
    qlayer = quantizer.quantize_linear(linear, stats, ctx)
    parent.set_submodule(name, qlayer.to(device))
    return layer_log(full_name, qlayer, time.perf_counter() - start, ctx.log)


def run_pipeline(
    model: nn.Module,
    quantizer: Quantizer,
    adapter: FamilyAdapter,
    calibration: torch.Tensor | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    batch_size: int = 8,
    compute_dtype: torch.dtype = torch.float32,
) -> list[dict[str, Any]]:
    """Quantize every block of `model` in place; returns one log entry per quantized linear
    (and per fine-tuned block).

    calibration: [n, seqlen] int64 token ids; None for a data-free method (the trivial case:
        `stats=None`, no capture, fine-tuning, output errors or checkpoints).
    compute_dtype: dtype of the calibration forward passes (autocast when it differs from the
        model's); activations are stored and H is accumulated in float32/float64 regardless.
    """
    blocks = adapter.blocks(model)
    calibrated = calibration is not None
    checkpoints = BlockCheckpoints(checkpoint_dir, token_hash(calibration)) if calibrated and checkpoint_dir else None
    done = checkpoints.finished_blocks() if checkpoints else 0
    logs: list[dict[str, Any]] = []
    if done:
        logger.info("resuming: blocks 0..%d are already quantized (%s)", done - 1, checkpoint_dir)
        for index in range(done):
            logs.extend(checkpoints.load(index, blocks[index]))

    data = None
    if calibrated:
        data = capture_block_inputs(model, adapter, calibration, batch_size=batch_size, storage=torch.device("cpu"))
        data.compute_dtype = compute_dtype
        with torch.inference_mode():
            for index in tqdm(range(done), desc="replay finished blocks", disable=not progress or done == 0, leave=False):
                propagate(blocks[index], data.for_block(index))

    bar = tqdm(range(done, len(blocks)), desc=f"quantize ({quantizer.name})", unit="block", disable=not progress)
    for index in bar:
        start = time.perf_counter()
        block_logs = _quantize_block(quantizer, adapter, blocks[index], index, data, seed=seed, progress=progress)
        if checkpoints:
            checkpoints.save(index, blocks[index], block_logs)
        logs.extend(block_logs)
        if calibrated:
            seconds = time.perf_counter() - start
            bar.set_postfix(block=index, seconds=f"{seconds:.1f}")
            logger.info("block %d/%d quantized in %.1f s", index + 1, len(blocks), seconds)
    return logs


def _quantize_block(
    quantizer: Quantizer, adapter: FamilyAdapter, block: nn.Module, index: int, data: BlockData | None, *,
    seed: int, progress: bool,
) -> list[dict[str, Any]]:
    """One block: H of its linears (calibrated), the per-layer step for each linear, the optional
    block fine-tuning, the final layers' output errors, and the block's outputs as the next
    block's inputs (in `data`, in place). Returns the block's log entries."""
    names = [name for group in adapter.linear_groups(block) for name in group]
    linears = {name: block.get_submodule(name) for name in names}
    prefix = f"{adapter.blocks_path}.{index}"
    wants_targets = data is not None and quantizer.finetunes_blocks()
    hessians, targets = None, None
    if data is not None:
        data = data.for_block(index)
        hessians, targets = accumulate(block, data, linears, keep_outputs=wants_targets)
    linear_logs = {
        name: quantize_layer(
            quantizer, block, name, hessians.stats(name) if hessians is not None else None,
            full_name=f"{prefix}.{name}", block_index=index, seed=seed, progress=progress,
        )
        for name in names
    }
    block_logs = list(linear_logs.values())
    if data is None:  # data-free: nothing to tune, measure or propagate
        return block_logs
    if wants_targets:
        hessians.to(torch.device("cpu"))  # off the accelerator while the block is tuned
        ctx = QuantContext(
            layer_name=prefix, block_index=index, generator=layer_generator(seed, prefix),
            device=data.device, progress=progress,
        )
        quantizer.finetune_block(block, data, targets, ctx)
        for entry in ctx.log:
            entry.setdefault("name", prefix)
        block_logs.extend(ctx.log)
    del targets
    with torch.no_grad():  # the final layers against the original weights
        for name, entry in linear_logs.items():
            entry["output_error"] = relative_output_error(
                linears[name].weight, block.get_submodule(name).dequantize(), hessians.H(name)
            )
    del hessians, linears  # the block's H's and original weights
    with torch.inference_mode():
        propagate(block, data)
    return block_logs


class BlockCheckpoints:
    """Per-block checkpoints: `block_XXXX.safetensors` (the block's state) + `block_XXXX.json`
    (packed-layer classes and configs, layer logs, calibration hash)."""

    def __init__(self, root: Path, calibration_hash: str):
        self.root = Path(root)
        self.calibration_hash = calibration_hash

    def _paths(self, index: int) -> tuple[Path, Path]:
        return self.root / f"block_{index:04d}.safetensors", self.root / f"block_{index:04d}.json"

    def finished_blocks(self) -> int:
        """How many leading blocks have a complete checkpoint for this calibration set."""
        index = 0
        while True:
            tensors, meta = self._paths(index)
            if not (tensors.is_file() and meta.is_file()):
                return index
            try:
                manifest = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError):
                return index
            if manifest.get("calibration_hash") != self.calibration_hash:
                logger.warning("checkpoint %s was made with other calibration data; starting over", meta)
                return index
            index += 1

    def save(self, index: int, block: nn.Module, logs: list[dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tensors_path, meta_path = self._paths(index)
        state = {k: v.detach().contiguous().cpu() for k, v in block.state_dict().items()}
        tmp = tensors_path.with_suffix(".tmp")
        save_file(state, str(tmp))
        tmp.replace(tensors_path)
        layers = {
            name: {"class": layer_class_path(m), "config": m.layer_config()}
            for name, m in block.named_modules()
            if isinstance(m, QuantizedLinear)
        }
        # the JSON is written last: its presence marks the block as finished
        atomic_write_json(meta_path, {"calibration_hash": self.calibration_hash, "layers": layers, "logs": logs})

    def load(self, index: int, block: nn.Module) -> list[dict[str, Any]]:
        tensors_path, meta_path = self._paths(index)
        manifest = json.loads(meta_path.read_text())
        device = next(block.parameters()).device
        for name, entry in manifest["layers"].items():
            block.set_submodule(name, import_layer_class(entry["class"]).from_layer_config(entry["config"]))
        block.load_state_dict(load_file(str(tensors_path)), strict=True)
        block.to(device)
        return manifest["logs"]
