"""Calibration activations of the block-wise pipeline (`harness.pipeline`).

`capture_block_inputs` runs the model once over the calibration batches and keeps the first
block's inputs plus, per block, the keyword arguments the model passes to it (`BlockData`).
`accumulate` runs one block over them, collecting H = mean over tokens of x xᵀ (float64) for
every linear (`HessianAccumulator`) and optionally the block's outputs; `propagate` replaces
the activations by a block's outputs, so they become the next block's inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from harness.models.adapters import FamilyAdapter
from harness.quantizer import LayerStats


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


@torch.inference_mode()
def accumulate(
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


def propagate(block: nn.Module, data: BlockData) -> None:
    """Replace `data.hidden` by the block's outputs, batch by batch, in place."""
    for start, hidden, kwargs in data.batches():
        data.hidden[start : start + hidden.shape[0]] = data.run(block, hidden, kwargs).to(data.hidden.device)
