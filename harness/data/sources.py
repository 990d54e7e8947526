"""Text sources of the evaluation protocol (perplexity and calibration data).

Two shapes of source:
  token streams: one text tokenized once. `wikitext2` and `ptb` (their split's documents
    joined with "\\n\\n"), the `embedded` corpus and local UTF-8 text files (for these two,
    the first half of the token ids is the calibration split, the second half evaluation);
  document sets: `c4` and `redpajama`, whose windows are cut from single documents.

Hub datasets never hang offline: with offline mode set, or when the hub does not answer a
3 s probe, only the local `datasets` cache is read, and a miss is a `DataError` at once.
Tokenized streams are cached in memory per tokenizer.
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from harness.errors import DataError
from harness.models.hub import hub_offline, offline_mode, offline_requested

logger = logging.getLogger(__name__)

Role = Literal["calibration", "eval"]
EMBEDDED = "embedded"
_OFFLINE_HINT = (
    "Use `embedded` (Python's own documentation text, always available offline) or the path of a "
    "local UTF-8 text file instead, or run once where the hub is reachable to fill the datasets cache."
)


@dataclass(frozen=True)
class HubDataset:
    """Where a protocol dataset lives on the Hugging Face Hub.

    splits: role -> split name. files: role -> data file(s) in the repo (for repos read by
    file). builder: a packaged builder ("json") reading `hf://` URLs instead of the repo's own
    loader. joined: True for token streams (documents joined with "\\n\\n").
    """

    repo: str
    config: str | None
    splits: dict[str, str]
    column: str
    joined: bool
    files: dict[str, str] = field(default_factory=dict)
    builder: str | None = None
    revision: str | None = None

    def describe(self, role: Role) -> str:
        what = self.files.get(role) or self.splits[role]
        config = f" {self.config}" if self.config else ""
        return f"{self.repo}{config}, {what}"

    def load(self, role: Role) -> Any:
        """The split as a `datasets.Dataset` (downloads unless offline mode is active)."""
        import datasets

        split = self.splits[role]
        if self.builder:
            url = f"hf://datasets/{self.repo}/{self.files[role]}"
            return datasets.load_dataset(self.builder, data_files={split: url}, split=split)
        if role in self.files:
            return datasets.load_dataset(
                self.repo, self.config, data_files={split: self.files[role]}, split=split, revision=self.revision
            )
        return datasets.load_dataset(self.repo, self.config, split=split, revision=self.revision)


HUB_DATASETS: dict[str, HubDataset] = {
    "wikitext2": HubDataset(
        "Salesforce/wikitext", "wikitext-2-raw-v1", {"eval": "test", "calibration": "train"}, "text", True
    ),
    "ptb": HubDataset(
        "ptb-text-only/ptb_text_only", "penn_treebank", {"eval": "validation", "calibration": "train"}, "sentence", True
    ),
    "c4": HubDataset(
        "allenai/c4",
        "default",
        {"eval": "validation", "calibration": "train"},
        "text",
        False,
        files={"eval": "en/c4-validation.00000-of-00008.json.gz", "calibration": "en/c4-train.00000-of-01024.json.gz"},
        revision="607bd4c8450a42878aa9ddc051a65a055450ef87",  # the revision AQLM pins
    ),
    "redpajama": HubDataset(
        "togethercomputer/RedPajama-Data-1T-Sample",
        None,
        {"calibration": "train"},
        "text",
        False,
        files={"calibration": "*.jsonl"},
        builder="json",  # the repo still ships a loading script, which `datasets` no longer runs
    ),
}
DOCUMENT_SOURCES = tuple(name for name, ds in HUB_DATASETS.items() if not ds.joined)

_DATASETS: dict[tuple[str, str], Any] = {}
_STREAMS: "weakref.WeakKeyDictionary[Any, dict[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()


def embedded_text() -> str:
    """The embedded corpus: `pydoc_data.topics.topics` texts joined by "\\n\\n" in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of `text` as the tokenizer's default call gives them: LongTensor [N]."""
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def resolve_text_path(source: str, base_dir: Path | None = None) -> Path | None:
    """An existing file named by `source`, relative to the working directory, then `base_dir`."""
    for base in (Path.cwd(), base_dir):
        if base is None:
            continue
        candidate = (Path(base) / Path(source).expanduser()).resolve()
        if candidate.is_file():
            return candidate
    return None


def hub_dataset(source: str, role: Role) -> Any:
    """One split of a hub dataset as a `datasets.Dataset`, loaded once per process."""
    spec = HUB_DATASETS[source]
    if role not in spec.splits:
        raise DataError(
            f"dataset '{source}' is a calibration source only; evaluate on "
            f"wikitext2, c4, ptb, embedded or a local text file."
        )
    key = (source, role)
    if key in _DATASETS:
        return _DATASETS[key]
    try:
        import datasets  # noqa: F401
    except ImportError as exc:
        raise DataError(f"dataset '{source}' needs the package 'datasets': `pip install datasets`.") from exc
    offline = hub_offline()
    try:
        with offline_mode(offline):
            dataset = spec.load(role)
    except Exception as exc:
        if offline:
            why = "offline mode is set (HF_HUB_OFFLINE)" if offline_requested() else "it did not answer"
            raise DataError(
                f"dataset '{source}' ({spec.describe(role)}) is not in the local cache and the Hugging "
                f"Face Hub cannot be reached: {why}. {_OFFLINE_HINT}"
            ) from exc
        raise DataError(
            f"could not load dataset '{source}' ({spec.describe(role)}) from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). {_OFFLINE_HINT}"
        ) from exc
    _DATASETS[key] = dataset
    return dataset


