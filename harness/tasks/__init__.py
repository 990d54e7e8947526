"""The offline zero-shot task pack: lm-eval task YAMLs and their local data files.

Built deterministically from the held-out (evaluation) half of the embedded corpus by
`python -m harness.tasks.build`, and shipped with the project, so that zero-shot accuracy
needs no network:

- `embedded_lastword`: LAMBADA-style last-word prediction (context -> the sentence's last
  word; `acc` is lm-eval's greedy match of the whole word).
- `embedded_cloze4`: HellaSwag-style 4-way continuation (context -> the next sentence among
  three distractor sentences from other held-out passages; `acc` and `acc_norm`).

Pass `PACK_DIR` to lm-eval as an include path: `TaskManager(include_path=PACK_DIR)`, or
`lm_eval --include_path <PACK_DIR> --tasks embedded_cloze4` on the command line.
"""
from __future__ import annotations

from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent
LASTWORD = "embedded_lastword"
CLOZE4 = "embedded_cloze4"
#: Task names of the pack, in the order tables show them.
PACK_TASKS = (LASTWORD, CLOZE4)
#: lm-eval's tasks of the protocol, the default of paper suites (they need the hub or a filled cache).
PAPER_TASKS = ("winogrande", "piqa", "hellaswag", "arc_easy", "arc_challenge", "boolq")
MANIFEST = "manifest.json"


def data_path(task: str, directory: Path = PACK_DIR) -> Path:
    """The JSON-lines data file of a pack task."""
    return Path(directory) / f"{task}.jsonl"


__all__ = ["CLOZE4", "LASTWORD", "MANIFEST", "PACK_DIR", "PACK_TASKS", "PAPER_TASKS", "data_path"]
