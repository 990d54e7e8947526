"""Evaluations as plugins: the registry, the suite's plugin blocks, cell keys, the order they run
in, an out-of-tree evaluation run from its entry point by `harness run`, and the contract's
checks (EvaluationConfig, the `name`, metric names, automatic plugins, JSON results, entry points
that take a built-in's name)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import EvaluationPluginError, SuiteError, UnknownEvaluationError
from harness.evaluations import (
    BUILTIN_EVALUATIONS, CELL_METRICS, EVALUATIONS, Evaluation, EvaluationConfig, EvaluationContext, NoSettings,
    evaluation_names, get_evaluation, planned, resolve_evaluations,
)
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


def _register(monkeypatch, name: str, cls: type) -> type:
    """`cls` registered under `name` in this process (restored after the test)."""
    evaluation_names()  # the built-ins and installed plugins first
    monkeypatch.setitem(EVALUATIONS._items, name, cls)
    return cls


def _tiny_cell(tiny_llama_dir: Path, method: str = "none", **blocks: dict) -> Cell:
    from harness.registry import method_config
    from harness.suite import ModelSpec

    params = method_config(method, 4 if method != "none" else None).model_dump(mode="json")
    return Cell(
        suite="t", model=ModelSpec(id=str(tiny_llama_dir), name="tiny"), method=method, method_label=method,
        budget=None, params=params, calibration=None, evaluations=EvaluationsSpec(perplexity=None, **blocks),
        seed=0, device="cpu", dtype="float32", save_model=False,
    )


def test_an_evaluation_may_not_replace_a_metric(tmp_path, tiny_llama_dir, monkeypatch):
    """A plugin registered under the name of a bits field fails the cell instead of overwriting it
    (a cell built in code; a suite naming it is refused when it loads, below)."""
    from harness.runner import run_cell

    _register(monkeypatch, "bits", type("Bits", (toy_evaluation.MeanLogitEvaluation,), {"name": "bits"}))
    record = run_cell(_tiny_cell(tiny_llama_dir, bits={}), ResultStore(tmp_path), progress=False)
    assert not record.ok and "would replace the metric" in record.error.message


def test_the_cell_metrics_are_the_runners():
    from harness import runner

    assert set(CELL_METRICS) == {*runner._BITS_FIELDS, "size_bytes"}


@pytest.mark.parametrize("registered", [False, True])
def test_a_suite_naming_a_metric_is_refused_when_it_loads(tmp_path, monkeypatch, registered):
    if registered:
        _register(monkeypatch, "bits", type("Bits", (toy_evaluation.MeanLogitEvaluation,), {"name": "bits"}))
    with pytest.raises(SuiteError) as exc:
        load_suite(_suite(tmp_path, "evaluations: {bits: {}}\n"))
    message = str(exc.value)
    for part in (str(tmp_path / "s.yaml"), "field `evaluations.bits`", "metric every cell records", "another name"):
        assert part in message, message
    assert "\n" not in message


class _Probe(Evaluation):
    """Automatic: runs for every quantized cell, records what it saw."""

    name = "auto_probe"
    automatic = True

    def run(self, context: EvaluationContext) -> dict:
        return {"quantized": context.quantized, "bits_seen": context.metrics["bits"]}


def test_an_automatic_plugin_runs_for_every_quantized_cell(tmp_path, tiny_llama_dir, monkeypatch, mean_logit):
    from harness.runner import run_cell

    _register(monkeypatch, "auto_probe", _Probe)
    raw = json.loads(_QUICKSTART_CRVQ_CELL)
    raw["evaluations"] = {**raw["evaluations"], "mean_logit": {}}
    cell = Cell.model_validate(raw)
    assert [n for n, _ in planned(cell, quantized=True)] == ["perplexity", "zero_shot", "agreement", "auto_probe", "mean_logit"]
    assert [n for n, _ in planned(cell, quantized=False)] == ["perplexity", "zero_shot", "mean_logit"]
    with pytest.raises(ValueError, match="'auto_probe' runs for every quantized cell by itself"):
        resolve_evaluations(EvaluationsSpec.model_validate({"auto_probe": {}}))
    store = ResultStore(tmp_path)
    quantized, reference = (run_cell(_tiny_cell(tiny_llama_dir, m), store, progress=False) for m in ("rtn", "none"))
    assert quantized.ok and reference.ok, (quantized.error, reference.error)
    assert quantized.dump()["metrics"]["auto_probe"] == {"quantized": True, "bits_seen": quantized.metrics.bits}
    assert "auto_probe" not in reference.dump()["metrics"]


def test_evaluation_config_is_strict_and_frozen():
    class Cfg(EvaluationConfig):
        windows: int = 2

    with pytest.raises(ValidationError, match="colour"):
        Cfg.model_validate({"windows": 3, "colour": "red"})
    with pytest.raises(ValidationError, match="frozen"):
        Cfg().windows = 4
    for name in BUILTIN_EVALUATIONS:  # the built-ins' Configs derive from it
        assert issubclass(get_evaluation(name).Config, EvaluationConfig), name
    assert issubclass(NoSettings, EvaluationConfig) and issubclass(toy_evaluation.MeanLogitConfig, EvaluationConfig)


class _LooseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _AllowingConfig(EvaluationConfig):
    model_config = ConfigDict(extra="allow")


@pytest.mark.parametrize("config", [_LooseConfig, _AllowingConfig])
def test_a_plugin_config_must_derive_from_evaluation_config(tmp_path, monkeypatch, config):
    _register(monkeypatch, "loose", type("Loose", (Evaluation,), {"name": "loose", "Config": config}))
    with pytest.raises(EvaluationPluginError) as exc:
        get_evaluation("loose")
    for part in ("evaluation 'loose'", config.__qualname__, "EvaluationConfig", "NoSettings"):
        assert part in str(exc.value), exc.value
    with pytest.raises(SuiteError, match=r"field `evaluations.loose`: evaluation 'loose' .*EvaluationConfig"):
        load_suite(_suite(tmp_path, "evaluations: {loose: {}}\n"))


def test_a_plugin_name_must_be_its_registry_name(monkeypatch):
    _register(monkeypatch, "mean_logit2", toy_evaluation.MeanLogitEvaluation)
    with pytest.raises(EvaluationPluginError, match=r"registered as 'mean_logit2' but its class attribute `name` is 'mean_logit'"):
        get_evaluation("mean_logit2")


class _Opaque(Evaluation):
    name = "opaque"

    def run(self, context: EvaluationContext) -> dict:
        return {"value": object()}


class _Tensor(Evaluation):
    name = "tensor"

    def run(self, context: EvaluationContext) -> dict:
        return {"logits": torch.zeros(3)}


@pytest.mark.parametrize("cls", [_Opaque, _Tensor])
def test_a_result_that_is_not_json_fails_the_cell(tmp_path, tiny_llama_dir, monkeypatch, cls):
    from harness.runner import run_cell

    _register(monkeypatch, cls.name, cls)
    store = ResultStore(tmp_path)
    cell = _tiny_cell(tiny_llama_dir, **{cls.name: {}})
    record = run_cell(cell, store, progress=False)  # returns (the worker does not die)
    assert not record.ok and f"evaluation '{cls.name}' returned a result that cannot be written as JSON" in record.error.message
    assert store.get(cell.key).status == "failed"


def _fake_entry_points(monkeypatch, name: str, value: str) -> None:
    from importlib.metadata import EntryPoint

    def entry_points(group: str) -> list[EntryPoint]:
        return [EntryPoint(name=name, value=value, group=group)]

    monkeypatch.setattr("harness.registry.entry_points", entry_points)


def test_an_entry_point_may_not_replace_a_builtin_evaluation(monkeypatch):
    _fake_entry_points(monkeypatch, "perplexity", "toy_harness_evaluation:MeanLogitEvaluation")
    monkeypatch.setattr(EVALUATIONS, "_items", {})
    monkeypatch.setattr(EVALUATIONS, "_discovered", False)
    for _ in range(2):  # not only the first lookup
        with pytest.raises(EvaluationPluginError, match=r"'perplexity = toy_harness_evaluation:MeanLogitEvaluation'.*"
                           r"built-in evaluation 'perplexity'.*Rename the entry point"):
            get_evaluation("mean_logit")
    _fake_entry_points(monkeypatch, "perplexity", BUILTIN_EVALUATIONS["perplexity"])  # the harness's own: fine
    assert get_evaluation("perplexity").__name__ == "PerplexityEvaluation"


def test_an_entry_point_named_like_a_builtin_method_replaces_it_with_a_warning(monkeypatch, caplog):
    from harness.registry import BUILTIN_METHODS, Registry

    _fake_entry_points(monkeypatch, "rtn", "tests.fixtures.toy_plugin:ToyQuantizer")
    registry = Registry("method", builtins=BUILTIN_METHODS)
    with caplog.at_level("WARNING", logger="harness.registry"):
        assert registry.get("rtn").__name__ == "ToyQuantizer"
    assert "has the name of the built-in method 'rtn'" in caplog.text
