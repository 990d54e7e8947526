"""The cell record: loading (with the version-0 migration), dumping, and the one reader API."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest

from harness.metrics.bits import BitsSummary
from harness.metrics.perplexity import PerplexityResult
from harness.metrics.zeroshot import TaskResult, ZeroShotResult
from harness.record import (
    DEFAULT_SEED, RECORD_VERSION, CellRecord, Metrics, PerplexityMetric, ZeroShotMetric, ZeroShotTask,
)
from tests.fixtures.report_snapshot import SNAPSHOT_RECORDS

#: The quickstart's real records as written before the typed record existed (version 0).
QUICKSTART = sorted(p for p in SNAPSHOT_RECORDS.glob("*.json") if json.loads(p.read_text())["suite"] == "quickstart")


def _synthetic() -> dict:
    """A version-0 record with every kind of metric, an unknown metric and an unknown field."""
    return {
        "key": "k1", "label": "llama/gptq/b2/s3", "suite": "s", "model": {"label": "llama", "id": "x/llama"},
        "method": "gptq", "method_label": "gptq-g64", "budget": 2, "params": {"group_size": 64},
        "reference": False, "cell": {"seed": 3, "model": {"id": "x/llama"}, "calibration": {"seed": 3, "num_sequences": 4}},
        "status": "ok",
        "metrics": {
            "bits": 2.25, "bits_formula": 2.25, "bits_paper": 2.0, "model_bits": 2.5, "size_bytes": 1000,
            "perplexity": {"wikitext2": {"ppl": 9.5, "nll": 2.25, "seqlen": 8, "windows": 2, "tokens": 14,
                                         "window_nll": [2.0, 2.5], "bpb": 0.75, "token_hash": "ab"}},
            "zero_shot": {
                "tasks": {"piqa": {"task": "piqa", "acc": 0.7, "acc_stderr": 0.01, "acc_norm": 0.72},
                          "boolq": {"task": "boolq", "acc": 0.6, "acc_stderr": 0.02},
                          "arc_easy": {"task": "arc_easy", "error": {"type": "ConnectionError", "message": "offline"}}},
                "average": {"acc": 0.65, "acc_norm": 0.72, "tasks": ["piqa", "boolq"]}, "errors": ["arc_easy"],
            },
            "throughput": {"device": "cuda", "results": [
                {"batch_size": 1, "tokens_per_s": 50.0, "tokens_per_s_min": 48.0, "tokens_per_s_max": 51.0, "paths": {}},
                {"batch_size": 8, "tokens_per_s": 40.0}]},
            "my_plugin_metric": {"score": 0.5, "details": [1, 2]},
        },
        "timings": {"quantize_s": 12.0, "total_s": 20.0},
        "environment": {"seeds": {"cell": 3, "calibration": 3}},
        "finished_at": "2026-01-01T00:00:00+00:00",
        "from_the_future": {"x": 1},
    }


@pytest.mark.parametrize("path", QUICKSTART, ids=lambda p: p.stem)
def test_quickstart_record_loads_and_dumps_every_field(path):
    raw = json.loads(path.read_text())
    record = CellRecord.load(raw)
    assert "version" not in raw and record.version == RECORD_VERSION
    assert record.dump() == {**raw, "version": RECORD_VERSION}
    assert record.key == path.stem and record.ok and record.model_label == "smollm2-135m"
    assert record.method_label == raw["method"] and record.seed == 0 and not record.is_reference
    assert record.perplexity("embedded").ppl == raw["metrics"]["perplexity"]["embedded"]["ppl"]


def test_the_quickstart_records_are_there():
    assert [p.stem for p in QUICKSTART] == ["14c9ff78f0ab1e70", "62140dc2e7090bb2"]


def test_unknown_fields_and_plugin_metrics_round_trip():
    raw = _synthetic()
    record = CellRecord.load(copy.deepcopy(raw))
    assert record.dump() == {**raw, "version": 1}
    assert record.metrics.model_extra["my_plugin_metric"] == {"score": 0.5, "details": [1, 2]}
    again = CellRecord.load(json.loads(json.dumps(record.dump())))
    assert again.version == 1 and again.dump() == record.dump()
    assert list(record.dump())[:2] == ["version", "key"]


def test_readers_on_a_synthetic_record():
    r = CellRecord.load(_synthetic())
    assert (r.ok, r.model_label, r.method_label, r.seed, r.is_reference) == (True, "llama", "gptq-g64", 3, False)
    assert r.bits == 2.25 and r.metric("bits_paper") == 2.0 and r.metric("size_bytes") == 1000.0 and r.metric("nope") is None
    ppl = r.perplexity("wikitext2")
    assert (ppl.ppl, ppl.bpb, r.window_nll("wikitext2")) == (9.5, 0.75, [2.0, 2.5])
    assert r.perplexity("c4") is None and r.window_nll("c4") is None and list(r.perplexities) == ["wikitext2"]
    assert list(r.zero_shot_tasks) == ["piqa", "boolq", "arc_easy"] and list(r.finished_tasks) == ["piqa", "boolq"]
    assert r.accuracy("piqa") == 0.7 and r.accuracy("piqa", "acc_norm") == 0.72
    assert r.accuracy("boolq", "acc_norm") == 0.6  # no normalised accuracy: acc stands in
    assert r.accuracy("arc_easy") is None and r.accuracy("hellaswag") is None
    assert r.zero_shot_average() == 0.65 and r.zero_shot_average("acc_norm") == 0.72
    assert r.evaluation_errors() == [("zero_shot:arc_easy", {"type": "ConnectionError", "message": "offline"})]
    assert r.tokens_per_s() == {1: (50.0, 48.0, 51.0), 8: (40.0, 40.0, 40.0)}
    assert r.label == "llama/gptq/b2/s3" and r.error is None and not hasattr(r, "get")  # no dict access


def test_defaults_of_a_bare_record():
    r = CellRecord.load({"key": "k", "label": "m/none", "method": "none", "status": "failed",
                         "error": {"type": "RuntimeError", "message": "OOM"}})
    assert (r.ok, r.model_label, r.method_label, r.seed, r.is_reference) == (False, "m", "none", DEFAULT_SEED, True)
    assert r.bits is None and r.perplexities == {} and r.zero_shot_tasks == {} and r.tokens_per_s() == {}
    assert r.zero_shot_average() is None and r.evaluation_errors() == [] and r.error.message == "OOM"
    assert r.repeat_group == "key:k"
    assert CellRecord.load({"key": "k", "environment": {"seeds": {"cell": 5}}}).seed == 5  # before cell.seed
    assert CellRecord.load({"key": "k", "method": "none", "reference": False}).is_reference is False


def test_repeat_group_ignores_the_seeds():
    one, two = _synthetic(), _synthetic()
    two["key"], two["cell"] = "k2", {**two["cell"], "seed": 4, "calibration": {"seed": 4, "num_sequences": 4}}
    three = {**_synthetic(), "key": "k3", "cell": {**two["cell"], "calibration": {"seed": 4, "num_sequences": 8}}}
    groups = [CellRecord.load(r).repeat_group for r in (one, two, three)]
    assert groups[0] == groups[1] != groups[2]


def test_version_0_migration():
    old = {"key": "0000000000000001", "label": "m/aqlm/b1", "method": "aqlm", "method_label": "aqlm", "status": "ok",
           "params": {"kmeans_metric": "hessian", "nbits_per_codebook": 8}, "metrics": {
               "perplexity": {"wikitext2": 12.5},
               "zero_shot": {"piqa": {"acc": 0.6}, "boolq": {"acc": 0.5}, "average": 0.55}}}
    record = CellRecord.load(copy.deepcopy(old))
    assert record.method_label == "aqlm-kmeans_metric=hessian"  # it ran the harness's k-means, not the published one
    assert record.perplexity("wikitext2").ppl == 12.5
    assert record.accuracy("boolq") == 0.5 and list(record.zero_shot_tasks) == ["piqa", "boolq"]
    dumped = record.dump()
    assert dumped["version"] == 1 and dumped["method_label"] == "aqlm-kmeans_metric=hessian"
    assert dumped["metrics"]["zero_shot"] == {"tasks": {"piqa": {"acc": 0.6}, "boolq": {"acc": 0.5}}, "average": 0.55}
    assert CellRecord.load(dumped).dump() == dumped  # version 1: read as it is, no second migration
    kept = [{**old, "params": {**old["params"], "variant": "harness"}, "method_label": "aqlm-harness"},
            {**old, "method_label": "mine"}, {**old, "params": {"kmeans_metric": "euclidean"}},
            {**old, "params": {"no_such_param": 1}}]
    assert [CellRecord.load(r).stored_method_label for r in kept] == ["aqlm-harness", "mine", "aqlm", "aqlm"]


def test_invalid_records_are_refused_with_the_field():
    with pytest.raises(ValueError, match="'no_key'.*key: Field required"):
        CellRecord.load({"label": "no_key"})
    with pytest.raises(ValueError, match="metrics.perplexity.wikitext2.windows"):
        CellRecord.load({"key": "k", "metrics": {"perplexity": {"wikitext2": {"windows": "many"}}}})
    with pytest.raises(ValueError, match="version"):
        CellRecord.load({"key": "k", "version": "one"})


def test_a_typed_record_dumps_what_was_given():
    record = CellRecord(key="k", label="m/rtn/b4", method="rtn", method_label="rtn", status="ok",
                        metrics=Metrics(bits=4.5, perplexity={"c4": PerplexityMetric(ppl=math.inf)}))
    assert record.dump() == {"version": 1, "key": "k", "label": "m/rtn/b4", "method": "rtn", "method_label": "rtn",
                             "status": "ok", "metrics": {"bits": 4.5, "perplexity": {"c4": {"ppl": math.inf}}}}


def test_record_parts_declare_every_field_of_the_metric_results():
    """The record's typed parts stay in step with the metric result types that write them."""
    assert {f.name for f in dataclasses.fields(PerplexityResult)} <= set(PerplexityMetric.model_fields)
    assert {f.name for f in dataclasses.fields(TaskResult)} <= set(ZeroShotTask.model_fields)
    written = ZeroShotResult(tasks={}, limit=None, batch_size=1).to_dict()
    assert set(written) <= set(ZeroShotMetric.model_fields)
    assert {f.name for f in dataclasses.fields(BitsSummary)} - {"layers"} <= set(Metrics.model_fields)
