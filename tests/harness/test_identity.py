"""Cell identity: each scope gives exactly the hash the code before `harness.identity` gave, so
the keys of existing results, the zero-shot cache folders and the repeat groups are unchanged."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from harness.identity import IdentityScope, cell_identity, identity_payload
from harness.suite import Cell, load_suite, resolve_cells
from tests.fixtures.report_snapshot import SNAPSHOT_RECORDS

ROOT = Path(__file__).resolve().parents[2]
SUITES = ["quickstart.yaml", "quickstart_repeats.yaml", "families.yaml", "sub2bit.yaml", "paper/main_table.yaml"]


# The implementations these scopes replaced, frozen here as the reference (pre-P13 code).
def _legacy_key(cell: Cell) -> str:
    payload = cell.model_dump(mode="json", exclude={"suite", "save_model", "stand_in", "base_seed"})
    if payload.get("finetune_e2e") is None:
        payload.pop("finetune_e2e", None)
    for evaluation in ("throughput", "zero_shot"):
        if payload["evaluations"].get(evaluation) is None:
            payload["evaluations"].pop(evaluation, None)
    perplexity = payload["evaluations"].get("perplexity")
    if perplexity is not None and perplexity.get("text_bytes") is None:
        perplexity.pop("text_bytes", None)
    payload["record_version"] = 1
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _legacy_model_key(cell: Cell) -> str:
    payload = cell.model_dump(mode="json", exclude={"suite", "save_model", "stand_in", "evaluations", "base_seed"})
    payload = {k: v for k, v in payload.items() if v is not None}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _legacy_repeat_group(cell: dict[str, Any]) -> str:
    def drop_none(value: Any) -> Any:
        return {k: drop_none(v) for k, v in value.items() if v is not None} if isinstance(value, dict) else value

    config = {k: v for k, v in cell.items() if k not in {"suite", "save_model", "stand_in", "base_seed", "seed"}}
    if isinstance(config.get("calibration"), dict):
        config["calibration"] = {k: v for k, v in config["calibration"].items() if k != "seed"}
    return json.dumps(drop_none(config), sort_keys=True, separators=(",", ":"))


def _variants(cell: Cell) -> list[Cell]:
    """`cell` plus copies with the optional parts set (fine-tuning, throughput, text bytes, stand-in)."""
    data = cell.model_dump(mode="json")
    ppl = data["evaluations"]["perplexity"]
    out = [cell, Cell.model_validate({**data, "stand_in": {"name": "x"}, "base_seed": 0, "save_model": not data["save_model"]})]
    if ppl is not None:
        out.append(Cell.model_validate({**data, "evaluations": {**data["evaluations"], "perplexity": {**ppl, "text_bytes": 4096, "max_windows": None}}}))
    out.append(Cell.model_validate({**data, "evaluations": {**data["evaluations"], "throughput": {}}}))
    out.append(Cell.model_validate({**data, "finetune_e2e": {}}))
    return out


@pytest.fixture(scope="module")
def cells() -> list[Cell]:
    found = []
    for name in SUITES:
        path = ROOT / "suites" / name
        found += resolve_cells(load_suite(path), path)
    return [v for c in found for v in _variants(c)]


def test_every_scope_matches_the_code_it_replaced(cells):
    assert len(cells) > 100
    for cell in cells:
        data = cell.model_dump(mode="json")
        assert cell.key == cell_identity(data, IdentityScope.RESULT) == _legacy_key(cell)
        assert cell_identity(data, IdentityScope.MODEL) == _legacy_model_key(cell)
        group = _legacy_repeat_group(data)
        assert cell_identity(data, IdentityScope.REPEAT_GROUP) == hashlib.sha256(group.encode()).hexdigest()[:16]
        assert json.loads(group) == identity_payload(data, IdentityScope.REPEAT_GROUP)


def test_scopes_separate_what_they_should(cells):
    base = next(c for c in cells if c.calibration is not None and c.evaluations.zero_shot is not None)
    data = base.model_dump(mode="json")
    reseeded = {**data, "seed": data["seed"] + 1, "calibration": {**data["calibration"], "seed": 7}}
    fewer_tasks = {**data, "evaluations": {**data["evaluations"], "zero_shot": None}}
    described = {**data, "suite": "other", "save_model": not data["save_model"], "base_seed": 3}
    key = {name: {s: cell_identity(d, s) for s in IdentityScope} for name, d in
           [("base", data), ("reseeded", reseeded), ("fewer_tasks", fewer_tasks), ("described", described)]}
    assert key["described"] == key["base"]  # descriptive fields are in no scope
    assert key["reseeded"][IdentityScope.REPEAT_GROUP] == key["base"][IdentityScope.REPEAT_GROUP]
    assert key["reseeded"][IdentityScope.RESULT] != key["base"][IdentityScope.RESULT]
    assert key["reseeded"][IdentityScope.MODEL] != key["base"][IdentityScope.MODEL]
    assert key["fewer_tasks"][IdentityScope.MODEL] == key["base"][IdentityScope.MODEL]  # the zero-shot cache is reused
    assert key["fewer_tasks"][IdentityScope.RESULT] != key["base"][IdentityScope.RESULT]
    assert data == base.model_dump(mode="json")  # the input is not modified


# The two quickstart cells whose records results/quickstart holds (cell configs as stored).
_PARAMS_COMMON = {
    "num_codebooks": 1, "nbits_per_codebook": 8, "in_group_size": 8, "out_group_size": 1, "scale_nbits": 0,
    "max_epochs": 6, "steps_per_epoch": 10, "lr": 0.0001, "betas": [0.0, 0.95], "relative_mse_tolerance": 0.01,
    "beam_size": 1, "kmeans_iters": 20, "kmeans_init": "random", "kmeans_metric": "euclidean", "finetune": True,
    "finetune_lr": 0.0003, "finetune_betas": [0.9, 0.999], "finetune_max_epochs": 2, "finetune_batch_size": 8,
    "finetune_max_sequences": 32, "finetune_val_fraction": 0.1, "finetune_patience": 3, "finetune_keep_best": True,
}


def _quickstart_cell(method: str) -> dict[str, Any]:
    return {
        "suite": "quickstart", "model": {"id": "smollm2-135m", "name": None, "revision": None, "seqlen": None},
        "method": method, "method_label": method, "budget": 1, "params": {},
        "calibration": {"source": "embedded", "num_sequences": 64, "seqlen": 512, "seed": 0, "dtype": "bfloat16"},
        "evaluations": {
            "perplexity": {"datasets": ["embedded"], "seqlen": 512, "max_windows": 40, "batch_size": 1, "text_bytes": None},
            "throughput": None,
            "zero_shot": {"tasks": ["embedded_lastword", "embedded_cloze4"], "batch_size": 16, "limit": None, "num_fewshot": 0},
        },
        "seed": 0, "device": "auto", "dtype": "float32", "save_model": True, "finetune_e2e": None, "stand_in": None,
        "base_seed": None,
    }


def test_quickstart_record_keys_are_pinned():
    aqlm = _quickstart_cell("aqlm")
    aqlm["params"] = {"variant": "published", **_PARAMS_COMMON}
    assert Cell.model_validate(aqlm).key == "62140dc2e7090bb2"
    crvq = _quickstart_cell("crvq")
    crvq["params"] = {
        "variant": "published", "nbits": 8, "in_group_size": 8, "num_extended_codebooks": 3, "extended_nbits": 8,
        "critical_ratio": 0.02, "importance": "wa", "reorder": "sorted", "importance_kmeans_iters": 5,
        **{k: v for k, v in _PARAMS_COMMON.items() if k not in ("num_codebooks", "nbits_per_codebook")},
    }
    assert Cell.model_validate(crvq).key == "14c9ff78f0ab1e70"
    stored = ROOT / "results" / "quickstart" / "records"  # where the results exist
    paths = sorted(SNAPSHOT_RECORDS.glob("*.json")) + sorted(stored.glob("*.json"))
    assert len(paths) >= 5
    for path in paths:  # every stored cell keeps its key
        record = json.loads(path.read_text())
        assert Cell.model_validate(record["cell"]).key == record["key"] == path.stem
        assert cell_identity(record["cell"]) == record["key"]
