"""Evaluation windows and calibration batches, per the protocol.

eval_windows: non-overlapping windows of the tokenized evaluation text (remainder dropped);
  c4: 256 windows, one from each of 256 validation documents with at least `seqlen` tokens,
  chosen with a local `random.Random(0)` (the GPTQ/AQLM rule; the global RNG is untouched).
calibration_batch: random windows drawn with the caller's `torch.Generator` only: for the
  document sets (c4, redpajama) a random document longer than `seqlen`, then a random offset;
  for token streams (wikitext2, ptb train text; the calibration half of `embedded` and of
  local files) a random start offset.
"""
from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.data.sources import DOCUMENT_SOURCES, cached_per_tokenizer, documents, token_stream, tokenize
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
