"""Evaluation windows and calibration batches, per the protocol.

eval_windows: non-overlapping windows of the tokenized evaluation text (remainder dropped);
  c4: 256 windows, one from each of 256 validation documents with at least `seqlen` tokens,
  chosen with a local `random.Random(0)` (the GPTQ/AQLM rule; the global RNG is untouched).
eval_text_windows: the same windows plus, per window, the UTF-8 bytes of the text its predicted
  tokens cover (for bits per byte); with `text_bytes`, the identical-text setting: every model
  evaluates the first `text_bytes` bytes of the held-out text, whatever its tokenizer.
calibration_batch: random windows drawn with the caller's `torch.Generator` only: for the
  document sets (c4, redpajama) a random document longer than `seqlen`, then a random offset;
  for token streams (wikitext2, ptb train text; the calibration half of `embedded` and of
  local files) a random start offset.
"""
from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.data.sources import (
    DOCUMENT_SOURCES,
    EMBEDDED,
    HUB_DATASETS,
    cached_per_tokenizer,
    documents,
    heldout_text,
    token_bytes,
    token_stream,
    tokenize,
)
from harness.errors import DataError

logger = logging.getLogger(__name__)

C4_EVAL_WINDOWS = 256
#: Documents drawn per window before giving up (few documents are long enough).
MAX_DOCUMENT_DRAWS = 10_000

def token_hash(ids: torch.Tensor) -> str:
    """First 16 hex digits of the sha256 of the ids as contiguous int64 bytes (any shape)."""
    data = ids.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _check_seqlen(seqlen: int) -> None:
    if not isinstance(seqlen, int) or seqlen <= 0:
        raise ValueError(f"seqlen must be a positive integer, got {seqlen!r}")


def _c4_eval_windows(tokenizer: Any, seqlen: int, count: int, progress: bool) -> torch.Tensor:
    return cached_per_tokenizer(
        tokenizer, ("c4-eval", seqlen, count), lambda: _draw_c4_eval(tokenizer, seqlen, count, progress)
    )


def _draw_c4_eval(tokenizer: Any, seqlen: int, count: int, progress: bool) -> torch.Tensor:
    docs = documents("c4", "eval")
    rng = random.Random(0)
    windows = []
    for _ in tqdm(range(count), desc="c4 eval windows", disable=not progress, leave=False):
        for _draw in range(MAX_DOCUMENT_DRAWS):
            ids = tokenize(tokenizer, docs[rng.randint(0, len(docs) - 1)])
            if ids.numel() >= seqlen:
                break
        else:
            raise DataError(
                f"c4: no validation document of at least {seqlen} tokens in {MAX_DOCUMENT_DRAWS} draws; "
                f"use a shorter seqlen."
            )
        if ids.numel() == seqlen:  # exactly one window: AQLM takes it without a draw
            windows.append(ids)
        else:
            start = rng.randint(0, ids.numel() - seqlen - 1)
            windows.append(ids[start : start + seqlen])
    return torch.stack(windows)


