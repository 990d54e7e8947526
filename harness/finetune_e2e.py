"""End-to-end fine-tuning after quantization: knowledge distillation from the unquantized model.

The quantized model (student) is trained to match the unquantized model's (teacher's) next-token
distributions on the calibration sequences: the loss is KL(teacher ‖ student) per token, mean
over every position. Trained: the continuous tensors that each quantized layer declares
(`QuantizedLinear.trainable_buffers`, e.g. AQLM/CRVQ codebooks and scales; codes and
permutations stay fixed) and the weights of every norm module; everything else is frozen.
The stage is method-agnostic, so AQLM and CRVQ cells with the same `finetune_e2e` settings are
tuned identically (as in the AQLM and CRVQ papers).

Data: the first `max_sequences` calibration sequences; the last `val_fraction` of them are held
out (at least one when there are two or more) for early stopping (`patience` epochs without a
lower validation KL) and, with `keep_best`, for restoring the best epoch's tensors. Adam steps
accumulate the gradients of `batch_size / microbatch_size` microbatches; the training order is
shuffled every epoch from a generator seeded by the cell's seed. The teacher runs on the fly
(no stored logits). Forward passes use autocast in the model's dtype when it is 16-bit, and
with `gradient_checkpointing` each decoder block's activations are recomputed in the backward.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from harness.models.adapters import FamilyAdapter
from harness.tuning import restore_state, tunable_parameters

logger = logging.getLogger(__name__)

__all__ = ["distillation_kl", "finetune_e2e"]


@contextlib.contextmanager
def _checkpointed(blocks: nn.ModuleList, enabled: bool) -> Iterator[None]:
    """Recompute each block's activations in the backward pass (non-reentrant checkpoints)."""
    if not enabled:
        yield
        return

    def wrap(forward: Any) -> Any:
        @functools.wraps(forward)
        def run(*args: Any, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    for block in blocks:
        block.forward = wrap(block.forward)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # the instance attribute; the class method is back


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per token, mean over all positions (float32). Both [..., vocab]."""
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def finetune_e2e(
    student: nn.Module, teacher: nn.Module, adapter: FamilyAdapter, sequences: torch.Tensor, spec: Any, *,
    seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Distil `teacher` into `student` in place on `sequences` [n, seqlen] int64 (see the module
    docstring); `spec` is the suite's `FinetuneE2ESpec`. Returns the log entry: epochs,
    best_epoch (0 = the start), train_kl_start / train_kl_end (mean KL of the first / last
    epoch, each microbatch before its own step), val_kl_start / val_kl_best (None without a
    validation split), train_sequences, val_sequences, trainable_parameters, seconds."""
    start_time = time.perf_counter()
    device = next(student.parameters()).device
    dtype = next(student.parameters()).dtype
    n = min(sequences.shape[0], spec.max_sequences or sequences.shape[0])
    data = sequences[:n]
    n_val = min(n - 1, max(1, round(spec.val_fraction * n))) if n >= 2 and spec.val_fraction > 0 else 0
    train, val = data[: n - n_val], data[n - n_val :]
    mb = spec.microbatch_size
    accumulate = max(1, spec.batch_size // mb)
    generator = torch.Generator().manual_seed(seed)
    autocast = dtype in (torch.float16, torch.bfloat16)
    teacher.eval().requires_grad_(False)  # frozen: no gradients are ever kept for it

    def kl(batch: torch.Tensor) -> torch.Tensor:
        ids = batch.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            with torch.no_grad():
                target = teacher(input_ids=ids, use_cache=False).logits
            return distillation_kl(student(input_ids=ids, use_cache=False).logits, target)

    def mean_kl(part: torch.Tensor) -> float:
        with torch.no_grad():
            return sum(float(kl(part[i : i + mb])) * part[i : i + mb].shape[0] for i in range(0, part.shape[0], mb)) / part.shape[0]

    with tunable_parameters(student) as params, _checkpointed(adapter.blocks(student), spec.gradient_checkpointing):
        student.eval()  # no dropout; checkpointing does not depend on training mode here
        count = sum(p.numel() for p in params)
        snapshot = [p.detach().clone() for p in params]
        val_start = mean_kl(val) if n_val else None
        best, best_epoch, best_state = val_start, 0 if n_val else None, snapshot
        optimizer = torch.optim.Adam(params, lr=spec.lr, betas=(float(spec.betas[0]), float(spec.betas[1])))
        train_means: list[float] = []
        epochs, bad, diverged = 0, 0, False
        bar = tqdm(total=spec.epochs * math.ceil(train.shape[0] / mb), desc="end-to-end fine-tuning", unit="mb",
                   disable=not progress)
        for epoch in range(1, spec.epochs + 1):
            order = torch.randperm(train.shape[0], generator=generator)
            total, steps = 0.0, 0
            for start in range(0, train.shape[0], mb):
                batch = train[order[start : start + mb]]
                loss = kl(batch)
                (loss / accumulate).backward()
                total += float(loss.detach()) * batch.shape[0]
                steps += 1
                if steps % accumulate == 0 or start + mb >= train.shape[0]:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                bar.update(1)
                bar.set_postfix(kl=f"{float(loss.detach()):.4g}")
            train_means.append(total / train.shape[0])
            epochs = epoch
            current = mean_kl(val) if n_val else None
            logger.info("e2e fine-tuning epoch %d: train KL %.4g, validation KL %s", epoch, train_means[-1],
                        "n/a" if current is None else f"{current:.4g}")
            if not math.isfinite(train_means[-1]) or (current is not None and not math.isfinite(current)):
                diverged = True
                break
            if current is not None:
                if current < best:
                    best, bad, best_epoch = current, 0, epoch
                    best_state = [p.detach().clone() for p in params]
                else:
                    bad += 1
                    if bad >= spec.patience:
                        break
        bar.close()
        restore_state(params, snapshot=snapshot, best_state=best_state, validated=bool(n_val),
                      keep_best=spec.keep_best, diverged=diverged)
        optimizer.zero_grad(set_to_none=True)
    return {
        "epochs": epochs, "best_epoch": best_epoch, "diverged": diverged,
        "train_kl_start": train_means[0] if train_means else None,
        "train_kl_end": train_means[-1] if train_means else None,
        "val_kl_start": val_start, "val_kl_best": best,
        "train_sequences": int(train.shape[0]), "val_sequences": int(n_val),
        "trainable_parameters": int(count), "seconds": round(time.perf_counter() - start_time, 3),
    }
