"""Bits per byte: the bytes windows cover, the identical-text setting, and bpb in records and tables."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from harness.data.sources import heldout_text, owned_bytes
from harness.data.windows import eval_text_windows, eval_windows
from harness.metrics.perplexity import perplexity


def test_owned_bytes_partition_the_text() -> None:
    text = "a é€😀 b"  # 1-, 2-, 3- and 4-byte characters
    ends = [0, 1, 3, 4, 5, 6, 7]  # a start token (end 0), then tokens ending at these characters
    owned = owned_bytes(text, ends).tolist()
    assert owned == [0, 1, 3, 3, 4, 1, 1] and sum(owned) == len(text.encode("utf-8")) == 13
    assert owned_bytes(text, [2, 1, 3]).tolist() == [2, 0, 2]  # a token ending earlier covers nothing


def test_window_bytes_match_the_decoded_text(embedded_smollm2) -> None:
    """SmolLM2's byte-level BPE decodes exactly: a window's predicted tokens decode to its bytes."""
    embedded = embedded_smollm2
    tokenizer = embedded.tokenizer
    evaluated = eval_text_windows("embedded", tokenizer, 128, max_windows=5)
    assert torch.equal(evaluated.windows, eval_windows("embedded", tokenizer, 128, max_windows=5))
    decoded = [len(tokenizer.decode(w[1:]).encode("utf-8")) for w in evaluated.windows]
    assert evaluated.window_bytes == decoded


def test_identical_text_windows_cover_the_text(embedded_smollm2) -> None:
    embedded = embedded_smollm2
    evaluated = eval_text_windows("embedded", embedded.tokenizer, 64, text_bytes=3000)
    text = heldout_text("embedded").encode("utf-8")[:3000].decode("utf-8", errors="ignore")
    assert evaluated.text_bytes == len(text.encode("utf-8")) == sum(evaluated.window_bytes)
    assert evaluated.text_sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    rows = evaluated.windows
    assert all(len(w) == 64 for w in rows[:-1]) and 2 <= len(rows[-1]) <= 64
    assert all(rows[i][-1] == rows[i + 1][0] for i in range(len(rows) - 1))  # overlap by one token
    ids = torch.cat([rows[0], *(w[1:] for w in rows[1:])])
    assert embedded.tokenizer.decode(ids[1:]) == text  # every token of the text is predicted once
    with pytest.raises(ValueError, match="exclude each other"):
        eval_text_windows("embedded", embedded.tokenizer, 64, text_bytes=3000, max_windows=2)


@torch.inference_mode()
def _independent_bpb(model, tokenizer, text: str, seqlen: int, dtype: torch.dtype) -> float:
    """Sum of token NLLs (nats, summed in float64) / ln 2 / UTF-8 bytes, without the harness's
    windows or byte accounting: the text behind one start token, chunks of seqlen - 1 predicted
    tokens, each conditioned on the token before it; the log-softmax in `dtype`."""
    ids = tokenizer(text)["input_ids"]
    if tokenizer.bos_token_id is not None and ids[0] != tokenizer.bos_token_id:
        ids = [tokenizer.bos_token_id, *ids]
    total = 0.0
    for first in range(0, len(ids) - 1, seqlen - 1):
        chunk = torch.tensor([ids[first : first + seqlen]])
        logp = F.log_softmax(model(input_ids=chunk).logits[0, :-1].to(dtype), dim=-1)
        total -= logp.gather(1, chunk[0, 1:, None]).double().sum().item()
    return total / math.log(2) / len(text.encode("utf-8"))


def test_bpb_of_smollm2_equals_an_independent_computation(embedded_smollm2) -> None:
    embedded = embedded_smollm2
    evaluated = eval_text_windows("embedded", embedded.tokenizer, 128, text_bytes=2500)
    result = perplexity(embedded.model, evaluated.windows, window_bytes=evaluated.window_bytes, progress=False,
                        batch_size=4)
    text = heldout_text("embedded").encode("utf-8")[:2500].decode("utf-8", errors="ignore")
    expected = _independent_bpb(embedded.model, embedded.tokenizer, text, 128, torch.float32)
    assert result.bytes == 2500 and abs(result.bpb - expected) < 1e-6, (result.bpb, expected)
    # the float32 log-softmax itself (shared by both) is within ~1e-5 of a float64 one
    exact = _independent_bpb(embedded.model, embedded.tokenizer, text, 128, torch.float64)
    assert abs(result.bpb - exact) < 2e-5, (result.bpb, exact)
    assert math.isclose(result.nll, result.nll_sum / result.tokens, rel_tol=1e-6)
    assert 0.5 < result.bpb < 2.0


def test_both_embedded_models_on_byte_identical_text(embedded_smollm2, embedded_gemma) -> None:
    """The two tokenizers cut the same text differently, but cover exactly the same bytes."""
    embedded = embedded_smollm2
    results = {}
    for loaded in (embedded, embedded_gemma):
        evaluated = eval_text_windows("embedded", loaded.tokenizer, 128, text_bytes=2048)
        result = perplexity(loaded.model, evaluated.windows, window_bytes=evaluated.window_bytes,
                            progress=False, batch_size=8)
        results[loaded.source["id"]] = (evaluated.text_sha256, result.bytes, result.tokens, result.bpb)
    (sha_a, bytes_a, tokens_a, bpb_a), (sha_b, bytes_b, tokens_b, bpb_b) = results.values()
    assert sha_a == sha_b and bytes_a == bytes_b == 2048
    assert tokens_a != tokens_b  # other tokenizers, same text
    assert all(0.3 < b < 3.0 for b in (bpb_a, bpb_b))


def test_ragged_windows_weight_tokens(embedded_smollm2) -> None:
    embedded = embedded_smollm2
    rows = [torch.arange(100, 110), torch.arange(200, 204)]
    result = perplexity(embedded.model, rows, window_bytes=[30, 12], progress=False, batch_size=2)
    assert result.tokens == 9 + 3 and result.windows == 2 and result.seqlen == 10
    assert math.isclose(result.nll, (result.window_nll[0] * 9 + result.window_nll[1] * 3) / 12, rel_tol=1e-6)
    assert math.isclose(result.bpb, result.nll_sum / math.log(2) / 42, rel_tol=1e-12)


def test_bpb_in_the_results_table() -> None:
    from harness.report.display import display
    from harness.report.frames import records_frame

    def record(key, model, ppl, bpb):
        metrics = {"bits": 16.0, "perplexity": {"embedded": {"ppl": ppl, "window_nll": [1.0, 1.1],
                                                              **({"bpb": bpb} if bpb else {})}}}
        return {"key": key, "status": "ok", "model": {"id": model, "label": model}, "method": "none", "budget": None,
                "params": {}, "metrics": metrics}

    frame = records_frame([record("a", "smollm2-135m", 13.0, 0.9954), record("b", "gemma3-270m", 48.2, 1.4736)])
    assert list(frame["bpb:embedded"]) == [1.4736, 0.9954]  # sorted by model
    assert "bpb:embedded" in display(frame, []).columns and "1.4736" in list(display(frame, [])["bpb:embedded"])
    old = records_frame([record("c", "smollm2-135m", 13.0, None)])  # records from before bpb: no column
    assert not [c for c in old.columns if c.startswith("bpb")]


def test_families_suite_and_the_text_bytes_setting(tmp_path) -> None:
    from harness.errors import SuiteError
    from harness.suite import PerplexitySpec, load_suite, resolve_cells

    cells = resolve_cells(load_suite("suites/families.yaml"), "suites/families.yaml")
    assert len(cells) == 20 and {c.model.id for c in cells} == {"smollm2-135m", "gemma3-270m"}
    assert {c.evaluations.perplexity.text_bytes for c in cells} == {81920}
    with pytest.raises(ValueError, match="exclude each other"):
        PerplexitySpec(text_bytes=1000, max_windows=3)
    # text_bytes is None by default, and then left out of the cell key (keys made before it stay)
    plain = next(c for c in resolve_cells(load_suite("suites/quickstart.yaml"), "suites/quickstart.yaml"))
    assert plain.evaluations.perplexity.text_bytes is None
    with_field = plain.model_copy(deep=True)
    object.__setattr__(with_field.evaluations.perplexity, "text_bytes", 81920)
    assert with_field.key != plain.key
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: bad\nmodels: [gemma-7b-local-typo.gguf]\nmethods: [{name: none}]\n")
    with pytest.raises(SuiteError, match="gemma3-270m"):  # the message lists the embedded models
        load_suite(suite)
