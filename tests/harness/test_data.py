"""Text sources, evaluation windows, the calibration sampler and the token hash."""
from __future__ import annotations

import hashlib
import random
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import harness.data.sources as sources_mod
import harness.data.windows as windows_mod
import harness.models.hub as hub
from harness.data import calibration_batch, embedded_text, eval_windows, token_hash, token_stream, tokenize
from harness.errors import DataError

SEQLEN = 64


@pytest.fixture(scope="module")
def tokenizer(embedded):
    return embedded.tokenizer


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    lines = [f"Line {i}: the measured perplexity of model {i % 7} was {i * 0.37:.2f} on day {i % 31}." for i in range(600)]
    path = folder / "notes.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _contains_window(stream: torch.Tensor, window: torch.Tensor) -> bool:
    return bool((stream.unfold(0, window.numel(), 1) == window).all(dim=1).any())


def test_embedded_halves(tokenizer) -> None:
    full = tokenize(tokenizer, embedded_text())
    calib = token_stream("embedded", tokenizer, "calibration")
    held_out = token_stream("embedded", tokenizer, "eval")
    assert calib.dtype == torch.long and calib.numel() == full.numel() // 2
    assert torch.equal(torch.cat([calib, held_out]), full)
    again = token_stream("embedded", tokenizer, "eval")  # cached: same storage, no re-tokenization
    assert again.untyped_storage().data_ptr() == held_out.untyped_storage().data_ptr()


def test_eval_windows_embedded(tokenizer) -> None:
    held_out = token_stream("embedded", tokenizer, "eval")
    windows = eval_windows("embedded", tokenizer, 512)
    n = held_out.numel() // 512
    assert windows.shape == (n, 512) and windows.dtype == torch.long
    assert torch.equal(windows.flatten(), held_out[: n * 512])  # second half, in order, remainder dropped
    limited = eval_windows("embedded", tokenizer, 512, max_windows=3)
    assert torch.equal(limited, windows[:3])
    limited[0, 0] = -1  # a fresh tensor: the cache is untouched
    assert eval_windows("embedded", tokenizer, 512, max_windows=1)[0, 0] != -1


def test_calibration_batch_embedded(tokenizer) -> None:
    batch = calibration_batch("embedded", tokenizer, 8, SEQLEN, torch.Generator().manual_seed(0))
    assert batch.shape == (8, SEQLEN) and batch.dtype == torch.long
    same = calibration_batch("embedded", tokenizer, 8, SEQLEN, torch.Generator().manual_seed(0))
    other = calibration_batch("embedded", tokenizer, 8, SEQLEN, torch.Generator().manual_seed(1))
    assert torch.equal(batch, same) and not torch.equal(batch, other)
    calib = token_stream("embedded", tokenizer, "calibration")
    assert all(_contains_window(calib, row) for row in batch)  # drawn from the first half only


def test_global_rng_untouched(tokenizer) -> None:
    state, torch_state = random.getstate(), torch.get_rng_state()
    calibration_batch("embedded", tokenizer, 4, SEQLEN, torch.Generator().manual_seed(0))
    assert random.getstate() == state and torch.equal(torch.get_rng_state(), torch_state)


def test_local_text_file(tokenizer, text_file: Path, monkeypatch) -> None:
    monkeypatch.chdir(text_file.parent.parent)
    full = tokenize(tokenizer, text_file.read_text(encoding="utf-8"))
    half = full.numel() // 2
    windows = eval_windows(text_file.name, tokenizer, SEQLEN, base_dir=text_file.parent)
    n = (full.numel() - half) // SEQLEN
    assert windows.shape == (n, SEQLEN) and torch.equal(windows.flatten(), full[half : half + n * SEQLEN])
    by_relative = eval_windows(f"{text_file.parent.name}/{text_file.name}", tokenizer, SEQLEN)
    assert torch.equal(by_relative, windows)
    batch = calibration_batch(str(text_file), tokenizer, 16, SEQLEN, torch.Generator().manual_seed(3))
    assert batch.shape == (16, SEQLEN)
    assert all(_contains_window(full[:half], row) for row in batch)
    assert torch.equal(batch, calibration_batch(str(text_file), tokenizer, 16, SEQLEN, torch.Generator().manual_seed(3)))


