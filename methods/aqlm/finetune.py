"""Block fine-tuning: after a block's linears are quantized, tune the continuous parameters of
its `AQLMLinear` layers (codebooks and scales; codes frozen) and its norm weights with Adam so
that the block's outputs on the calibration inputs match the full-precision block's (MSE).

The calibration sequences are used in the pipeline's batches (`BlockData.batches`): the last
`val_fraction` of the batches is held out (at least one when there are two or more), the rest
is shuffled every epoch (from the given generator). After every epoch the validation MSE
decides early stopping (`patience` epochs without improvement) and, with `keep_best`, which
parameters are kept: those of the best epoch, or the unchanged ones if no epoch improved on
the start. Afterwards codebooks and scales are float16 buffers again (rounded; the same
`state_dict` keys and dtypes as before) and norm weights have their original dtype.

The forward passes use `BlockData.run`: autocast to the calibration dtype (as the targets were
computed), or to `compute_dtype` when given (e.g. bfloat16; parameters, Adam state and the
loss stay float32). Everything else in the block is frozen; the block stays in eval mode (no dropout).
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.plugin import BlockData, restore_state, tunable_parameters

__all__ = ["finetune_block", "trainable_block"]


@contextmanager
def trainable_block(block: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Inside the context, every `AQLMLinear` in `block` has its codebooks and scales as float32
    `nn.Parameter`s and every norm module float32 weights that require grad; all other
    parameters are frozen (`harness.finetune_e2e.tunable_parameters`, the same mechanism as
    end-to-end fine-tuning). Yields those parameters; on exit everything is restored and the
    block is in eval mode."""
    try:
        with tunable_parameters(block) as params:
            yield params
    finally:
        block.eval()


def _cloned(value: Any) -> Any:
    """`value` with every tensor cloned: tensors made under `torch.inference_mode` (the
    pipeline's activations and block kwargs) cannot be saved for backward, their clones can."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        items = [_cloned(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_cloned(v) for v in value]
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    return value


def finetune_options(cfg: Any) -> dict[str, Any]:
    """The `finetune_block` keyword arguments a method config's `finetune_*` fields ask for
    (`AQLMConfig`, or any config with the same fields): everything but `generator`."""
    return {
        "lr": cfg.finetune_lr, "betas": cfg.finetune_betas, "max_epochs": cfg.finetune_max_epochs,
        "batch_size": cfg.finetune_batch_size, "val_fraction": cfg.finetune_val_fraction,
        "patience": cfg.finetune_patience, "keep_best": cfg.finetune_keep_best,
        "max_sequences": cfg.finetune_max_sequences,
        "compute_dtype": None if cfg.finetune_dtype == "calibration" else getattr(torch, cfg.finetune_dtype),
    }


def finetune_block(
    block: nn.Module, inputs: BlockData, targets: torch.Tensor, *, lr: float, betas: tuple[float, float],
    max_epochs: int, batch_size: int, val_fraction: float, patience: int, keep_best: bool,
    max_sequences: int | None, generator: torch.Generator, compute_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Fine-tune `block` in place (see the module docstring); returns the log entry.

    inputs: `harness.plugin.BlockData` (hidden [n, seqlen, hidden] float32, per-batch kwargs);
    targets: [n, seqlen, hidden] float32, the full-precision block's outputs.
    batch_size: sequences per Adam step, as a whole number of the pipeline's batches (gradients
      of several batches are accumulated; rounded, at least one batch).
    max_sequences: use only the first sequences (rounded up to whole batches); None = all.
    compute_dtype: autocast dtype of the passes; None = the calibration's (`inputs.compute_dtype`).
    Log entry: finetune_epochs (epochs run); finetune_best_epoch (epoch of the best validation
    MSE, 0 = the start); finetune_train_mse_start / _end (mean training MSE of the first / last
    epoch, each batch measured before its own update); finetune_val_mse_start (before any
    update), finetune_val_mse_best and finetune_val_mse_history (after each epoch);
    finetune_seconds. Validation entries are None without
    a validation split. MSEs are per element of the hidden states (float32 targets).
    """
    start_time = time.perf_counter()
    if compute_dtype is not None:
        inputs = replace(inputs, compute_dtype=compute_dtype)
    n = inputs.hidden.shape[0]
    if max_sequences is not None:
        n = min(n, max_sequences)
    per_batch = inputs.batch_size
    batches = [(s, min(per_batch, n - s), _cloned(inputs.kwargs[b])) for b, s in enumerate(range(0, n, per_batch))]
    n_val = 0
    if len(batches) >= 2 and val_fraction > 0:
        n_val = min(len(batches) - 1, max(1, round(val_fraction * len(batches))))
    train, val = batches[: len(batches) - n_val], batches[len(batches) - n_val :]
    accumulate = max(1, round(batch_size / per_batch))
    device = inputs.device

    def loss_of(batch: tuple[int, int, dict[str, Any]]) -> torch.Tensor:
        s, size, kwargs = batch
        hidden = inputs.hidden[s : s + size].to(device, copy=True)
        target = targets[s : s + size].to(device, dtype=torch.float32, copy=True)
        return F.mse_loss(inputs.run(block, hidden, kwargs).float(), target)

    def mean_loss(part: list) -> float:
        with torch.no_grad():
            return sum(float(loss_of(b)) * b[1] for b in part) / sum(b[1] for b in part)

    with torch.inference_mode(False), torch.enable_grad(), trainable_block(block) as params:
        block.eval()
        snapshot = [p.detach().clone() for p in params]
        best_state, best_epoch = snapshot, 0 if val else None
        val_start = mean_loss(val) if val else None
        best = val_start
        optimizer = torch.optim.Adam(params, lr=lr, betas=(float(betas[0]), float(betas[1])))
        train_means: list[float] = []
        val_means: list[float] = []
        epochs, bad, diverged = 0, 0, False
        for epoch in range(1, max_epochs + 1):
            total = 0.0
            order = torch.randperm(len(train), generator=generator).tolist()
            for i, index in enumerate(order):
                loss = loss_of(train[index])
                (loss / accumulate).backward()
                total += float(loss.detach()) * train[index][1]
                if (i + 1) % accumulate == 0 or i + 1 == len(order):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            train_means.append(total / sum(b[1] for b in train))
            epochs = epoch
            current = mean_loss(val) if val else None
            if current is not None:
                val_means.append(current)
            if not math.isfinite(train_means[-1]) or (current is not None and not math.isfinite(current)):
                diverged = True
                break
            if current is not None:
                if current < best:
                    best, bad = current, 0
                    best_state, best_epoch = [p.detach().clone() for p in params], epoch
                else:
                    bad += 1
                    if bad >= patience:
                        break
        restore_state(params, snapshot=snapshot, best_state=best_state, validated=bool(val),
                      keep_best=keep_best, diverged=diverged)
        optimizer.zero_grad(set_to_none=True)
    return {
        "finetune_epochs": epochs,
        "finetune_best_epoch": best_epoch,
        "finetune_train_mse_start": train_means[0] if train_means else None,
        "finetune_train_mse_end": train_means[-1] if train_means else None,
        "finetune_val_mse_start": val_start,
        "finetune_val_mse_best": best,
        "finetune_val_mse_history": val_means if val else None,
        "finetune_seconds": round(time.perf_counter() - start_time, 3),
    }
