"""Evaluations as plugins: the registry, the suite's plugin blocks, cell keys, the order they run
in, and an out-of-tree evaluation run from its entry point by `harness run`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.errors import SuiteError, UnknownEvaluationError
from harness.evaluations import BUILTIN_EVALUATIONS, EVALUATIONS, evaluation_names, get_evaluation, planned, resolve_evaluations
from harness.identity import IdentityScope, cell_identity
from harness.store import ResultStore
from harness.suite import Cell, EvaluationsSpec, load_suite, resolve_cells
from tests.fixtures import toy_evaluation, toy_plugin

#: The quickstart's crvq b1 cell as its executor stored it (results/quickstart/cells/14c9ff78f0ab1e70.json).
_QUICKSTART_CRVQ_CELL = (
    '{"suite":"quickstart","model":{"id":"smollm2-135m","name":null,"revision":null,"seqlen":null},"metho'
    'd":"crvq","method_label":"crvq","budget":1,"params":{"variant":"published","nbits":8,"in_group_size"'
    ':8,"num_extended_codebooks":3,"extended_nbits":8,"critical_ratio":0.02,"importance":"wa","reorder":"'
    'sorted","importance_kmeans_iters":5,"max_epochs":6,"steps_per_epoch":10,"lr":0.0001,"betas":[0.0,0.9'
    '5],"relative_mse_tolerance":0.01,"beam_size":1,"kmeans_iters":20,"kmeans_init":"random","kmeans_metr'
    'ic":"euclidean","out_group_size":1,"scale_nbits":0,"finetune":true,"finetune_lr":0.0003,"finetune_be'
    'tas":[0.9,0.999],"finetune_max_epochs":2,"finetune_batch_size":8,"finetune_max_sequences":32,"finetu'
    'ne_val_fraction":0.1,"finetune_patience":3,"finetune_keep_best":true},"calibration":{"source":"embed'
    'ded","num_sequences":64,"seqlen":512,"seed":0,"dtype":"bfloat16"},"evaluations":{"perplexity":{"data'
    'sets":["embedded"],"seqlen":512,"max_windows":40,"batch_size":1,"text_bytes":null},"throughput":null'
    ',"zero_shot":{"tasks":["embedded_lastword","embedded_cloze4"],"batch_size":16,"limit":null,"num_fews'
    'hot":0}},"seed":0,"device":"auto","dtype":"float32","save_model":true,"finetune_e2e":null,"stand_in"'
    ':null,"base_seed":null}'
)
QUICKSTART = Path(__file__).resolve().parents[2] / "results" / "quickstart"


@pytest.fixture
def mean_logit(monkeypatch):
    """`mean_logit` registered in this process (as its entry point would register it)."""
    evaluation_names()  # the built-ins and installed plugins first
    monkeypatch.setitem(EVALUATIONS._items, "mean_logit", toy_evaluation.MeanLogitEvaluation)
    return toy_evaluation.MeanLogitEvaluation


def _suite(tmp_path: Path, evaluations: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: t\nmodels: [smollm2-135m]\nmethods: [{{name: none}}, {{name: rtn, budgets: [4]}}]\n{evaluations}")
    return path


def test_builtins_are_registered_and_unknown_names_suggest_close_ones():
    assert {"perplexity", "zero_shot", "agreement", "throughput"} <= set(evaluation_names())
    assert get_evaluation("agreement").automatic and not get_evaluation("perplexity").automatic
    with pytest.raises(UnknownEvaluationError, match=r"unknown evaluation 'zero_shoot'.*'zero_shot'"):
        get_evaluation("zero_shoot")


def test_pyproject_declares_the_builtins_in_their_group():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["harness.evaluations"] == BUILTIN_EVALUATIONS


def test_plugin_block_is_validated_with_defaults_written_into_the_cell(tmp_path, mean_logit):
    suite = load_suite(_suite(tmp_path, "evaluations: {mean_logit: {windows: 3}}\n"))
    cells = resolve_cells(suite)
    assert [c.evaluations.plugins for c in cells] == [{"mean_logit": {"windows": 3, "seqlen": 16}}] * 2
    plain = resolve_cells(load_suite(_suite(tmp_path, "")))
    assert {c.key for c in cells}.isdisjoint(c.key for c in plain)  # the block is part of the result
    # ... but not of the quantized model: the zero-shot cache is shared
    model_ids = [cell_identity(c.model_dump(mode="json"), IdentityScope.MODEL) for c in (*cells, *plain)]
    assert model_ids[0] == model_ids[2] and model_ids[1] == model_ids[3]
    # a stored cell (JSON) reads back to the same key
    assert [Cell.model_validate(c.model_dump(mode="json")).key for c in cells] == [c.key for c in cells]


def test_bad_plugin_block_is_a_one_paragraph_error(tmp_path, mean_logit):
    with pytest.raises(SuiteError) as exc:
        load_suite(_suite(tmp_path, "evaluations: {mean_logit: {windows: 0, colour: red}}\n"))
    message = str(exc.value)
    for part in ("field `evaluations.mean_logit`", "`windows`", "`colour`", "MeanLogitConfig"):
        assert part in message, message
    assert "\n" not in message
    with pytest.raises(SuiteError, match=r"`evaluations.mean_logitt`: unknown evaluation 'mean_logitt'\. Did you mean 'mean_logit'"):
        load_suite(_suite(tmp_path, "evaluations: {mean_logitt: {}}\n"))


def test_null_plugin_block_is_dropped():
    spec = EvaluationsSpec.model_validate({"mean_logit": None})
    assert spec.plugins == {} and spec == EvaluationsSpec()
    assert resolve_evaluations(spec) is spec


def _quickstart_cells() -> list[dict]:
    inline = json.loads(_QUICKSTART_CRVQ_CELL)
    stored = [json.loads(p.read_text()) for p in sorted((QUICKSTART / "cells").glob("*.json"))]
    return [inline, *stored]


def test_cells_without_plugin_blocks_keep_their_json_and_keys(tmp_path):
    """The quickstart's stored cells rebuild to the same JSON, key and zero-shot cache folder."""
    cells = _quickstart_cells()
    for raw in cells:
        cell = Cell.model_validate(raw)
        assert cell.model_dump(mode="json") == raw
        assert json.dumps(cell.model_dump(mode="json")) == json.dumps(raw)  # same field order
    first = Cell.model_validate(cells[0])
    assert first.key == "14c9ff78f0ab1e70"
    from harness.evaluations.zero_shot import zeroshot_cache_dir

    assert zeroshot_cache_dir(ResultStore(tmp_path), first) == tmp_path / "zeroshot" / "cfb17a1cc2350092"
    for raw in cells[1:]:  # the real quickstart results, when this checkout has them
        cell = Cell.model_validate(raw)
        assert (QUICKSTART / "records" / f"{cell.key}.json").is_file()
        assert zeroshot_cache_dir(ResultStore(QUICKSTART), cell).is_dir()