def documents(source: str, role: Role) -> Sequence[str]:
    """The documents of a document-set source (`c4`, `redpajama`) for one role."""
    if source not in DOCUMENT_SOURCES:
        raise DataError(f"'{source}' is not a document dataset (those are {', '.join(DOCUMENT_SOURCES)}).")
    return hub_dataset(source, role)[HUB_DATASETS[source].column]


def cached_per_tokenizer(tokenizer: Any, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`make()` computed once per (tokenizer, key) in this process; dropped with the tokenizer."""
    per_tokenizer = _STREAMS.setdefault(tokenizer, {})
    if key not in per_tokenizer:
        per_tokenizer[key] = make()
    return per_tokenizer[key]


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc}). Convert it to UTF-8.") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read the text file ({exc}).") from exc
    if not text.strip():
        raise DataError(f"{path}: the text file is empty.")
    return text


def _stream_text(source: str, role: Role, base_dir: Path | None) -> tuple[tuple, Callable[[], str]]:
    """(cache key, text maker) of a token-stream source; for hub streams the text of `role`'s
    split, for `embedded` and local files the whole text (split by tokens or characters later)."""
    if source in HUB_DATASETS:
        spec = HUB_DATASETS[source]
        if not spec.joined:
            raise DataError(f"'{source}' is a document dataset, not a token stream.")
        return ("hub", source, role), lambda: "\n\n".join(hub_dataset(source, role)[spec.column])
    if source == EMBEDDED:
        return (EMBEDDED,), embedded_text
    path = resolve_text_path(source, base_dir)
    if path is None:
        where = f"{Path.cwd()}" + (f" or {base_dir}" if base_dir else "")
        raise DataError(
            f"unknown dataset '{source}': not one of {', '.join([*HUB_DATASETS, EMBEDDED])} and no such "
            f"text file (relative paths are read from {where})."
        )
    stat = path.stat()
    return ("file", str(path), stat.st_mtime_ns, stat.st_size), lambda: _read_text_file(path)


def token_stream(source: str, tokenizer: Any, role: Role, base_dir: Path | None = None) -> torch.Tensor:
    """The token ids of a stream source for one role: LongTensor [N] (shared cache: do not modify).

    `embedded` and local files: the first half of the ids for "calibration", the second half
    for "eval". `wikitext2`, `ptb`: the split's documents joined with "\n\n".
    """
    key, make = _stream_text(source, role, base_dir)
    ids = cached_per_tokenizer(tokenizer, key, lambda: tokenize(tokenizer, make()))
    if source in HUB_DATASETS:
        return ids
    half = ids.numel() // 2
    return ids[:half] if role == "calibration" else ids[half:]


def owned_bytes(text: str, ends: Sequence[int]) -> Any:
    """Per token, the UTF-8 bytes of `text` it covers: from the previous token's end offset to
    its own (character offsets, as fast tokenizers give them; special tokens end at 0 and cover
    nothing). Every byte up to the last end belongs to exactly one token. numpy int64 [N]."""
    import numpy as np

    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    byte_at = np.concatenate([[0], np.cumsum(widths, dtype=np.int64)])  # byte offset of each character index
    ends_arr = np.maximum.accumulate(np.asarray(ends, dtype=np.int64)) if len(ends) else np.zeros(0, np.int64)
    positions = byte_at[ends_arr]
    return np.diff(positions, prepend=0)


def token_bytes(source: str, tokenizer: Any, role: Role, base_dir: Path | None = None) -> torch.Tensor | None:
    """Per token of `token_stream(source, tokenizer, role)`, the UTF-8 bytes of text it covers
    (`owned_bytes`): LongTensor [N], or None when the tokenizer gives no character offsets."""
    key, make = _stream_text(source, role, base_dir)
    if not getattr(tokenizer, "is_fast", False):
        return None

    def make_bytes() -> torch.Tensor:
        text = make()
        encoded = tokenizer(text, return_attention_mask=False, return_offsets_mapping=True, verbose=False)
        ids = cached_per_tokenizer(tokenizer, key, lambda: tokenize(tokenizer, text))
        if list(encoded["input_ids"]) != ids.tolist():
            raise DataError(f"dataset '{source}': the tokenizer gives other ids when asked for offsets")
        return torch.from_numpy(owned_bytes(text, [end for _, end in encoded["offset_mapping"]]))

    owned = cached_per_tokenizer(tokenizer, ("bytes", *key), make_bytes)
    if source in HUB_DATASETS:
        return owned
    half = owned.numel() // 2
    return owned[:half] if role == "calibration" else owned[half:]


def heldout_text(source: str, base_dir: Path | None = None) -> str:
    """The held-out text of a stream source, independent of any tokenizer: the evaluation split
    of `wikitext2` / `ptb` (documents joined with "\n\n"); for `embedded` and local files the
    second half of the characters."""
    _key, make = _stream_text(source, "eval", base_dir)
    text = make()
    return text if source in HUB_DATASETS else text[len(text) // 2 :]


def clear_caches() -> None:
    """Forget loaded datasets and tokenized streams (frees memory)."""
    _DATASETS.clear()
    _STREAMS.clear()
