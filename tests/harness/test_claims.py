"""Claims with verdicts (harness.claims): the verdict rule on intervals, every verdict kind on
synthetic per-window losses (including a claim exactly at the CI's edge and one without cells),
matched bits, stand-ins, and the shipped CRVQ claims file."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from harness.analysis.compare import compare_methods
from harness.claims import ClaimsFile, verdict_of, verify_claims
from harness.claims.verdict import CONTRADICTED, INCONCLUSIVE, NOT_COVERED, REPRODUCED, STRONGER, WEAKER
from tests.fixtures.compare_records import base_nll, record, task

AQLM = {"num_codebooks": 1, "nbits_per_codebook": 8, "in_group_size": 8}


# --------------------------------------------------------------------------- the rule

@pytest.mark.parametrize("ci, claimed, tol, expected", [
    ((-30, -20), (-25, -25), 0, REPRODUCED),       # contains the claim, excludes 0
    ((-30, -20), (-38.9, -38.9), 0, WEAKER),       # same sign, between 0 and the claim
    ((-30, -20), (-38.9, -38.9), 10, WEAKER),      # not inside the tolerance band [-48.9, -28.9] as a whole
    ((-35, -30), (-38.9, -38.9), 10, REPRODUCED),  # inside it
    ((-45, -40), (-38.9, -38.9), 0, STRONGER),     # beyond the claim
    ((2, 5), (-38.9, -38.9), 0, CONTRADICTED),     # excludes 0 with the opposite sign
    ((-50, 3), (-38.9, -38.9), 0, INCONCLUSIVE),   # contains 0 and the claim
    ((-5, 3), (-38.9, -38.9), 0, WEAKER),          # contains 0 but excludes the claim: smaller than claimed
    ((-40, -38.9), (-38.9, -38.9), 0, REPRODUCED),  # claim exactly at the CI's upper edge
    ((-38.9, -30), (-38.9, -38.9), 0, REPRODUCED),  # ... and at the lower edge
    ((-5, -1), (-math.inf, 0), 0, REPRODUCED),     # one-sided claim "any reduction"
    ((-1, 2), (-math.inf, 0), 0, INCONCLUSIVE),
    ((1, 2), (-math.inf, 0), 0, CONTRADICTED),
    ((5, 9), (7, 13), 0, REPRODUCED),              # a claimed range overlapping the CI
    ((1, 3), (7, 13), 0, WEAKER),
    ((-3, -1), (7, 13), 0, CONTRADICTED),
    ((14, 20), (7, 13), 0, STRONGER),
    ((3, 5), (-1, 1), 0, CONTRADICTED),            # a claim of no change, and a clear change
    ((0.06, 0.06), (0.062, 0.062), 0.005, REPRODUCED),  # exact (bits) within the tolerance
    ((0.238, 0.238), (0.062, 0.062), 0.005, STRONGER),
    # a tolerance band that holds zero: a CI inside it agrees whether or not it also holds the claim
    # (a CI that holds the claim must not do worse than one that moved away from it)
    ((-1, 0.5), (-2, -2), 5, REPRODUCED),
    ((-3, 0.5), (-2, -2), 5, REPRODUCED),
    ((-3, 0.5), (-2, -2), 0, INCONCLUSIVE),
    ((-1, 0.5), (-math.inf, 0), 1, REPRODUCED),    # "any reduction" ± 1 point, as (0.2, 0.5) is
    ((0.2, 0.5), (-math.inf, 0), 1, REPRODUCED),
])
def test_verdict_rule(ci, claimed, tol, expected) -> None:
    assert verdict_of(*ci, claimed, tol) == expected


def test_value_verdicts_follow_the_better_direction() -> None:
    assert verdict_of(6.6, 6.8, (6.69, 6.69), value_claim=True) == REPRODUCED
    assert verdict_of(7.0, 7.2, (6.69, 6.69), 0.6, value_claim=True) == REPRODUCED
    assert verdict_of(7.0, 7.2, (6.69, 6.69), value_claim=True) == WEAKER  # higher perplexity: worse than claimed
    assert verdict_of(6.0, 6.2, (6.69, 6.69), value_claim=True) == STRONGER
    assert verdict_of(0.50, 0.52, (0.45, 0.45), value_claim=True, lower_is_better=False) == STRONGER
    assert verdict_of(math.nan, 1, (0, 0)) == NOT_COVERED


# --------------------------------------------------------------------------- synthetic results

def _claims(*checks: dict[str, Any], ids: list[str] | None = None) -> ClaimsFile:
    claims = [{"id": (ids or [f"c{i}" for i in range(len(checks))])[i], "source": "paper", "statement": "s",
               "check": {"model": "tiny", **check}} for i, check in enumerate(checks)]
    return ClaimsFile.model_validate({"name": "t", "sources": {"paper": {"title": "P"}}, "claims": claims})


def _shift(nll: np.ndarray, shift: float, noise: float = 0.01, seed: int = 1) -> np.ndarray:
    return nll + shift + noise * np.random.default_rng(seed).standard_normal(nll.shape)


@pytest.fixture(scope="module")
def recs() -> list[dict]:
    """AQLM b1/b2 and CRVQ b1 on 'tiny': CRVQ's windows are AQLM b1's shifted by −0.1 nats."""
    a1, a2 = base_nll(level=5.0, seed=1), base_nll(level=3.3, seed=2)
    zs = lambda x, y: {"piqa": task(x), "arc_easy": task(y)}  # noqa: E731
    return [
        record("ref", "none", None, base_nll(level=2.6), zero_shot=zs(0.70, 0.60)),
        {**record("a1", "aqlm", 1, a1, bits=1.10, zero_shot=zs(0.50, 0.40)), "params": AQLM},
        {**record("a2", "aqlm", 2, a2, bits=2.15, zero_shot=zs(0.62, 0.52)),
         "params": {**AQLM, "num_codebooks": 2}},
        {**record("c1", "crvq", 1, _shift(a1, -0.1), bits=1.35, zero_shot=zs(0.55, 0.44)),
         "params": {"critical_ratio": 0.02, "num_extended_codebooks": 3}},
    ]


PAIR = {"base": "aqlm", "against": "crvq", "budget": 1, "metric": "ppl:embedded"}


def _one(claims: ClaimsFile, recs: list[dict]):
    (row,) = verify_claims(claims, [("res", recs)])
    return row


def test_every_verdict_kind_on_window_losses(recs) -> None:
    true_pct = 100 * (math.exp(-0.1) - 1)  # −9.5%: a constant −0.1 nats per window
    cases = {
        REPRODUCED: {"percent": round(true_pct, 1)},
        WEAKER: {"percent": -38.9},
        STRONGER: {"percent": -2.0},
        CONTRADICTED: {"percent": 5.0},
    }
    for expected, change in cases.items():
        row = _one(_claims({**PAIR, "change": change}), recs)
        assert row.verdict == expected, (expected, row.line())
        m = row.measurement
        assert m.low < true_pct < m.high and m.unit == "percent" and m.windows == 200
        assert "paired bootstrap over 200 windows × 1 seed" in row.line()
    # inconclusive: a noisy, tiny difference whose CI holds both 0 and the claimed −1%
    base = base_nll(seed=5)
    noisy = [record("a", "aqlm", 1, base), record("c", "crvq", 1, _shift(base, -0.003, noise=0.2, seed=6))]
    row = _one(_claims({**PAIR, "change": {"percent": -1.0}}), noisy)
    assert row.verdict == INCONCLUSIVE and row.measurement.low < 0 < row.measurement.high
    # not covered: no cell at that budget, and no cell of that configuration
    row = _one(_claims({**PAIR, "budget": 3, "change": {"percent": -10}}), recs)
    assert row.verdict == NOT_COVERED and "no aqlm cell at budget 3 on tiny" in row.reason
    row = _one(_claims({"method": {"method": "aqlm", "params": {"nbits_per_codebook": 16}}, "metric": "ppl:embedded",
                        "value": 5.92}), recs)
    assert row.verdict == NOT_COVERED and row.model is None and "no finished cell of method aqlm" in row.line()
    assert "NOT COVERED" in row.line()


def test_claim_exactly_at_the_ci_edge_is_reproduced(recs) -> None:
    (c,) = compare_methods(recs, "aqlm", "crvq", budget=1).comparisons  # the same bootstrap, same draws
    low, high = 100 * c.difference.relative.low, 100 * c.difference.relative.high
    for edge in (low, high):
        row = _one(_claims({**PAIR, "change": {"percent": edge}}), recs)
        assert (row.measurement.low, row.measurement.high) == (low, high)
        assert row.verdict == REPRODUCED, row.line()
    # one step outside: a claim just beyond the CI's far end was larger than measured (weaker), one just
    # inside zero's side of its near end smaller than measured (stronger)
    assert _one(_claims({**PAIR, "change": {"percent": np.nextafter(low, -np.inf)}}), recs).verdict == WEAKER
    assert _one(_claims({**PAIR, "change": {"percent": np.nextafter(high, np.inf)}}), recs).verdict == STRONGER


def test_absolute_change_values_bits_and_zero_shot(recs) -> None:
    rows = verify_claims(_claims(
        {**PAIR, "change": {"absolute": -10.0}, "tolerance": 1000},
        {"method": "crvq", "metric": "ppl:embedded", "value": 100.0},
        {**PAIR, "metric": "bits", "change": {"absolute": 0.25}, "tolerance": 0.001},
        {**PAIR, "metric": "acc:avg", "change": {"percent": [7, 13]}},
        {**PAIR, "metric": "acc:piqa", "change": {"absolute": 5}},
    ), [("res", recs)])
    ppl_abs, value, bits, avg, piqa = rows
    c1 = np.mean([r for r in recs if r["key"] == "c1"][0]["metrics"]["perplexity"]["embedded"]["window_nll"])
    assert value.measurement.value == pytest.approx(math.exp(c1)) and value.measurement.unit == "value"
    assert ppl_abs.verdict == REPRODUCED and ppl_abs.measurement.value < 0  # inside ±1000
    assert value.verdict == WEAKER  # measured perplexity ~135 vs a claimed 100
    assert bits.measurement.value == pytest.approx(0.25) and bits.measurement.low == bits.measurement.high
    assert bits.verdict == REPRODUCED and "exact" in bits.line()
    # zero-shot: 0.45 → 0.495 average: +10% relative, an unpaired normal CI of about ±8.7%
    half = 100 * 1.959964 * 0.02 / 0.45  # se of the mean difference: sqrt(2 · (0.02² + 0.02²)) / 2 = 0.02
    assert avg.measurement.value == pytest.approx(10.0)
    assert (avg.measurement.low, avg.measurement.high) == pytest.approx((10 - half, 10 + half), abs=1e-4)
    assert avg.verdict == REPRODUCED
    assert "not the paper's 6 tasks" in avg.line() and "unpaired" in avg.line()
    # one task: +5 points ± 1.96 · sqrt(0.02² + 0.02²) = ±5.5 points: holds 0 and the claim
    assert piqa.measurement.value == pytest.approx(5.0) and piqa.verdict == INCONCLUSIVE


def test_matched_bits_interpolates_the_base_frontier(recs) -> None:
    row = _one(_claims({**PAIR, "at": "matched_bits", "change": {"percent": [-math.inf, 0]}}), recs)
    alpha = (1.35 - 1.10) / (2.15 - 1.10)
    a1, a2, c1 = ([r for r in recs if r["key"] == k][0]["metrics"]["perplexity"]["embedded"]["window_nll"]
                  for k in ("a1", "a2", "c1"))
    base = math.exp(np.mean((1 - alpha) * np.asarray(a1) + alpha * np.asarray(a2)))
    m = row.measurement
    assert m.base == pytest.approx(base) and m.against == pytest.approx(math.exp(np.mean(c1)))
    assert m.base_bits == pytest.approx(1.35)
    assert "matched bits: aqlm's frontier interpolated at crvq's 1.350 bits, between aqlm b1 (1.100) and aqlm b2 " \
           "(2.150)" in row.line()
    assert row.verdict == CONTRADICTED  # the interpolated AQLM is far better at 1.35 bits
    # outside the frontier: not extrapolated
    far = [r if r["key"] != "c1" else {**r, "metrics": {**r["metrics"], "bits": 2.5}} for r in recs]
    row = _one(_claims({**PAIR, "at": "matched_bits", "change": {"percent": [-math.inf, 0]}}), far)
    assert row.verdict == NOT_COVERED and "outside aqlm's frontier" in row.reason and "not extrapolated" in row.reason


def test_matched_bits_frontier_takes_the_published_line(recs) -> None:
    """Without a label the base's frontier is built from the line labelled like the method, as the
    equal-budget pairing takes it: a better variant line (aqlm-harness) does not join it."""
    a1 = [r for r in recs if r["key"] == "a1"][0]["metrics"]["perplexity"]["embedded"]["window_nll"]
    variant = {**record("h1", "aqlm", 1, _shift(np.asarray(a1), -1.0), bits=1.30), "method_label": "aqlm-harness",
               "label": "tiny/aqlm-harness/b1", "params": {**AQLM, "variant": "harness"}}
    claim = {**PAIR, "at": "matched_bits", "change": {"percent": [-math.inf, 0]}}
    row = _one(_claims(claim), recs + [variant])
    assert "between aqlm b1 (1.100) and aqlm b2 (2.150)" in row.line() and "aqlm-harness" not in row.line()
    assert row.measurement.base == pytest.approx(_one(_claims(claim), recs).measurement.base)
    # asked for by label, every line is on the frontier
    row = _one(_claims({**claim, "base": {"method": "aqlm", "label": "aqlm*"}}), recs + [variant])
    assert "between aqlm-harness b1 (1.300) and aqlm b2 (2.150)" in row.line()


def test_matched_bits_vary_takes_one_ablation_s_lines(recs) -> None:
    """`vary` builds the frontier from the lines that differ from the against line in those params
    alone: a line with end-to-end fine-tuning or another variant at the same bits is not another
    setting of the ablation, however much better it is."""
    c1 = next(r for r in recs if r["key"] == "c1")
    nll = np.asarray(c1["metrics"]["perplexity"]["embedded"]["window_nll"])
    chosen = c1["params"]

    def line(key: str, label: str, shift: float, bits: float, cell: dict | None = None, **params) -> dict:
        r = record(key, "crvq", 1, _shift(nll, shift, seed=len(key)), bits=bits, label=label)
        return {**r, "params": {**chosen, **params}, "cell": {"seed": 0, **(cell or {})}}

    rows = recs + [
        line("r1", "crvq-r0.01", 0.05, 1.20, critical_ratio=0.01),
        line("r5", "crvq-r0.05", 0.0, 1.60, critical_ratio=0.05),
        line("e2e", "crvq-e2e", -1.0, 1.35, cell={"finetune_e2e": {"epochs": 2}}),
        line("h", "crvq-harness", -0.5, 1.35, variant="harness"),
    ]
    claim = {"base": {"method": "crvq", "label": "*"}, "against": {"method": "crvq", "params": chosen},
             "budget": 1, "metric": "ppl:embedded", "at": "matched_bits", "change": {"percent": [-math.inf, 0]}}
    row = _one(_claims({**claim, "vary": ["critical_ratio", "num_extended_codebooks"]}), rows)
    assert "between crvq-r0.01 b1 (1.200) and crvq-r0.05 b1 (1.600)" in row.line()
    assert "crvq-e2e" not in row.line() and "crvq-harness" not in row.line()
    assert row.verdict == REPRODUCED  # the frontier at 1.35 bits: 0.625 x 0.05 nats above c1
    unvaried = _one(_claims(claim), rows)  # every line: the e2e line at the same bits is the frontier there
    assert "crvq-e2e" in unvaried.line() and unvaried.verdict == CONTRADICTED
    alone = _one(_claims({**claim, "vary": ["importance"]}), rows)
    assert alone.verdict == NOT_COVERED and "differs from it in importance alone" in alone.reason
    with pytest.raises(ValueError, match="use it with `at: matched_bits`"):
        _claims({**PAIR, "vary": ["critical_ratio"], "change": {"percent": -9.5}})


def test_stand_in_and_claimed_model_wording(recs) -> None:
    claims = _claims({**PAIR, "model": "meta-llama/Llama-2-7b-hf", "change": {"percent": -9.5}})
    row = _one(claims, recs)
    assert row.stand_in and row.scope == "checked on a stand-in (tiny), not the claimed model"
    assert row.line().endswith("checked on a stand-in (tiny), not the claimed model")
    llama = [{**r, "model": {"id": "meta-llama/Llama-2-7b-hf", "label": "llama2-7b"}} for r in recs]
    row = _one(_claims({**PAIR, "model": "llama2-7b", "change": {"percent": -9.5}}), llama)  # preset alias of the hub id
    assert not row.stand_in and row.scope == "the claimed model" and "stand-in" not in row.line()


def test_seeds_are_paired_and_several_results_dirs(recs) -> None:
    seeded = []
    for s in (0, 1, 2):
        base = base_nll(level=5 + 0.2 * s, seed=10 + s)
        seeded += [record(f"a{s}", "aqlm", 1, base, seed=s), record(f"c{s}", "crvq", 1, _shift(base, -0.1, seed=s), seed=s)]
    seeded.append(record("a3", "aqlm", 1, base_nll(seed=13), seed=3))  # no crvq counterpart: left out, said so
    rows = verify_claims(_claims({**PAIR, "change": {"percent": -9.5}}), [("one", recs), ("three", seeded)])
    assert [(r.results, r.measurement.seeds) for r in rows] == [("one", 1), ("three", 3)]
    assert "200 windows × 3 seeds" in rows[1].line() and "seeds [3] of aqlm have no counterpart" in rows[1].line()


def test_shipped_crvq_claims_on_quickstart_like_results(recs) -> None:
    from harness.claims import load_claims

    claims = load_claims("suites/claims/crvq.yaml")
    ids = [c.id for c in claims.claims]
    assert {"crvq-ppl-vs-aqlm-1bit", "crvq-bits-overhead", "crvq-zero-shot-vs-aqlm", "crvq-best-setting",
            "aqlm-2x8-llama2-7b", "aqlm-1x16-llama2-7b", "aqlm-pv-1x8-llama2-7b"} <= set(ids)
    main = claims.claims[ids.index("crvq-ppl-vs-aqlm-1bit")].check
    assert (main.claimed, main.model, main.budget) == ((-38.9, -38.9), "meta-llama/Llama-2-7b-hf", 1)
    bits = claims.claims[ids.index("crvq-bits-overhead")].check
    assert bits.claimed[0] == pytest.approx(1.0665 - 1.0045)
    rows = {r.claim.id: r for r in verify_claims(claims, [("quickstart", recs)])}
    assert rows["crvq-ppl-vs-aqlm-1bit"].verdict == WEAKER  # −9.5% measured vs −38.9% claimed
    assert "embedded text stands in for wikitext2" in rows["crvq-ppl-vs-aqlm-1bit"].line()
    assert rows["crvq-ppl-vs-aqlm-matched-bits"].measurement.matched
    assert rows["crvq-best-setting"].verdict == NOT_COVERED  # no other CRVQ setting in these results
    assert rows["aqlm-1x16-llama2-7b"].verdict == NOT_COVERED
    assert all(r.stand_in for r in rows.values() if r.model is not None)


def _with_bpb(r: dict, bytes_per_token: float = 4.0) -> dict:
    """A record with the protocol's bpb: total NLL in bits over the bytes the tokens cover."""
    info = r["metrics"]["perplexity"]["embedded"]
    info["bpb"] = info["nll"] / math.log(2) / bytes_per_token
    return r


