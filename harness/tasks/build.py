"""Build the offline task pack from the held-out half of the embedded corpus, deterministically.

    python -m harness.tasks.build            # rewrite harness/tasks/ (YAMLs, data, manifest)
    python -m harness.tasks.build --check    # exit 1 if a rebuild would change any file

Source text: the evaluation half of the embedded corpus as the harness defines it
(`harness.data.token_stream("embedded", tokenizer, "eval")`: the second half of the token
ids of the embedded tokenizer). Only paragraphs that start inside that half are used, and a
paragraph, context or ending that also occurs verbatim in the calibration half is dropped,
so no example text is calibration text.

Passages are the prose paragraphs (code, grammar, tables and headings left out),
whitespace-normalised and split into sentences. Every random choice comes from one local
`random.Random(SEED)`; the output depends only on the corpus text and the tokenizer.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.tasks import CLOZE4, LASTWORD, MANIFEST, PACK_DIR, PACK_TASKS, data_path

logger = logging.getLogger(__name__)

#: Bump when the rules below change (it is the lm-eval task version of both tasks).
PACK_VERSION = 1
SEED = 0
#: Examples per task: sized so that both tasks together score ~18k tokens (~35 s per cell for
#: SmolLM2-135M on a 2-core CPU), while 4-bit and 2-bit RTN still differ by far more than the stderr.
LASTWORD_EXAMPLES = 200
CLOZE4_EXAMPLES = 80
#: Context length cap (words): whole sentences, the nearest ones kept.
MAX_CONTEXT_WORDS = 30
MIN_CONTEXT_WORDS = 6
#: Word-count range of a cloze ending (one sentence), and of its distractors relative to it.
ENDING_WORDS = (5, 18)
DISTRACTOR_RATIO = 1.35
#: A paragraph is prose if at most this share of its words look like code.
MAX_CODE_SHARE = 0.1
_CODE_CHARS = set("()[]{}=<>_|\\/@#$%^&~`")
_ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr."}
_LAST_WORD = re.compile(r"^(?P<prefix>.*\S)\s+(?P<word>[A-Za-z]{3,})\.$")
_UNDERLINE = re.compile(r"^\s*[=\-~^*+#]{3,}\s*$")


@dataclass(frozen=True)
class Passage:
    """A held-out prose paragraph: its character offset in the corpus and its sentences."""

    offset: int
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


# --------------------------------------------------------------------------- corpus

def heldout_boundary(text: str, tokenizer: Any) -> int:
    """Character offset where the evaluation half of `text` starts for `tokenizer`.

    The harness splits the token ids of `text` (the tokenizer's default call) in two halves;
    this is the start of the first character of the first evaluation token.
    """
    encoded = tokenizer(text, return_offsets_mapping=True, return_attention_mask=False, verbose=False)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    half = len(ids) // 2
    # A special token (BOS) has the empty span (0, 0); the first real token after `half` counts.
    starts = [start for start, end in offsets[half:] if end > start]
    if not starts:
        raise ValueError("the corpus is too short to have an evaluation half")
    return int(starts[0])


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _code_share(words: Sequence[str]) -> float:
    return sum(any(c in _CODE_CHARS for c in w) for w in words) / max(len(words), 1)


def split_sentences(text: str) -> list[str]:
    """Sentences of a whitespace-normalised paragraph (split after . ! ? before a capital)."""
    sentences: list[str] = []
    start = 0
    for match in re.finditer(r"(?<=[.!?])\s+(?=[A-Z\"“(])", text):
        before = text[start:match.start()]
        if before.split()[-1] in _ABBREVIATIONS:
            continue
        sentences.append(before)
        start = match.end()
    sentences.append(text[start:])
    return sentences


def _paragraphs(text: str, start: int) -> Iterator[tuple[int, str]]:
    """(offset, raw paragraph) for every blank-line separated block starting at or after `start`."""
    for match in re.finditer(r"(?:[^\n]|\n(?![ \t]*\n))+", text):
        if match.start() >= start and match.group().strip():
            yield match.start(), match.group()


def _prose(raw: str) -> str | None:
    """The normalised paragraph if it is English prose, else None."""
    lines = raw.split("\n")
    if ">>>" in raw or "::=" in raw or any(_UNDERLINE.match(line) for line in lines):
        return None
    text = _normalise(raw)
    words = text.split()
    if len(words) < 8 or not text[0].isupper() or _code_share(words) > MAX_CODE_SHARE:
        return None
    return text


def heldout_passages(text: str, boundary: int) -> list[Passage]:
    """Prose passages starting at or after `boundary`, deduplicated, none occurring in `text[:boundary]`."""
    calibration = _normalise(text[:boundary])
    seen: set[str] = set()
    passages = []
    for offset, raw in _paragraphs(text, boundary):
        prose = _prose(raw)
        if prose is None or prose in seen or prose in calibration:
            continue
        seen.add(prose)
        passages.append(Passage(offset, tuple(split_sentences(prose))))
    return passages


def _context(sentences: Sequence[str]) -> str | None:
    """The nearest whole sentences of `sentences` fitting MAX_CONTEXT_WORDS, or None."""
    kept: list[str] = []
    words = 0
    for sentence in reversed(sentences):
        n = len(sentence.split())
        if words + n > MAX_CONTEXT_WORDS:
            break
        kept.insert(0, sentence)
        words += n
    return " ".join(kept) if words >= MIN_CONTEXT_WORDS else None


# --------------------------------------------------------------------------- tasks

def lastword_candidates(passages: Sequence[Passage], calibration: str) -> list[dict[str, Any]]:
    """Every (context, last word) pair: a sentence ending in an alphabetic word of 3+ letters."""
    out = []
    for p in passages:
        for i, sentence in enumerate(p.sentences):
            match = _LAST_WORD.match(sentence)
            if match is None or _code_share(sentence.split()) > MAX_CODE_SHARE:
                continue
            prefix = match["prefix"].split()
            if len(prefix) >= MAX_CONTEXT_WORDS:  # a long sentence: its last words only
                context: str | None = " ".join(prefix[-MAX_CONTEXT_WORDS:])
            else:  # the sentence's prefix, after as many whole earlier sentences as fit
                context = _context([*p.sentences[:i], " ".join(prefix)])
            if context is None or f"{context} {match['word']}" in calibration:
                continue
            out.append({"context": context, "target": match["word"], "offset": p.offset})
    return out


def _ending_ok(sentence: str) -> bool:
    words = sentence.split()
    return ENDING_WORDS[0] <= len(words) <= ENDING_WORDS[1] and sentence.endswith(".") and _code_share(words) <= MAX_CODE_SHARE


def cloze4_candidates(passages: Sequence[Passage], calibration: str) -> list[dict[str, Any]]:
    """Every (context, next sentence) pair inside a passage, before distractors are drawn."""
    out = []
    for p in passages:
        for i in range(1, len(p.sentences)):
            ending = p.sentences[i]
            if not _ending_ok(ending):
                continue
            context = _context(p.sentences[:i])
            if context is None or context in calibration or ending in calibration:
                continue
            out.append({"context": context, "ending": ending, "offset": p.offset})
    return out


def _draw_distractors(
    gold: dict[str, Any], pool: Sequence[dict[str, Any]], rng: random.Random
) -> list[str]:
    """Three endings of other passages, of similar length, distinct from the gold and each other."""
    n = len(gold["ending"].split())
    similar = sorted({
        c["ending"] for c in pool
        if c["offset"] != gold["offset"] and c["ending"] != gold["ending"]
        and n / DISTRACTOR_RATIO <= len(c["ending"].split()) <= n * DISTRACTOR_RATIO
    })
    if len(similar) < 3:
        raise ValueError(f"too few distractors of about {n} words for the ending {gold['ending']!r}")
    return rng.sample(similar, 3)


def build_examples(text: str, tokenizer: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The examples of both tasks and the manifest facts, from the corpus `text`."""
    boundary = heldout_boundary(text, tokenizer)
    calibration = _normalise(text[:boundary])
    passages = heldout_passages(text, boundary)
    rng = random.Random(SEED)

    candidates = {LASTWORD: lastword_candidates(passages, calibration), CLOZE4: cloze4_candidates(passages, calibration)}
    for name, want in ((LASTWORD, LASTWORD_EXAMPLES), (CLOZE4, CLOZE4_EXAMPLES)):
        if len(candidates[name]) < want:
            raise ValueError(f"{name}: only {len(candidates[name])} candidate examples in the held-out text, {want} wanted")
    lastword = rng.sample(candidates[LASTWORD], LASTWORD_EXAMPLES)
    cloze = candidates[CLOZE4]
    chosen = rng.sample(cloze, CLOZE4_EXAMPLES)

    cloze_examples = []
    for gold in chosen:
        endings = _draw_distractors(gold, cloze, rng)
        label = rng.randrange(4)
        endings.insert(label, gold["ending"])
        cloze_examples.append({"context": gold["context"], "endings": endings, "label": label, "offset": gold["offset"]})
    examples = {
        LASTWORD: [{"id": f"{LASTWORD}-{i:04d}", **e} for i, e in enumerate(lastword)],
        CLOZE4: [{"id": f"{CLOZE4}-{i:04d}", **e} for i, e in enumerate(cloze_examples)],
    }
    facts = {
        "boundary_char": boundary,
        "passages": len(passages),
        "candidates": {name: len(found) for name, found in candidates.items()},
    }
    return examples, facts


# --------------------------------------------------------------------------- files

_YAML_HEAD = "# Generated by `python -m harness.tasks.build` (ptq-harness offline task pack); do not edit.\n"
_YAML = {
    LASTWORD: """task: embedded_lastword
custom_dataset: !function pack_data.load_lastword
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}.0
""",
    CLOZE4: """task: embedded_cloze4
custom_dataset: !function pack_data.load_cloze4
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: label
doc_to_choice: endings
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}.0
""",
}


def _jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n" for row in rows)


def render_pack(text: str, tokenizer: Any, *, tokenizer_name: str) -> dict[str, str]:
    """File name -> content of the whole pack (YAMLs, JSON-lines data, manifest)."""
    examples, facts = build_examples(text, tokenizer)
    files = {f"{task}.yaml": _YAML_HEAD + _YAML[task].format(version=PACK_VERSION) for task in PACK_TASKS}
    for task in PACK_TASKS:
        files[data_path(task).name] = _jsonl(examples[task])
    manifest = {
        "pack_version": PACK_VERSION,
        "seed": SEED,
        "source": "embedded corpus (pydoc_data.topics of CPython "
                  f"{sys.version_info.major}.{sys.version_info.minor}), evaluation half",
        "corpus_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "corpus_chars": len(text),
        "tokenizer": tokenizer_name,
        **facts,
        "tasks": {
            task: {
                "examples": len(examples[task]),
                "sha256": hashlib.sha256(files[data_path(task).name].encode("utf-8")).hexdigest(),
            }
            for task in PACK_TASKS
        },
    }
    files[MANIFEST] = json.dumps(manifest, indent=2) + "\n"
    return files


def embedded_pack() -> dict[str, str]:
    """The pack built from the embedded corpus with the embedded model's tokenizer."""
    from transformers import AutoTokenizer

    from harness.data.sources import embedded_text
    from harness.models.embedded import ensure_embedded_cache

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_embedded_cache()))
    return render_pack(embedded_text(), tokenizer, tokenizer_name="smollm2-135m")


def write_pack(files: dict[str, str], out_dir: Path) -> list[Path]:
    from harness.store import atomic_write_text

    return [atomic_write_text(Path(out_dir) / name, content) for name, content in sorted(files.items())]


def stale_files(files: dict[str, str], out_dir: Path) -> list[str]:
    """Names of pack files that are missing from `out_dir` or differ from `files`."""
    stale = []
    for name, content in sorted(files.items()):
        path = Path(out_dir) / name
        if not path.is_file() or path.read_bytes() != content.encode("utf-8"):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.tasks.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACK_DIR, help="output folder (default: the shipped pack)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file would change")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = embedded_pack()
    if args.check:
        stale = stale_files(files, args.out)
        for name in stale:
            logger.info("differs: %s", args.out / name)
        logger.info("task pack %s", "is up to date" if not stale else f"is stale ({len(stale)} file(s))")
        return 1 if stale else 0
    for path in write_pack(files, args.out):
        logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
