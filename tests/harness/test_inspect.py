"""`output_error` of real cells against a recomputation from the saved layers, and `harness inspect`.

Cells of a tiny random LLaMA run in-process through the runner (GPTQ, and CRVQ with block
fine-tuning); the record's per-layer errors are then recomputed independently from the saved
quantized model and the original model.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.checkpoint import load_quantized
from harness.cli import app, main
from harness.data import calibration_batch, token_hash
from harness.errors import HarnessError
from harness.models.adapters import get_adapter
from harness.report.inspect import find_record, inspect_record
from harness.store import ResultStore

CRVQ_PARAMS = ("{nbits: 4, num_extended_codebooks: 1, extended_nbits: 4, critical_ratio: 0.25, max_epochs: 1, "
               "steps_per_epoch: 2, kmeans_iters: 2, importance_kmeans_iters: 2, finetune: true, finetune_max_epochs: 2, "
               "finetune_batch_size: 2, finetune_lr: 1.0e-3}")


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_llama_dir, eval_text_file) -> Path:
    """A results directory with the reference, a GPTQ and a CRVQ cell of the tiny model."""
    from harness.runner import run_cell
    from harness.suite import load_suite, resolve_cells

    root = tmp_path_factory.mktemp("inspect")
    suite = root / "suite.yaml"
    suite.write_text(f"""
name: inspect
output_dir: {root / 'results'}
models: [{{id: {tiny_llama_dir}, name: tiny}}]
calibration: {{source: {eval_text_file}, num_sequences: 6, seqlen: 32}}
methods:
  - name: none
  - {{name: gptq, budgets: [4], params: {{group_size: 16}}}}
  - {{name: crvq, budgets: [1], params: {CRVQ_PARAMS}}}
evaluations:
  perplexity: {{datasets: [{eval_text_file}], seqlen: 32, max_windows: 2}}
