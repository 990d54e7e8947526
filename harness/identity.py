"""The identity of a cell: every hash of a resolved cell config, computed in one place.

A cell (``harness.suite.Cell``, or the ``cell`` dict a record stores) is identified at three
scopes, each the short SHA-256 of a canonical JSON payload of the cell's config:

- ``RESULT``: everything that determines the cell's results; the record key (``Cell.key``)
  and the folder names under ``records/``, ``models/``, ``checkpoints/``.
- ``MODEL``: the quantized model alone (the cell without its evaluations); the zero-shot
  cache folder ``zeroshot/<model hash>/``, so a changed evaluation list reuses tasks.
- ``REPEAT_GROUP``: the configuration without its seeds (the cell's and the calibration
  sample's); records with equal groups are repeats of one configuration.

Fields that only describe a cell (``suite``, ``save_model``, ``stand_in``, ``base_seed``) are
in no scope. Fields added to ``Cell`` after results existed are left out of a payload while
they hold their default (None), so the keys of existing results do not change.

>>> cell_identity({"model": {"id": "m"}, "seed": 0, "evaluations": {}}, IdentityScope.MODEL)
'e5028733fceace33'
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from enum import Enum
from typing import Any

__all__ = ["KEY_VERSION", "IdentityScope", "canonical_json", "cell_identity", "identity_payload"]

#: Hashed into every ``RESULT`` identity (as ``record_version``). Bump it when the meaning of a
#: record changes, so that records written before are not reused as finished cells.
KEY_VERSION = 1

#: Cell fields that describe a cell but do not change what it computes.
_DESCRIPTIVE = frozenset({"suite", "save_model", "stand_in", "base_seed"})
#: Length of an identity: 16 hex digits (64 bits) of the SHA-256.
_HEX_DIGITS = 16


class IdentityScope(str, Enum):
    """Which parts of a cell an identity covers (see the module docstring)."""

    RESULT = "result"
    MODEL = "model"
    REPEAT_GROUP = "repeat_group"


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def identity_payload(cell_json: Mapping[str, Any], scope: IdentityScope) -> dict[str, Any]:
    """The JSON payload that ``scope`` hashes, from a cell's JSON dict
    (``Cell.model_dump(mode="json")`` or a record's ``cell``); ``cell_json`` is not modified."""
    payload = {k: copy.deepcopy(v) for k, v in cell_json.items() if k not in _DESCRIPTIVE}
    if scope is IdentityScope.RESULT:
        if payload.get("finetune_e2e") is None:  # cells from before `finetune_e2e` keep their keys
            payload.pop("finetune_e2e", None)
        evaluations = payload.get("evaluations")
        if isinstance(evaluations, dict):
            for name in ("throughput", "zero_shot"):  # likewise cells without these evaluations
                if evaluations.get(name) is None:
                    evaluations.pop(name, None)
            perplexity = evaluations.get("perplexity")
            if isinstance(perplexity, dict) and perplexity.get("text_bytes") is None:
                perplexity.pop("text_bytes", None)
        payload["record_version"] = KEY_VERSION
        return payload
    if scope is IdentityScope.MODEL:
        payload.pop("evaluations", None)
        return {k: v for k, v in payload.items() if v is not None}
    if scope is IdentityScope.REPEAT_GROUP:
        payload.pop("seed", None)
        if isinstance(payload.get("calibration"), dict):
            payload["calibration"].pop("seed", None)
        return _drop_none(payload)
    raise ValueError(f"unknown identity scope {scope!r}: use one of {[s.name for s in IdentityScope]}")


def canonical_json(payload: Any) -> str:
    """Key-sorted, compact JSON: the text an identity hashes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def cell_identity(cell_json: Mapping[str, Any], scope: IdentityScope = IdentityScope.RESULT) -> str:
    """16 hex digits identifying ``cell_json`` at ``scope`` (the SHA-256 of its canonical payload)."""
    blob = canonical_json(identity_payload(cell_json, IdentityScope(scope)))
    return hashlib.sha256(blob.encode()).hexdigest()[:_HEX_DIGITS]