def _with_throughput(r: dict, repeats: list[float]) -> dict:
    r["metrics"]["throughput"] = {"results": [{"batch_size": 1, "tokens_per_s": float(np.median(repeats)),
                                               "tokens_per_s_min": min(repeats), "tokens_per_s_max": max(repeats)}]}
    return r


def test_bpb_throughput_and_zero_shot_values() -> None:
    base = base_nll(seed=7)
    recs = [_with_throughput(_with_bpb(record("a", "aqlm", 1, base, zero_shot={"piqa": task(0.60)})), [10, 11, 12]),
            _with_throughput(_with_bpb(record("c", "crvq", 1, _shift(base, -0.3), zero_shot={"piqa": task(0.62)})),
                             [8, 9, 9.5])]
    rows = verify_claims(_claims(
        {**PAIR, "metric": "bpb:embedded", "change": {"percent": float(100 * -0.3 / base.mean())}},
        {**PAIR, "metric": "bpb:embedded", "change": {"absolute": -0.3 / math.log(2) / 4}, "tolerance": 0.001},
        {"method": "aqlm", "metric": "bpb:embedded", "value": float(base.mean() / math.log(2) / 4)},
        {**PAIR, "metric": "tok/s", "change": {"percent": -20}},
        {"method": "crvq", "metric": "tok/s:b1", "value": 20},
        {"method": "crvq", "metric": "acc:piqa", "value": 62},
        {**PAIR, "metric": "tok/s:b8", "change": {"percent": -20}},
    ), [("res", recs)])
    rel, absolute, value, speed, speed_value, acc_value, no_batch = rows
    expected = 100 * (-0.3 / base.mean())  # bpb is proportional to the mean NLL: the factor cancels
    assert rel.measurement.value == pytest.approx(expected, rel=1e-2) and rel.measurement.low < expected
    assert rel.verdict == REPRODUCED and "paired bootstrap over 200 windows" in rel.line()
    assert absolute.measurement.value == pytest.approx(-0.3 / math.log(2) / 4, rel=1e-2)
    assert absolute.verdict == REPRODUCED
    assert value.verdict == REPRODUCED and value.measurement.low < value.measurement.value < value.measurement.high
    # tok/s: 9 vs 11 tok/s medians, −18.2%, the repeats' range [8/12 − 1, 9.5/10 − 1] = [−33.3%, −5%]
    assert speed.measurement.value == pytest.approx(100 * (9 / 11 - 1))
    assert (speed.measurement.low, speed.measurement.high) == pytest.approx((100 * (8 / 12 - 1), 100 * (9.5 / 10 - 1)))
    assert speed.verdict == REPRODUCED and "range of the timed repeats" in speed.line()
    assert speed_value.verdict == WEAKER  # 9 tok/s measured, 20 claimed: higher is better
    assert acc_value.measurement.value == pytest.approx(62) and acc_value.verdict == REPRODUCED
    assert no_batch.verdict == NOT_COVERED and "batch size 8" in no_batch.reason


def test_ambiguous_lines_and_params_selection(recs) -> None:
    extra = [{**r, "key": r["key"] + "h", "method_label": r["method"] + "-harness", "label": r["label"] + "-h",
              "params": {**r["params"], "variant": "harness"}} for r in recs if r["method"] in ("aqlm", "crvq")]
    # without a label the line labelled like the method (the published one) is taken
    row = _one(_claims({**PAIR, "change": {"percent": -9.5}}), recs + extra)
    assert row.verdict == REPRODUCED and row.measurement.against_label == "crvq"
    # a label glob that matches two lines is ambiguous: not covered, with the lines named
    row = _one(_claims({**PAIR, "against": {"method": "crvq", "label": "crvq*"}, "change": {"percent": -9.5}}),
               recs + extra)
    assert row.verdict == NOT_COVERED and "several method lines (crvq, crvq-harness)" in row.reason
    row = _one(_claims({**PAIR, "against": {"method": "crvq", "label": "crvq-harness"}, "change": {"percent": -9.5}}),
               recs + extra)
    assert row.measurement.against_label == "crvq-harness"
    assert "crvq-harness ran 'crvq-harness', not the published crvq algorithm" in row.line()  # said, not hidden
    assert "not the published aqlm" not in row.line()
