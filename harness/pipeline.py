"""The sequential block-wise calibration pipeline shared by every calibrated method.

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
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from harness.analysis.layers import relative_output_error
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
from harness.quantize import layer_generator, layer_log
from harness.store import atomic_write_json

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


@dataclass
class BlockData:
    """Calibration activations at the input of one block.

    hidden: [n, seqlen, hidden_size] on `storage` (CPU when the model is on CUDA).
    kwargs: per batch, the keyword arguments the model passes to this block (position
        embeddings, attention mask, ...), already on the compute device.
    batch_size: sequences per batch.
    block_kwargs: per block index, per batch, the keyword arguments the model passes to that
        block (tensors shared between blocks are shared here too); `for_block(i)` selects them.
    """

    hidden: torch.Tensor
    kwargs: list[dict[str, Any]]
    batch_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compute_dtype: torch.dtype = torch.float32
    block_kwargs: list[list[dict[str, Any]]] | None = None

    def for_block(self, index: int) -> BlockData:
        """The same activations (shared, not copied) with block `index`'s call arguments."""
        if self.block_kwargs is None:
            raise RuntimeError("BlockData.for_block: the per-block call arguments were not captured")
        return replace(self, kwargs=self.block_kwargs[index])

    def batches(self):
        """(start index, hidden batch on the compute device, block kwargs) per batch."""
        for b, start in enumerate(range(0, self.hidden.shape[0], self.batch_size)):
            yield start, self.hidden[start : start + self.batch_size].to(self.device), self.kwargs[b]

    def run(self, block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """`block`'s outputs for one batch, autocast to `compute_dtype` unless it is float32."""
        enabled = self.compute_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=enabled):
            return run_block(block, hidden, kwargs)


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """One decoder block's output hidden states (blocks return a tensor or a tuple)."""
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.inference_mode()
def capture_block_inputs(
    model: nn.Module, adapter: FamilyAdapter, calibration: torch.Tensor, *, batch_size: int, storage: torch.device
) -> BlockData:
    """Run the model over the calibration batches; keep the first block's inputs and, for every
    block, the keyword arguments the model passes to it.

    The blocks do not compute during the capture: each block's `forward` is swapped for a
    recorder that returns its input unchanged (in the output format of the real first block,
    a tensor or a tuple), and the last block stops the forward pass, so the cost is the
    embeddings, the masks and the rotary tables plus one real call of the first block.
    """
    blocks = adapter.blocks(model)
    device = next(model.parameters()).device
    hidden_parts: list[torch.Tensor] = []
    per_block: list[list[dict[str, Any]]] = [[] for _ in blocks]
    returns_tuple: list[bool] = []

    def recorder(index: int, real_forward):
        def forward(*args: Any, **kwargs: Any):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if len(args) > 1:
                raise RuntimeError(
                    f"calibration pipeline: block {index} of {type(model).__name__} is called with "
                    f"{len(args)} positional arguments; only the hidden states may be positional"
                )
            per_block[index].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            if index == 0:
                hidden_parts.append(hidden.detach().to(storage))
                if not returns_tuple:  # the real output format, learnt once
                    returns_tuple.append(isinstance(real_forward(hidden, **kwargs), (tuple, list)))
            if index == len(blocks) - 1:
                raise _StopForward
            return (hidden,) if returns_tuple[0] else hidden
        return forward

    own_forwards = [block.__dict__.get("forward") for block in blocks]  # e.g. set by accelerate hooks
    for index, block in enumerate(blocks):
        block.forward = recorder(index, block.forward)
    try:
        for start in range(0, calibration.shape[0], batch_size):
            try:
                model(input_ids=calibration[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for block, own in zip(blocks, own_forwards):
            if own is None:
                del block.forward  # back to the class's forward
            else:
                block.forward = own
    n_batches = len(hidden_parts)
    short = [i for i, calls in enumerate(per_block) if len(calls) != n_batches]
    if short:
        raise RuntimeError(
            f"calibration pipeline: {type(model).__name__} did not call block(s) {short} exactly once per "
            f"batch; the adapter's `blocks_path` ({adapter.blocks_path}) must list the blocks in call order"
        )
    return BlockData(torch.cat(hidden_parts), per_block[0], batch_size, device, block_kwargs=per_block)


class HessianAccumulator:
    """Accumulates sum x xᵀ (float64) and token counts for named linears through forward hooks.

    Linears fed the same input tensor (e.g. q/k/v) share one sum: the first linear to see an
    input owns it, the others point to it (`owner`). After `finish()`, `H(name)` is the mean.
    """

    def __init__(self, linears: dict[str, nn.Linear]):
        self.sums: dict[str, torch.Tensor] = {}
        self.owner: dict[str, str] = {}
        self.counts: dict[str, int] = dict.fromkeys(linears, 0)
        self._shared: dict[tuple[int, tuple[int, ...]], tuple[torch.Tensor, str]] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            ident = (x.data_ptr(), tuple(x.shape))
            cached = self._shared.get(ident)
            if cached is not None and cached[0] is x:
                owner = cached[1]
            else:
                owner = name
                flat = x.reshape(-1, x.shape[-1]).float()
                xtx = (flat.T @ flat).double()
                if name in self.sums:
                    self.sums[name] += xtx
                else:
                    self.sums[name] = xtx
                # keep x alive until the batch ends, so its memory cannot be reused by another
                # tensor of the same shape (which would alias the cache key)
                self._shared[ident] = (x, name)
            if self.owner.setdefault(name, owner) != owner:
                raise RuntimeError(
                    f"calibration pipeline: linear '{name}' saw the input of '{owner}' in one batch and "
                    f"of '{self.owner[name]}' in another; the block's forward is not deterministic"
                )
            self.counts[name] += x.numel() // x.shape[-1]
        return hook

    def next_batch(self) -> None:
        self._shared.clear()

    def finish(self) -> None:
        """Turn the sums into means (in place): one H per distinct input."""
        for owner, total in self.sums.items():
            total /= self.counts[owner]

    def to(self, device: torch.device) -> None:
        """Move the (finished) H's to `device`."""
        self.sums = {owner: total.to(device) for owner, total in self.sums.items()}

    def H(self, name: str) -> torch.Tensor:
        """The mean x xᵀ [in, in] float64 of `name`'s input (shared; do not modify)."""
        return self.sums[self.owner[name]]

    def stats(self, name: str) -> LayerStats:
        """`name`'s statistics for a method, with its own copy of H (methods may modify it)."""
        return LayerStats(H=self.H(name).clone(), num_samples=self.counts[name])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._shared.clear()


def run_pipeline(
    model: nn.Module,
    quantizer: Quantizer,
    adapter: FamilyAdapter,
    calibration: torch.Tensor,
    *,
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    batch_size: int = 8,
    compute_dtype: torch.dtype = torch.float32,
) -> list[dict[str, Any]]:
    """Quantize every block of `model` in place; returns one log entry per quantized linear.

    calibration: [n, seqlen] int64 token ids.
    compute_dtype: dtype of the calibration forward passes (autocast when it differs from the
        model's); activations are stored and H is accumulated in float32/float64 regardless.
    """
    blocks = adapter.blocks(model)
    device = next(model.parameters()).device
    storage = torch.device("cpu")
    checkpoints = BlockCheckpoints(checkpoint_dir, token_hash(calibration)) if checkpoint_dir else None
    done = checkpoints.finished_blocks() if checkpoints else 0
    logs: list[dict[str, Any]] = []
    if done:
        logger.info("resuming: blocks 0..%d are already quantized (%s)", done - 1, checkpoint_dir)
        for index in range(done):
            logs.extend(checkpoints.load(index, blocks[index]))

    data = capture_block_inputs(model, adapter, calibration, batch_size=batch_size, storage=storage)
    data.compute_dtype = compute_dtype
    with torch.inference_mode():
        for index in tqdm(range(done), desc="replay finished blocks", disable=not progress or done == 0, leave=False):
            _propagate(blocks[index], data.for_block(index))

    wants_targets = quantizer.finetunes_blocks()
    bar = tqdm(range(done, len(blocks)), desc=f"quantize ({quantizer.name})", unit="block", disable=not progress)
    for index in bar:
        block, block_data = blocks[index], data.for_block(index)
        names = [name for group in adapter.linear_groups(block) for name in group]
        linears = {name: block.get_submodule(name) for name in names}
        start = time.perf_counter()
        hessians, targets = _accumulate(block, block_data, linears, keep_outputs=wants_targets)
        block_logs, linear_logs = [], {}
        for name in names:
            full_name = f"{adapter.blocks_path}.{index}.{name}"
            ctx = QuantContext(
                layer_name=full_name, block_index=index, generator=layer_generator(seed, full_name),
                device=device, progress=progress,
            )
            t0 = time.perf_counter()
            qlayer = quantizer.quantize_linear(linears[name], hessians.stats(name), ctx)
            block.set_submodule(name, qlayer.to(device))
            linear_logs[name] = layer_log(full_name, qlayer, time.perf_counter() - t0, ctx.log)
            block_logs.append(linear_logs[name])
        if wants_targets:
            hessians.to(storage)  # off the accelerator while the block is tuned
            ctx = QuantContext(
                layer_name=f"{adapter.blocks_path}.{index}", block_index=index,
                generator=layer_generator(seed, f"{adapter.blocks_path}.{index}"), device=device, progress=progress,
            )
            quantizer.finetune_block(block, block_data, targets, ctx)
            for entry in ctx.log:
                entry.setdefault("name", f"{adapter.blocks_path}.{index}")
            block_logs.extend(ctx.log)
        del targets
        with torch.no_grad():  # the final layers against the original weights
            for name, entry in linear_logs.items():
                entry["output_error"] = relative_output_error(
                    linears[name].weight, block.get_submodule(name).dequantize(), hessians.H(name)
                )
        del hessians, linears  # the block's H's and original weights
        with torch.inference_mode():
            _propagate(block, block_data)
        if checkpoints:
            checkpoints.save(index, block, block_logs)
        logs.extend(block_logs)
        seconds = time.perf_counter() - start
        bar.set_postfix(block=index, seconds=f"{seconds:.1f}")
        logger.info("block %d/%d quantized in %.1f s", index + 1, len(blocks), seconds)
    return logs


@torch.inference_mode()
def _accumulate(
    block: nn.Module, data: BlockData, linears: dict[str, nn.Linear], *, keep_outputs: bool
) -> tuple[HessianAccumulator, torch.Tensor | None]:
    """One pass over the calibration data: H for every linear (finished accumulator, hooks
    removed), and the block outputs if asked."""
    acc = HessianAccumulator(linears)
    outputs = torch.empty_like(data.hidden) if keep_outputs else None
    try:
        for start, hidden, kwargs in data.batches():
            out = data.run(block, hidden, kwargs)
            if outputs is not None:
                outputs[start : start + hidden.shape[0]] = out.to(outputs.device)
            acc.next_batch()
    finally:
        acc.remove()
    acc.finish()
    return acc, outputs


def _propagate(block: nn.Module, data: BlockData) -> None:
    """Replace `data.hidden` by the block's outputs, batch by batch, in place."""
    for start, hidden, kwargs in data.batches():
        data.hidden[start : start + hidden.shape[0]] = data.run(block, hidden, kwargs).to(data.hidden.device)


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