""")
    store = ResultStore(root / "results")
    for cell in resolve_cells(load_suite(suite), suite):  # saved exactly (float32 where float16 would round)
        assert run_cell(cell, store, progress=False).ok
    return store.root


def _record(results: Path, method: str) -> dict:
    return next(r.dump() for r in ResultStore(results).records() if r.method == method)


@torch.no_grad()
def _recomputed_errors(record: dict, model_dir: Path) -> dict[str, float]:
    """tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) per linear (float64): W from the original model, Ŵ from the saved
    layer, H from the original block i fed with the outputs of the saved blocks 0..i-1 (float32
    forward passes of the whole calibration batch at once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    saved = load_quantized(record["saved_model"])
    info = record["calibration"]
    tokens = calibration_batch(info["source"], AutoTokenizer.from_pretrained(model_dir), info["num_sequences"],
                               info["seqlen"], torch.Generator().manual_seed(record["cell"]["seed"]))
    assert token_hash(tokens) == info["token_hash"]
    adapter = get_adapter(original)
    errors = {}
    for i, block in enumerate(adapter.blocks(original)):
        hybrid = copy.deepcopy(saved)
        adapter.blocks(hybrid)[i] = copy.deepcopy(block)
        sums, counts, handles = {}, {}, []
        for name, module in adapter.blocks(hybrid)[i].named_modules():
            if isinstance(module, torch.nn.Linear):
                def hook(m, args, out, name=name):
                    x = args[0].reshape(-1, args[0].shape[-1]).float()
                    # x xᵀ of a batch in float32, summed in float64, as the pipeline does: float64
                    # products differ by up to ~1e-6 (relative) on layers with errors ~1e-3
                    sums[name] = sums.get(name, 0) + (x.T @ x).double()
                    counts[name] = counts.get(name, 0) + x.shape[0]
                handles.append(module.register_forward_hook(hook))
        hybrid(input_ids=tokens, use_cache=False)
        for handle in handles:
            handle.remove()
        for name, total in sums.items():
            H = total / counts[name]
            W = block.get_submodule(name).weight.double()
            D = adapter.blocks(saved)[i].get_submodule(name).dequantize().double() - W
            errors[f"{adapter.blocks_path}.{i}.{name}"] = float(((D @ H) * D).sum() / ((W @ H) * W).sum())
    return errors


@pytest.mark.parametrize("method", ["gptq", "crvq"])
def test_recorded_output_error_matches_a_recomputation_from_the_saved_layers(results, tiny_llama_dir, method):
    record = _record(results, method)
    recorded = {e["name"]: e["output_error"] for e in record["layers"] if "out" in e}
    expected = _recomputed_errors(record, tiny_llama_dir)
    assert set(recorded) == set(expected) and len(expected) == 14
    for name, value in expected.items():  # relative agreement 1e-6
        assert recorded[name] == pytest.approx(value, rel=1e-6, abs=0), name
    if method == "crvq":  # block fine-tuning changed the layers: the method's pre-tuning error differs
        assert any(e["rel_error"] != pytest.approx(e["output_error"], rel=1e-3) for e in record["layers"] if "out" in e)
        scores = next(e for e in record["layers"] if "out" in e)["importance_scores"]
        assert sum(scores["hist"]["counts"]) == 64 and len(scores["hist"]["counts"]) == len(scores["hist"]["log10_edges"]) + 1


def _plots(results: Path, key: str) -> set[str]:
    folder = results / "plots" / "inspect"
    return {p.name for p in folder.glob(f"{key}_*")} if folder.is_dir() else set()


def _check_images(paths) -> None:
    for path in paths:
        data = Path(path).read_bytes()
        assert data.startswith(b"\x89PNG") if str(path).endswith(".png") else b"<svg" in data[:2000]


def test_inspect_crvq_writes_both_plots(results):
    record = _record(results, "crvq")
    out = CliRunner().invoke(app, ["inspect", "tiny/crvq/b1", "-r", str(results.parent)])
    assert out.exit_code == 0, out.output
    assert "output_error per block" in out.output and "all" in out.output
    names = {f"{record['key']}_{what}.{fmt}" for what in ("layer_error", "importance") for fmt in ("png", "svg")}
    assert _plots(results, record["key"]) == names
    _check_images(results / "plots" / "inspect" / n for n in names)


def test_inspect_gptq_writes_only_the_heatmap(results):
    record = _record(results, "gptq")
    result = inspect_record(*find_record(record["key"][:6], results))
    assert result.table.error_field == "output_error" and not result.notes
    assert {p.name for p in result.paths} == {f"{record['key']}_layer_error.{f}" for f in ("png", "svg")}
    _check_images(result.paths)
    rows = {row["block"]: row for row in result.summary}
    assert set(rows) == {0, 1, "all"} and rows["all"]["layers"] == 14
    assert rows["all"]["bits"] == pytest.approx(record["metrics"]["bits"], rel=1e-9)


def test_inspect_falls_back_to_rel_error_for_older_records(results, tmp_path):
    record = _record(results, "crvq")  # a fresh dump: edited freely
    for entry in record["layers"]:
        entry.pop("output_error", None)
        for key in ("hist", "mean", "threshold"):
            (entry.get("importance_scores") or {}).pop(key, None)
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / f"{record['key']}.json").write_text(json.dumps(record))
    result = inspect_record(*find_record(record["label"], tmp_path))
    assert result.table.error_field == "rel_error"
    assert any("no `output_error`" in n for n in result.notes) and any("quantile lines only" in n for n in result.notes)
    assert len(result.paths) == 4


def test_inspect_errors_name_the_problem(results, monkeypatch, capsys):
    with pytest.raises(HarnessError, match=r"no cell matches 'tiny/awq/b4'.*Did you mean"):
        find_record("tiny/awq/b4", results)
    with pytest.raises(HarnessError, match=r"matches 3 records: .*tiny/gptq/b4 \("):
        find_record("tiny/*", results)
    with pytest.raises(HarnessError, match="unquantized reference"):
        inspect_record(*find_record("tiny/none", results))
    with pytest.raises(HarnessError, match="no results directory"):
        find_record("tiny/crvq/b1", results / "records")
    monkeypatch.setattr(sys, "argv", ["harness", "inspect", "nothing-like-this", "-r", str(results)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "no cell matches 'nothing-like-this'" in capsys.readouterr().err
