"""The offline task pack: rebuilt byte-identically, built from held-out text only, valid lm-eval tasks."""
from __future__ import annotations

import json

import pytest

from harness.data.sources import embedded_text, token_stream
from harness.tasks import CLOZE4, LASTWORD, MANIFEST, PACK_DIR, PACK_TASKS, data_path
from harness.tasks import build


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from harness.models.embedded import ensure_embedded_cache

    return AutoTokenizer.from_pretrained(str(ensure_embedded_cache()))


@pytest.fixture(scope="module")
def manifest() -> dict:
    manifest = json.loads((PACK_DIR / MANIFEST).read_text())
    if manifest["corpus_sha256"] != build.hashlib.sha256(embedded_text().encode()).hexdigest():
        pytest.skip("this Python's pydoc topics differ from the ones the shipped pack was built from")
    return manifest


def _rows(task: str) -> list[dict]:
    return [json.loads(line) for line in data_path(task).read_text(encoding="utf-8").splitlines()]


def test_rebuild_is_byte_identical(tokenizer, manifest, tmp_path) -> None:
    files = build.render_pack(embedded_text(), tokenizer, tokenizer_name=manifest["tokenizer"])
    assert build.stale_files(files, PACK_DIR) == []
    build.write_pack(files, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    assert build.stale_files(build.render_pack(embedded_text(), tokenizer, tokenizer_name="smollm2-135m"), tmp_path) == []


def test_examples_come_from_the_evaluation_half_only(tokenizer, manifest) -> None:
    text = embedded_text()
    boundary = manifest["boundary_char"]
    assert build.heldout_boundary(text, tokenizer) == boundary
    # the boundary is where the harness's own evaluation token stream starts
    eval_ids = token_stream("embedded", tokenizer, "eval")
    assert text[boundary:].startswith(tokenizer.decode(eval_ids[:40].tolist()))
    calibration, heldout = build._normalise(text[:boundary]), build._normalise(text[boundary:])
    texts = [f"{r['context']} {r['target']}" for r in _rows(LASTWORD)]
    texts += [r["context"] for r in _rows(CLOZE4)] + [e for r in _rows(CLOZE4) for e in r["endings"]]
    for r in _rows(LASTWORD) + _rows(CLOZE4):
        assert r["offset"] >= boundary
    for t in texts:
        assert t in heldout, t
        assert t not in calibration, t


def test_examples_are_well_formed(manifest) -> None:
    lastword, cloze = _rows(LASTWORD), _rows(CLOZE4)
    assert len(lastword) == manifest["tasks"][LASTWORD]["examples"] == build.LASTWORD_EXAMPLES
    assert len(cloze) == manifest["tasks"][CLOZE4]["examples"] == build.CLOZE4_EXAMPLES
    assert all(r["target"].isalpha() and not r["context"].endswith(" ") for r in lastword)
    for r in cloze:
        assert len(r["endings"]) == len(set(r["endings"])) == 4 and 0 <= r["label"] < 4
    labels = [r["label"] for r in cloze]
    assert min(labels.count(i) for i in range(4)) >= len(cloze) // 8  # the gold ending is not always first
    assert len({r["id"] for r in lastword + cloze}) == len(lastword) + len(cloze)


def test_lm_eval_reads_the_pack() -> None:
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=str(PACK_DIR), include_defaults=False).load(list(PACK_TASKS))["tasks"]
    cloze = loaded[CLOZE4]
    doc = next(iter(cloze.test_docs()))
    assert cloze.doc_to_choice(doc) == doc["endings"] and cloze.doc_to_target(doc) == doc["label"]
    lastword = loaded[LASTWORD]
    doc = next(iter(lastword.test_docs()))
    assert lastword.doc_to_text(doc) == doc["context"] and lastword.doc_to_target(doc) == " " + doc["target"]