def eval_windows(
    source: str,
    tokenizer: Any,
    seqlen: int,
    *,
    max_windows: int | None = None,
    base_dir: Path | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Evaluation windows of `source`: LongTensor [n, seqlen] (a fresh tensor).

    source: wikitext2, c4, ptb, embedded, or a local UTF-8 text file (relative to the working
        directory, then `base_dir`).
    max_windows: keep only the first n windows (the same first windows as without the limit).
    Raises DataError if the source is unavailable or too short for one window.
    """
    _check_seqlen(seqlen)
    if max_windows is not None and max_windows <= 0:
        raise ValueError(f"max_windows must be positive, got {max_windows}")
    if source == "redpajama":
        raise DataError(
            "redpajama is a calibration source only; evaluate on wikitext2, c4, ptb, embedded or a text file."
        )
    if source == "c4":
        count = min(C4_EVAL_WINDOWS, max_windows or C4_EVAL_WINDOWS)
        return _c4_eval_windows(tokenizer, seqlen, count, progress).clone()
    ids = token_stream(source, tokenizer, "eval", base_dir)
    n = ids.numel() // seqlen
    if n == 0:
        raise DataError(
            f"dataset '{source}': its evaluation text has {ids.numel()} tokens, fewer than one window of "
            f"{seqlen}; use a shorter seqlen or a longer text."
        )
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].reshape(n, seqlen).clone()


@dataclass
class EvalWindows:
    """Evaluation windows with the bytes of text they cover.

    windows: LongTensor [n, seqlen], or (identical-text setting) a list of 1-D LongTensors whose
        last one may be shorter.
    window_bytes: per window, the UTF-8 bytes of the text its predicted tokens (all but the
        first) cover, where every byte belongs to the token that ends it; None when the
        tokenizer gives no character offsets (slow tokenizers) or the source is a document set.
    text_bytes, text_sha256: identical-text setting only: the size and hash of the evaluated text.
    """

    windows: torch.Tensor | list[torch.Tensor]
    window_bytes: list[int] | None
    text_bytes: int | None = None
    text_sha256: str | None = None


def eval_text_windows(
    source: str,
    tokenizer: Any,
    seqlen: int,
    *,
    max_windows: int | None = None,
    text_bytes: int | None = None,
    base_dir: Path | None = None,
    progress: bool = False,
) -> EvalWindows:
    """`eval_windows` plus the bytes each window covers, or the identical-text setting.

    text_bytes: None: exactly the windows of `eval_windows`. A number: evaluate the first
        `text_bytes` UTF-8 bytes (cut back to a whole character) of the source's held-out text
        (`heldout_text`: independent of the tokenizer), tokenized alone behind a start token
        that covers no text (the tokenizer's own BOS, else its BOS/EOS id), in windows of
        `seqlen` tokens that overlap by one token, the last one shorter: every token of the
        text is predicted exactly once, so the bytes covered are the whole text for every
        model. Excludes `max_windows`.
    """
    if text_bytes is None:
        windows = eval_windows(source, tokenizer, seqlen, max_windows=max_windows, base_dir=base_dir, progress=progress)
        if source in DOCUMENT_SOURCES:
            return EvalWindows(windows, None)
        owned = token_bytes(source, tokenizer, "eval", base_dir)
        if owned is None:
            return EvalWindows(windows, None)
        n = windows.shape[0]
        per_token = owned[: n * seqlen].reshape(n, seqlen)
        return EvalWindows(windows, per_token[:, 1:].sum(dim=1).tolist())
    _check_seqlen(seqlen)
    if seqlen < 2:
        raise ValueError("the identical-text setting needs seqlen >= 2")
    if max_windows is not None:
        raise ValueError("perplexity: `text_bytes` and `max_windows` exclude each other (the text sets the windows)")
    if source not in (EMBEDDED, *(name for name, ds in HUB_DATASETS.items() if ds.joined)) and source in HUB_DATASETS:
        raise DataError(f"dataset '{source}' is a document set; the identical-text setting needs a text stream.")
    full = heldout_text(source, base_dir)
    data = full.encode("utf-8")
    if text_bytes > len(data):
        raise DataError(
            f"dataset '{source}': its held-out text has {len(data)} UTF-8 bytes, fewer than text_bytes={text_bytes}."
        )
    text = data[:text_bytes].decode("utf-8", errors="ignore")  # back to a whole character
    encoded = tokenizer(text, return_attention_mask=False, return_offsets_mapping=True, verbose=False)
    ids = list(encoded["input_ids"])
    ends = [end for _, end in encoded["offset_mapping"]]
    if not ids or ends[0] > 0:  # the first token covers text: put a start token before it
        start = getattr(tokenizer, "bos_token_id", None)
        start = start if start is not None else getattr(tokenizer, "eos_token_id", None)
        if start is None:
            raise DataError(
                "the identical-text setting needs a start token (BOS or EOS) that the tokenizer does not "
                "give; use `max_windows` instead."
            )
        ids, ends = [start, *ids], [0, *ends]
    owned = _owned_bytes(text, ends)
    step = seqlen - 1
    windows, window_bytes = [], []
    for first in range(0, len(ids) - 1, step):
        last = min(first + seqlen, len(ids))
        windows.append(torch.tensor(ids[first:last], dtype=torch.long))
        window_bytes.append(int(sum(owned[first + 1 : last])))
    return EvalWindows(
        windows, window_bytes, text_bytes=len(text.encode("utf-8")),
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
    )


def _owned_bytes(text: str, ends: list[int]) -> list[int]:
    """Per token, the UTF-8 bytes from the previous token's end offset to its own (characters)."""
    from harness.data.sources import owned_bytes

    return owned_bytes(text, ends).tolist()


def calibration_batch(
    source: str,
    tokenizer: Any,
    num_sequences: int,
    seqlen: int,
    generator: torch.Generator,
    base_dir: Path | None = None,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """`num_sequences` random calibration windows: LongTensor [num_sequences, seqlen].

    Every random choice comes from `generator` (a CPU `torch.Generator`), so the same seed
    gives the same batch. Record `token_hash` of the result with the seed.
    """
    _check_seqlen(seqlen)
    if num_sequences <= 0:
        raise ValueError(f"num_sequences must be positive, got {num_sequences}")
    if source in DOCUMENT_SOURCES:
        return _document_windows(source, tokenizer, num_sequences, seqlen, generator, progress)
    ids = token_stream(source, tokenizer, "calibration", base_dir)
    if ids.numel() < seqlen:
        raise DataError(
            f"dataset '{source}': its calibration text has {ids.numel()} tokens, fewer than one window "
            f"of {seqlen}; use a shorter seqlen or a longer text."
        )
    starts = torch.randint(0, ids.numel() - seqlen + 1, (num_sequences,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, high) from `generator`."""
    return int(torch.randint(0, high, (1,), generator=generator).item())


def _document_windows(
    source: str, tokenizer: Any, num_sequences: int, seqlen: int, generator: torch.Generator, progress: bool
) -> torch.Tensor:
    docs = documents(source, "calibration")
    windows = []
    for _ in tqdm(range(num_sequences), desc=f"{source} calibration", disable=not progress, leave=False):
        for _draw in range(MAX_DOCUMENT_DRAWS):
            ids = tokenize(tokenizer, docs[_randint(len(docs), generator)])
            if ids.numel() > seqlen:
                break
        else:
            raise DataError(
                f"dataset '{source}': no document longer than {seqlen} tokens in {MAX_DOCUMENT_DRAWS} "
                f"draws; use a shorter seqlen."
            )
        start = _randint(ids.numel() - seqlen, generator)
        windows.append(ids[start : start + seqlen])
    return torch.stack(windows)
