"""`variant: published | harness` of AQLM and CRVQ: what each sets, that explicit fields win, and
the labels a suite line gets (so every table and plot says which algorithm ran)."""
from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from harness.errors import SuiteError
from harness.suite import load_suite, resolve_cells
from methods.aqlm.config import AQLMConfig
from methods.aqlm.quantizer import AQLMQuantizer
from methods.crvq.config import CRVQConfig
from methods.crvq.quantizer import CRVQQuantizer


def test_defaults_are_the_published_algorithms():
    aqlm, crvq = AQLMConfig(), CRVQConfig()
    assert (aqlm.variant, aqlm.kmeans_metric, aqlm.finetune_patience) == ("published", "euclidean", 3)
    assert (crvq.variant, crvq.kmeans_metric, crvq.reorder) == ("published", "euclidean", "sorted")
    assert crvq.aqlm_config().kmeans_metric == "euclidean"
    assert AQLMQuantizer.default_label(aqlm) == "aqlm" and CRVQQuantizer.default_label(crvq) == "crvq"


def test_harness_variant_and_explicit_fields():
    aqlm = AQLMConfig(variant="harness")
    crvq = CRVQConfig(variant="harness")
    assert aqlm.kmeans_metric == "hessian" and AQLMQuantizer.default_label(aqlm) == "aqlm-harness"
    assert (crvq.kmeans_metric, crvq.reorder) == ("hessian", "critical_first")
    assert crvq.aqlm_config().kmeans_metric == "hessian"
    assert CRVQQuantizer.default_label(crvq) == "crvq-harness"
    # an explicit field wins over the variant, and the label says so
    mixed = CRVQConfig(reorder="critical_first")
    assert (mixed.kmeans_metric, mixed.reorder) == ("euclidean", "critical_first")
    assert CRVQQuantizer.default_label(mixed) == "crvq-reorder=critical_first"
    assert AQLMQuantizer.default_label(AQLMConfig(variant="harness", kmeans_metric="euclidean")) == (
        "aqlm-harness-kmeans_metric=euclidean")
    # a resolved config (every field written out) validates to itself
    assert CRVQConfig.model_validate(crvq.model_dump(mode="json")) == crvq
    with pytest.raises(ValidationError, match="published"):
        AQLMConfig(variant="paper")


def test_suite_labels_carry_the_variant(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        name: variants
        models: [smollm2-135m]
        calibration: {source: embedded, num_sequences: 8, seqlen: 64}
        methods:
          - {name: aqlm, budgets: [1]}
          - {name: aqlm, budgets: [1], params: {variant: harness}}
          - {name: crvq, budgets: [1], params: {variant: harness}}
          - {name: crvq, budgets: [1], params: {reorder: critical_first}}
          - {name: crvq, label: mine, budgets: [1], params: {variant: harness, max_epochs: 2}}
        evaluations: {perplexity: {datasets: [embedded], seqlen: 64, max_windows: 2}}
        report:
          compare: [{base: aqlm-harness, against: crvq-harness}]
        """))
    cells = resolve_cells(load_suite(path), path)
    assert [c.method_label for c in cells] == [
        "aqlm", "aqlm-harness", "crvq-harness", "crvq-reorder=critical_first", "mine"]
    path.write_text(path.read_text().replace("against: crvq-harness", "against: crvq-typo"))
    with pytest.raises(SuiteError, match="crvq-typo"):
        load_suite(path)


def test_records_from_before_the_variants_are_labelled_by_what_they_ran(tmp_path):
    from harness.store import ResultStore

    store = ResultStore(tmp_path)
    old = {"kmeans_metric": "hessian", "reorder": "critical_first", "nbits": 8}  # params before `variant` existed
    store.put({"key": "0000000000000001", "label": "m/crvq/b1", "method": "crvq", "method_label": "crvq",
               "params": old, "status": "ok"})
    store.put({"key": "0000000000000002", "label": "m/aqlm/b1", "method": "aqlm", "method_label": "aqlm",
               "params": {"kmeans_metric": "euclidean"}, "status": "ok"})
    store.put({"key": "0000000000000003", "label": "m/mine/b1", "method": "crvq", "method_label": "mine",
               "params": old, "status": "ok"})
    store.put({"key": "0000000000000004", "label": "m/crvq-harness/b1", "method": "crvq",
               "method_label": "crvq-harness", "params": {**old, "variant": "harness"}, "status": "ok"})
    labels = {r.key[-1]: r.method_label for r in store.records()}
    assert labels == {"1": "crvq-kmeans_metric=hessian-reorder=critical_first", "2": "aqlm", "3": "mine",
                      "4": "crvq-harness"}