def test_planned_order_and_automatic_evaluations(mean_logit):
    raw = json.loads(_QUICKSTART_CRVQ_CELL)
    raw["evaluations"] = {**raw["evaluations"], "throughput": {}, "mean_logit": {}}
    cell = Cell.model_validate(raw)
    names = [name for name, _ in planned(cell, quantized=True)]
    assert names == ["perplexity", "zero_shot", "agreement", "throughput", "mean_logit"]
    assert [name for name, _ in planned(cell, quantized=False)] == ["perplexity", "zero_shot", "throughput", "mean_logit"]
    name, evaluation = planned(cell, quantized=True)[-1]
    assert isinstance(evaluation, toy_evaluation.MeanLogitEvaluation) and evaluation.config == toy_evaluation.MeanLogitConfig()


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    toy_plugin.install(site)
    toy_evaluation.install(site)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env["HARNESS_NO_PROGRESS"] = "1"
    return env


def test_out_of_tree_evaluation_runs_from_its_entry_point(tmp_path, tiny_llama_dir, eval_text_file, plugin_env):
    suite = tmp_path / "plugin_eval.yaml"
    suite.write_text(
        f"""
name: plugin-eval
output_dir: {tmp_path / 'results'}
models: [{{id: {tiny_llama_dir}, name: tiny}}]
methods:
  - name: none
  - name: toy
    budgets: [1]
evaluations:
  perplexity: {{datasets: [{eval_text_file}], seqlen: 32, max_windows: 2}}
  mean_logit: {{windows: 2}}
report: {{tables: [csv], plots: [], html: false}}
"""
    )
    listed = subprocess.run([sys.executable, "-m", "harness", "list"], env=plugin_env, capture_output=True, text=True)
    assert "mean_logit (toy_harness_evaluation.MeanLogitEvaluation): settings: windows, seqlen" in listed.stdout
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite)], env=plugin_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["label"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "results" / "records").glob("*.json"))}
    assert sorted(records) == ["tiny/none", "tiny/toy/b1"] and all(r["status"] == "ok" for r in records.values())
    for record in records.values():
        assert record["cell"]["evaluations"]["mean_logit"] == {"windows": 2, "seqlen": 16}
        result = record["metrics"]["mean_logit"]
        assert result["tokens"] == 32 and result["bits_seen"] == record["metrics"]["bits"]
        assert list(record["metrics"])[-1] == "mean_logit"  # after the built-ins
    ref, toy = records["tiny/none"]["metrics"], records["tiny/toy/b1"]["metrics"]
    assert "agreement" in toy and "agreement" not in ref
    assert toy["mean_logit"]["mean_abs_logit"] != ref["mean_logit"]["mean_abs_logit"]  # quantization moved it

    # the reference cell's value is the evaluation's own, recomputed here on the unquantized model
    from harness.evaluations import EvaluationContext
    from harness.models import load_model

    loaded = load_model(str(tiny_llama_dir), dtype=torch.float32, device=torch.device("cpu"), progress=False)
    context = EvaluationContext(
        cell=Cell.model_validate(records["tiny/none"]["cell"]), model=loaded.model,
        tokenizer=loaded.tokenizer, adapter=loaded.adapter, store=ResultStore(tmp_path), device=torch.device("cpu"),
        dtype=torch.float32, quantized=False, default_seqlen=32, metrics={"bits": 16}, progress=False,
    )
    evaluation = toy_evaluation.MeanLogitEvaluation(toy_evaluation.MeanLogitConfig(windows=2))
    direct = evaluation.run(context)
    assert direct == {**ref["mean_logit"], "mean_abs_logit": pytest.approx(ref["mean_logit"]["mean_abs_logit"], rel=1e-6),
                      "rms_logit": pytest.approx(ref["mean_logit"]["rms_logit"], rel=1e-6)}


def test_an_evaluation_may_not_replace_a_metric(tmp_path, tiny_llama_dir, monkeypatch):
    """A plugin registered under the name of a bits field fails the cell instead of overwriting it."""
    from harness.runner import run_cell
    from harness.suite import ModelSpec

    evaluation_names()
    monkeypatch.setitem(EVALUATIONS._items, "bits", toy_evaluation.MeanLogitEvaluation)
    cell = Cell(
        suite="t", model=ModelSpec(id=str(tiny_llama_dir), name="tiny"), method="none", method_label="none",
        budget=None, params={}, calibration=None, evaluations=EvaluationsSpec(perplexity=None, bits={}),
        seed=0, device="cpu", dtype="float32", save_model=False,
    )
    record = run_cell(cell, ResultStore(tmp_path), progress=False)
    assert not record.ok and "would replace the metric" in record.error.message
