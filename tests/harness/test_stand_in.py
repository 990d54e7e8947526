"""Stand-in overlays (`--stand-in`): what they substitute, what they leave alone, their errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.errors import SuiteError
from harness.stand_in import StandIn, apply_stand_in, builtin_stand_ins, load_stand_in
from harness.suite import load_suite, resolve_cells

SUITE = """
name: big
output_dir: out/big
models: [{id: meta-llama/Llama-2-7b-hf, name: llama2-7b}]
calibration: {source: redpajama, num_sequences: 2048, seqlen: 4096}
methods:
  - {name: rtn, budgets: [2]}
  - name: aqlm
    budgets: [1]
    params: &vq {max_epochs: 50, finetune: true}
    finetune_e2e: &e2e {epochs: 2, max_sequences: 1024}
  - {name: crvq, budgets: [1], params: *vq, finetune_e2e: *e2e}
evaluations:
  perplexity: {datasets: [wikitext2, c4], seqlen: 4096}
"""


def test_overlay_substitutes_and_records_every_change():
    raw = yaml.safe_load(SUITE)
    overlay = StandIn(name="small", description="tiny", models=["smollm2-135m"], device="cpu",
                      calibration={"source": "embedded", "num_sequences": 8},
                      evaluations={"perplexity": {"datasets": ["embedded"]}, "zero_shot": {"tasks": ["x"]}},
                      method_params={"aqlm": {"max_epochs": 2}}, finetune_e2e={"max_sequences": 8})
    out = apply_stand_in(raw, overlay)
    assert yaml.safe_load(SUITE) == raw  # the input is untouched
    assert out["name"] == "big-small" and out["output_dir"] == "out/big-small"
    assert out["models"] == ["smollm2-135m"] and out["device"] == "cpu"
    assert out["calibration"] == {"source": "embedded", "num_sequences": 8, "seqlen": 4096}
    assert out["evaluations"] == {"perplexity": {"datasets": ["embedded"], "seqlen": 4096}}  # zero_shot not added
    aqlm, crvq = out["methods"][1], out["methods"][2]
    assert aqlm["params"] == {"max_epochs": 2, "finetune": True}
    assert crvq["params"] == {"max_epochs": 50, "finetune": True}  # the YAML anchor's other user is untouched
    assert aqlm["finetune_e2e"] == crvq["finetune_e2e"] == {"epochs": 2, "max_sequences": 8}
    assert "finetune_e2e" not in out["methods"][0]
    changes = out["stand_in"]["substitutions"]
    assert "calibration.num_sequences: 2048 -> 8" in changes
    assert "evaluations.perplexity.datasets: [wikitext2, c4] -> [embedded]" in changes
    assert "methods[1] (aqlm).params.max_epochs: 50 -> 2" in changes
    assert "methods[2] (crvq).finetune_e2e.max_sequences: 1024 -> 8" in changes
    assert not any("methods[2] (crvq).params" in c for c in changes)
    assert out["stand_in"]["suite"] == "big"


def test_builtin_embedded_on_a_suite_file(tmp_path: Path):
    assert "embedded" in builtin_stand_ins()
    path = tmp_path / "big.yaml"
    path.write_text(SUITE)
    suite = load_suite(path, stand_in="embedded")
    cells = resolve_cells(suite, path)
    assert suite.name == "big-embedded" and {c.model.id for c in cells} == {"smollm2-135m"}
    assert all(c.stand_in and c.stand_in["name"] == "embedded" for c in cells)
    aqlm = next(c for c in cells if c.method == "aqlm")
    crvq = next(c for c in cells if c.method == "crvq")
    assert aqlm.calibration.source == "embedded" and aqlm.calibration.num_sequences == 32
    assert aqlm.params["max_epochs"] == 6 and crvq.params["importance_kmeans_iters"] == 5
    assert aqlm.finetune_e2e == crvq.finetune_e2e and aqlm.finetune_e2e.max_sequences == 32
    assert suite.evaluations.perplexity.datasets == ["embedded"]
    # the stand-in's description of itself does not change a cell's key; the settings do
    plain = resolve_cells(load_suite(path), path)
    assert {c.key for c in plain}.isdisjoint(c.key for c in cells)


def test_errors_name_the_file_and_field(tmp_path: Path):
    with pytest.raises(SuiteError, match="neither a built-in stand-in .*embedded"):
        load_stand_in("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("modles: [x]\n")
    with pytest.raises(SuiteError, match=r"bad.yaml: invalid stand-in — field `modles`: unknown key"):
        load_stand_in(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(SuiteError, match="must be a YAML mapping"):
        load_stand_in(str(bad))
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    overlay = tmp_path / "o.yaml"
    overlay.write_text("method_params: {aqlm: {max_epochs: -1}}\n")
    with pytest.raises(SuiteError, match=r"s.yaml.*methods\[1\].*max_epochs"):
        load_suite(suite, stand_in=str(overlay))
