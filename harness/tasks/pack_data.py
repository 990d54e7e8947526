"""Dataset loaders of the offline task pack, referenced by its YAMLs (`custom_dataset`).

lm-eval imports this file by path from the YAML's folder, so it stays standalone (no
`harness` imports). Each loader reads the JSON-lines file next to it into memory: no
network, no `datasets` cache writes, the same result from any working directory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _load(task: str) -> Any:
    import datasets

    path = _HERE / f"{task}.jsonl"
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_lastword(**_metadata: Any) -> Any:
    """`embedded_lastword` as a DatasetDict with one `test` split (id, context, target, offset)."""
    return _load("embedded_lastword")


def load_cloze4(**_metadata: Any) -> Any:
    """`embedded_cloze4` as a DatasetDict with one `test` split (id, context, endings, label, offset)."""
    return _load("embedded_cloze4")
