"""Token-level perplexity, the papers' definition (../shared/spec/protocol.md).

The evaluation text is tokenized once and cut into non-overlapping windows of `seqlen`
tokens (remainder dropped); perplexity is `exp` of the mean cross-entropy over every
predicted token of every window. Per-window mean losses are kept so that confidence
intervals can be computed later without re-running the model.

Bits per byte (`bpb`): the total NLL of the predicted tokens in bits divided by the UTF-8 bytes
of the text they cover (`harness.data.windows.EvalWindows.window_bytes`). It does not depend on
the tokenizer, so it compares model families; evaluated on byte-identical text (the
identical-text setting, `text_bytes`), two models' bpb are directly comparable.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.metrics.results import PerplexityResult


def _token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL (nats) of each target token: [b, t] float32, from logits [b, t, vocab].

    The log-softmax runs in float32 (as the papers' perplexity does); a float64 one moves bpb by
    ~3e-6 (a float32 log-sum-exp over a 50k-262k vocabulary) at 6x the cost of this step.
    """
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor | Sequence[torch.Tensor],
    *,
    batch_size: int = 1,
    progress: bool = True,
    desc: str = "perplexity",
    window_bytes: Sequence[int] | None = None,
) -> PerplexityResult:
    """Perplexity (and bits per byte) of a causal LM over `windows`.

    windows: [n, seqlen] int64 token ids, or a sequence of 1-D windows (lengths may differ:
        batches hold consecutive windows of equal length).
    window_bytes: per window, the UTF-8 bytes its predicted tokens cover; gives `bytes` and `bpb`.
    Each window predicts its tokens 1.. from the preceding ones; the result is
    exp(sum of token NLL / number of predicted tokens).
    """
    rows = list(windows) if not isinstance(windows, torch.Tensor) or windows.ndim == 2 else None
    if rows is None or not rows or any(r.ndim != 1 or r.shape[0] < 2 for r in rows):
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else [tuple(r.shape) for r in windows]
        raise ValueError(f"perplexity needs windows of shape [n, seqlen>=2], got {shape}")
    if window_bytes is not None and len(window_bytes) != len(rows):
        raise ValueError(f"perplexity: {len(window_bytes)} window_bytes for {len(rows)} windows")
    device = next(model.parameters()).device
    window_nll: list[float] = []
    window_sum: list[float] = []
    bar = tqdm(total=len(rows), desc=desc, unit="win", disable=not progress, leave=False)
    start = 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and stop - start < batch_size and rows[stop].shape[0] == rows[start].shape[0]:
            stop += 1
        batch = torch.stack(rows[start:stop]).to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        token_nll = _token_nll(logits[:, :-1, :], batch[:, 1:])
        window_nll.extend(token_nll.mean(dim=1).double().tolist())
        window_sum.extend(token_nll.double().sum(dim=1).tolist())
        bar.update(batch.shape[0])
        start = stop
    bar.close()
    lengths = [r.shape[0] for r in rows]
    tokens = sum(length - 1 for length in lengths)
    nll_sum = math.fsum(window_sum)
    if len(set(lengths)) == 1:
        mean_nll = sum(window_nll) / len(window_nll)  # every window has seqlen-1 predicted tokens
    else:
        mean_nll = nll_sum / tokens
    total_bytes = int(sum(window_bytes)) if window_bytes is not None else None
    return PerplexityResult(
        ppl=math.exp(mean_nll),
        nll=mean_nll,
        seqlen=int(max(lengths)),
        windows=len(rows),
        tokens=int(tokens),
        window_nll=window_nll,
        nll_sum=nll_sum,
        bytes=total_bytes,
        bpb=nll_sum / math.log(2) / total_bytes if total_bytes else None,
        window_bytes=[int(b) for b in window_bytes] if window_bytes is not None else None,
    )