def test_text_file_errors(tokenizer, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    with pytest.raises(DataError, match=r"short\.txt.*tokens, fewer than one window of 4096"):
        eval_windows(str(short), tokenizer, 4096)
    with pytest.raises(DataError, match="fewer than one window"):
        calibration_batch(str(short), tokenizer, 1, 4096, torch.Generator().manual_seed(0))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    with pytest.raises(DataError, match="UTF-8"):
        eval_windows(str(tmp_path / "latin1.txt"), tokenizer, 8)
    with pytest.raises(DataError, match="unknown dataset 'nonexistent.txt'"):
        eval_windows("nonexistent.txt", tokenizer, 8)
    with pytest.raises(DataError, match="calibration source only"):
        eval_windows("redpajama", tokenizer, 8)


def test_token_hash() -> None:
    ids = torch.arange(10)
    expected = hashlib.sha256(np.arange(10, dtype=np.int64).tobytes()).hexdigest()[:16]
    assert token_hash(ids) == expected and len(expected) == 16
    assert token_hash(ids.to(torch.int32)) == expected  # hashed as int64 whatever the dtype
    assert token_hash(ids.view(2, 5)) == expected
    assert token_hash(torch.arange(1, 11)) != expected


def test_hub_dataset_offline_env_fails_fast(tokenizer, monkeypatch, tmp_path: Path) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: read at call time
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # hermetic: empty caches
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "hub_reachable", lambda: pytest.fail("probed the network"))
    before = datasets.config.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        eval_windows("wikitext2", tokenizer, SEQLEN)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "wikitext2" in message and "offline" in message and "embedded" in message
    assert datasets.config.HF_HUB_OFFLINE is before  # the temporary offline switch was restored


def test_hub_dataset_unreachable_fails_fast(tokenizer, monkeypatch, tmp_path: Path) -> None:
    import datasets.config
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)  # what the probe says with no network
    start = time.perf_counter()
    with pytest.raises(DataError, match="'c4'.*did not answer"):
        eval_windows("c4", tokenizer, SEQLEN)
    with pytest.raises(DataError, match="'redpajama'"):
        calibration_batch("redpajama", tokenizer, 2, SEQLEN, torch.Generator().manual_seed(0))
    assert time.perf_counter() - start < 5


# --------------------------------------------------------------- document datasets (faked)

@pytest.fixture
def fake_documents(tokenizer, monkeypatch) -> list[str]:
    """Synthetic documents in place of the hub's, with a private window cache (restored after)."""
    docs = _fake_docs()
    monkeypatch.setattr(windows_mod, "documents", lambda source, role: docs)
    monkeypatch.setattr(sources_mod, "_STREAMS", weakref.WeakKeyDictionary())
    return docs


def _fake_docs() -> list[str]:
    words = embedded_text().split()
    rng = random.Random(7)
    docs = []
    for i in range(300):
        n = rng.choice([5, 20, 200])  # some documents shorter, some longer than a window
        start = rng.randint(0, len(words) - n)
        docs.append(f"doc {i}: " + " ".join(words[start : start + n]))
    return docs


def test_c4_eval_rule(tokenizer, fake_documents) -> None:
    docs = fake_documents
    state = random.getstate()
    windows = eval_windows("c4", tokenizer, SEQLEN, max_windows=20)
    assert random.getstate() == state  # a local Random(0), not the global one
    random.seed(0)  # the reference loop (GPTQ/AQLM), on the global RNG, for comparison only
    expected = []
    for _ in range(20):
        while True:
            ids = tokenizer(docs[random.randint(0, len(docs) - 1)], return_tensors="pt").input_ids
            if ids.shape[1] >= SEQLEN:
                break
        i = random.randint(0, ids.shape[1] - SEQLEN - 1)
        expected.append(ids[0, i : i + SEQLEN])
    random.setstate(state)
    assert windows.shape == (20, SEQLEN) and torch.equal(windows, torch.stack(expected))
    assert torch.equal(eval_windows("c4", tokenizer, SEQLEN, max_windows=5), windows[:5])


def test_document_calibration(tokenizer, fake_documents, monkeypatch) -> None:
    docs = fake_documents
    batch = calibration_batch("redpajama", tokenizer, 6, SEQLEN, torch.Generator().manual_seed(0))
    assert batch.shape == (6, SEQLEN)
    assert torch.equal(batch, calibration_batch("c4", tokenizer, 6, SEQLEN, torch.Generator().manual_seed(0)))
    long_docs = [tokenize(tokenizer, d) for d in docs]
    long_docs = [d for d in long_docs if d.numel() > SEQLEN]
    assert all(any(_contains_window(d, row) for d in long_docs) for row in batch)
    with pytest.raises(DataError, match="no document longer than 100000"):
        monkeypatch.setattr(windows_mod, "MAX_DOCUMENT_DRAWS", 5)
        calibration_batch("c4", tokenizer, 1, 100_000, torch.Generator().manual_seed(0))
