"""Stand-ins: run a suite at small scale (`harness run SUITE --stand-in embedded`).

A stand-in is a YAML overlay applied to the suite file before it is validated. It replaces
the models, merges settings into the calibration, the evaluations the suite already has and
the method lines, and the result is an ordinary suite named `<suite>-<stand-in>` (so its
results go to their own folder). Every substituted value is listed, as `path: old -> new`,
in the suite's `stand_in` field, printed by the CLI and copied into every record.

Overlay keys (all optional):
    name, description     the stand-in's name (default: the file stem) and what it is for
    models                replaces the suite's model list
    device, dtype, seed   replace the suite's values
    calibration           merged into the suite's calibration
    evaluations           merged into each evaluation the suite has (lists are replaced;
                          evaluations the suite does not run are not added)
    method_params         {method name: params}: merged into the params of every line of that method
    finetune_e2e          merged into every line that has an end-to-end fine-tuning stage

`embedded` is built in (harness/stand_ins/embedded.yaml): SmolLM2-135M and its offline corpus
and task pack, with optimisation settings reduced as in the quickstart. Any other value is
the path of an overlay file.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import SuiteError

__all__ = ["BUILTIN_DIR", "StandIn", "apply_stand_in", "builtin_stand_ins", "load_stand_in"]

BUILTIN_DIR = Path(__file__).resolve().parent / "stand_ins"


class StandIn(BaseModel):
    """A stand-in overlay (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    models: list[Any] | None = Field(None, min_length=1)
    device: str | None = None
    dtype: str | None = None
    seed: int | None = None
    calibration: dict[str, Any] = Field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    finetune_e2e: dict[str, Any] = Field(default_factory=dict)


def builtin_stand_ins() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_stand_in(value: str) -> StandIn:
    """A built-in stand-in by name, or an overlay file by path."""
    path = BUILTIN_DIR / f"{value}.yaml" if value in builtin_stand_ins() else Path(value).expanduser()
    if not path.is_file():
        raise SuiteError(
            f"--stand-in {value!r}: neither a built-in stand-in ({', '.join(builtin_stand_ins())}) nor an "
            f"existing overlay file. See harness/stand_in.py for the overlay format."
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}).") from exc
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a stand-in must be a YAML mapping (see harness/stand_in.py).")
    raw.setdefault("name", path.stem)
    try:
        return StandIn.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise SuiteError(f"{path}: invalid stand-in — field `{loc}`: {msg}. See harness/stand_in.py.") from exc


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` merged in: nested mappings merged, everything else replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: value}


def _changes(before: Any, after: Any, prefix: str) -> list[str]:
    """`path: old -> new` for every leaf that differs (`(unset)` for a missing side)."""
    old, new = _leaves(before, prefix), _leaves(after, prefix)
    missing = "(unset)"
    return [f"{k}: {_show(old.get(k, missing))} -> {_show(new.get(k, missing))}"
            for k in dict.fromkeys([*old, *new]) if old.get(k, missing) != new.get(k, missing)]


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def apply_stand_in(raw: dict[str, Any], stand_in: StandIn) -> dict[str, Any]:
    """The raw suite mapping with the stand-in applied (the input is not modified); its
    `stand_in` field records the stand-in and every substitution."""
    out = copy.deepcopy(raw)
    changes: list[str] = []
    out["name"] = f"{raw.get('name', 'suite')}-{stand_in.name}"
    if raw.get("output_dir"):
        out["output_dir"] = f"{str(raw['output_dir']).rstrip('/')}-{stand_in.name}"
    for key in ("models", "device", "dtype", "seed"):
        value = getattr(stand_in, key)
        if value is not None:
            if raw.get(key) != value:
                changes.append(f"{key}: {_show(raw.get(key, '(unset)'))} -> {_show(value)}")
            out[key] = copy.deepcopy(value)
    if stand_in.calibration:
        out["calibration"] = _merge(raw.get("calibration") or {}, stand_in.calibration)
        changes += _changes(raw.get("calibration") or {}, out["calibration"], "calibration")
    evaluations = dict(out.get("evaluations") or {})
    for kind, overlay in stand_in.evaluations.items():
        if isinstance(evaluations.get(kind), dict):
            merged = _merge(evaluations[kind], overlay)
            changes += _changes(evaluations[kind], merged, f"evaluations.{kind}")
            evaluations[kind] = merged
    if "evaluations" in out or evaluations:
        out["evaluations"] = evaluations
    for i, line in enumerate(out.get("methods") or []):
        if not isinstance(line, dict):
            continue
        params = stand_in.method_params.get(str(line.get("name")))
        if params:
            merged = _merge(line.get("params") or {}, params)
            changes += _changes(line.get("params") or {}, merged, f"methods[{i}] ({line.get('label') or line.get('name')}).params")
            line["params"] = merged
        if stand_in.finetune_e2e and isinstance(line.get("finetune_e2e"), dict):
            merged = _merge(line["finetune_e2e"], stand_in.finetune_e2e)
            changes += _changes(line["finetune_e2e"], merged, f"methods[{i}] ({line.get('label') or line.get('name')}).finetune_e2e")
            line["finetune_e2e"] = merged
    out["description"] = f"{raw.get('description', '')} [stand-in '{stand_in.name}': {stand_in.description}]".strip()
    out["stand_in"] = {"name": stand_in.name, "description": stand_in.description, "suite": raw.get("name"),
                       "substitutions": changes}
    return out
