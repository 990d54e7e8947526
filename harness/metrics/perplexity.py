"""Token-level perplexity, the papers' definition (../shared/spec/protocol.md).

The evaluation text is tokenized once and cut into non-overlapping windows of `seqlen`
tokens (remainder dropped); perplexity is `exp` of the mean cross-entropy over every
predicted token of every window. Per-window mean losses are kept so that confidence
intervals can be computed later without re-running the model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    seqlen: int
    windows: int
    tokens: int  # predicted tokens
    window_nll: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    progress: bool = True,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of a causal LM over `windows` ([n, seqlen] int64 token ids).

    Each window predicts its tokens 1..seqlen-1 from the preceding ones; the result is
    exp(sum of token NLL / number of predicted tokens).
    """
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"perplexity needs windows of shape [n, seqlen>=2], got {tuple(windows.shape)}")
    device = next(model.parameters()).device
    n, seqlen = windows.shape
    window_nll: list[float] = []
    bar = tqdm(total=n, desc=desc, unit="win", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        shift_logits = logits[:, :-1, :].float()
        targets = batch[:, 1:]
        token_nll = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view(batch.shape[0], -1)
        window_nll.extend(token_nll.mean(dim=1).double().tolist())
        bar.update(batch.shape[0])
    bar.close()
    mean_nll = sum(window_nll) / len(window_nll)  # every window has seqlen-1 predicted tokens
    return PerplexityResult(
        ppl=math.exp(mean_nll),
        nll=mean_nll,
        seqlen=int(seqlen),
        windows=int(n),
        tokens=int(n * (seqlen - 1)),
        window_nll=window_nll,
    )
