"""Decode throughput and the fast-path agreement check on a tiny random LLaMA (CPU)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.formats import FORMATS, build_variant
from harness.metrics.agreement import dequantized_reference, layer_paths, logit_agreement, quantized_layers
from harness.metrics.throughput import DecodeSettings, bytes_read_per_step, decode_throughput, weight_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: one thread avoids thread-pool stalls when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense() -> LlamaForCausalLM:
    """2 blocks, hidden 128 (every format's group sizes divide it), tied embeddings."""
    config = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    )
    gen = torch.Generator().manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 if p.ndim > 1 else torch.ones_like(p))
    return model.eval()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fast_paths_agree_with_the_dequantized_reference(dense, fmt):
    """Acceptance: every format's decode path matches its dequantized reference within 1e-3 (float32)."""
    model = build_variant(dense, fmt)
    result = logit_agreement(model, tokens=8)
    assert result["agree"] and result["max_rel_diff"] < 1e-3 and result["argmax_match"] == 1.0
    assert sum(result["paths"].values()) == len(quantized_layers(model)) == 14
    fast = {"rtn": "cached-dense-matmul", "gptq": "cached-dense-matmul", "aqlm-1x16": "dequantize+matmul",
            "aqlm": "aqlm-lookup", "crvq": "gather+aqlm-lookup"}
    expected = next(path for prefix, path in fast.items() if fmt.startswith(prefix))
    assert result["paths"] == {expected: 14}


def test_agreement_fails_when_a_fast_path_is_wrong(dense, caplog):
    model = build_variant(dense, "aqlm-1x8")
    layer = next(iter(quantized_layers(model).values()))
    layer._lookup_plan().scales.mul_(1.5)  # a corrupted kernel plan: decode no longer matches the weights
    with caplog.at_level(logging.WARNING):
        result = logit_agreement(model, tokens=4)
    assert not result["agree"] and result["max_rel_diff"] > 1e-3
    assert "disagree" in caplog.text


def test_low_precision_agreement_is_judged_layer_by_layer(dense):
    """bfloat16 rounding moves the logits; a layer whose fast path is off still shows."""
    import copy

    half = copy.deepcopy(dense).to(torch.bfloat16)
    for fmt in ("rtn-4b-g64", "aqlm-1x8"):
        result = logit_agreement(build_variant(half, fmt), tokens=4)
        assert result["dtype"] == "bfloat16" and result["agree"], result
        worst = result["worst_layer"]
        assert worst["name"] in quantized_layers(build_variant(half, fmt)) and worst["fast_rel_err"] < 2e-2
    broken = build_variant(half, "aqlm-1x8")
    next(iter(quantized_layers(broken).values()))._lookup_plan().scales.mul_(1.5)
    result = logit_agreement(broken, tokens=4)
    assert not result["agree"] and result["worst_layer"]["fast_rel_err"] > 0.2


def test_dequantized_reference_is_temporary(dense):
    model = build_variant(dense, "crvq-1x8+3x8")
    ids = torch.tensor([[3]])
    with torch.inference_mode():
        model(input_ids=ids)
        with dequantized_reference(model):
            model(input_ids=ids)
            assert set(layer_paths(model).values()) == {"gather+aqlm-lookup"}  # reference_forward records nothing
        assert all("forward" not in layer.__dict__ for layer in quantized_layers(model).values())
    assert logit_agreement(dense) is None  # an unquantized model has nothing to check


def test_decode_throughput_records_the_protocol(dense):
    models = {"rtn": build_variant(dense, "rtn-4b-g64"), "crvq": build_variant(dense, "crvq-1x8+3x8"), "dense": dense}
    settings = DecodeSettings(batch_sizes=(1, 2), prompt_len=3, new_tokens=4, warmup=1, repeats=3)
    records = decode_throughput(models, settings, progress=False)
    assert set(records) == set(models)
    for name, record in records.items():
        assert record["device"] == "cpu" and record["timer"] == "perf_counter" and record["dtype"] == "float32"
        assert record["settings"]["new_tokens"] == 4 and record["settings"]["batch_sizes"] == [1, 2]
        assert [row["batch_size"] for row in record["results"]] == [1, 2]
        for row in record["results"]:
            per_seq = row["repeats_tokens_per_s"]
            assert len(per_seq) == 3 and all(v > 0 for v in per_seq)
            assert row["tokens_per_s_min"] <= row["tokens_per_s"] <= row["tokens_per_s_max"]
            assert row["total_tokens_per_s"] == pytest.approx(row["tokens_per_s"] * row["batch_size"])
            assert row["cuda_graphs"] is False and row["cuda_graphs_note"] == "not CUDA"
            assert row["prefill_s"] > 0 and row["peak_rss_gib"] > 0
            assert row["bytes_per_step"] > bytes_read_per_step(models[name]) and row["achieved_gbs"] > 0
    assert records["dense"]["paths"] == {} and records["dense"]["layer_paths"] == {}
    assert records["crvq"]["paths"] == {"gather+aqlm-lookup": 14}
    assert all(row["paths"] == {"gather+aqlm-lookup": 14} for row in records["crvq"]["results"])
    assert set(records["rtn"]["layer_paths"]) == set(quantized_layers(models["rtn"]))
    assert records["crvq"]["weights_gib"] < records["dense"]["weights_gib"]
    # a batch of 2 stores a KV cache twice as large
    assert records["dense"]["results"][1]["kv_cache_gib"] == pytest.approx(2 * records["dense"]["results"][0]["kv_cache_gib"])


def test_bytes_per_step_count_the_dense_cache_of_int_layers(dense):
    model = build_variant(dense, "rtn-4b-g64")
    stored = bytes_read_per_step(model)
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1]]))  # float32 on CPU: the cached dense weight is what is read
    dense_weights = sum(m.num_weights for m in quantized_layers(model).values()) * 4
    assert bytes_read_per_step(model) == stored + dense_weights
    assert weight_bytes(model) < weight_bytes(dense)


def _suite(tmp_path: Path, model_dir: Path, text_file: Path) -> Path:
    path = tmp_path / "tp.yaml"
    path.write_text(f"""
name: tp
output_dir: {tmp_path / 'results'}
models: [{{id: {model_dir}, name: tiny}}]
methods:
  - name: none
  - name: rtn
    params: {{bits: 4, group_size: 16}}
evaluations:
  perplexity: null
  throughput: {{batch_sizes: [1], prompt_len: 2, new_tokens: 4, warmup: 1, repeats: 2}}
""")
    return path


def test_runner_measures_throughput_with_the_reference(tmp_path, tiny_llama_dir, eval_text_file):
    from harness.runner import run_cell
    from harness.store import ResultStore
    from harness.suite import load_suite, resolve_cells

    path = _suite(tmp_path, tiny_llama_dir, eval_text_file)
    cells = resolve_cells(load_suite(path), path)
    store = ResultStore(tmp_path / "results")
    by_method = {cell.method: run_cell(cell, store, progress=False).dump() for cell in cells}
    rtn = by_method["rtn"]
    assert rtn["status"] == "ok", rtn.get("error")
    throughput = rtn["metrics"]["throughput"]
    assert throughput["paths"] == {"cached-dense-matmul": 14}
    row = throughput["results"][0]
    ref_row = throughput["reference"]["results"][0]
    assert row["speedup_vs_reference"] == pytest.approx(row["tokens_per_s"] / ref_row["tokens_per_s"])
    assert rtn["metrics"]["agreement"]["agree"] and rtn["metrics"]["agreement"]["max_rel_diff"] < 1e-3
    none = by_method["none"]
    assert none["status"] == "ok" and "reference" not in none["metrics"]["throughput"]
    assert "agreement" not in none["metrics"]


def test_throughput_spec_changes_the_key_only_when_given(tmp_path, tiny_llama_dir, eval_text_file):
    from harness.errors import SuiteError
    from harness.suite import load_suite, resolve_cells

    path = _suite(tmp_path, tiny_llama_dir, eval_text_file)
    with_tp = resolve_cells(load_suite(path), path)[1]
    without = with_tp.model_copy(update={"evaluations": with_tp.evaluations.model_copy(update={"throughput": None})})
    assert with_tp.key != without.key
    bad = path.read_text().replace("batch_sizes: [1]", "batch_sizes: [0]")
    path.write_text(bad)
    with pytest.raises(SuiteError, match="batch_sizes"):
        load_suite(path)


def test_decode_steps_pass_positions_and_a_replayed_step_matches_eager(dense):
    """The decode step takes its positions from a device tensor advanced in place: eager decoding
    reproduces a no-cache forward of the whole sequence, and the step the CUDA graph captures,
    replayed teacher-forced on eager's tokens (here run eagerly on CPU), gives the same logits."""
    from harness.metrics.throughput import _Decoder

    settings = DecodeSettings(prompt_len=3, new_tokens=5)
    for model in (dense, build_variant(dense, "aqlm-1x8")):
        dec = _Decoder(model, 2, settings)
        with torch.inference_mode():
            tokens, logits = dec._eager_trace(5)
            first = model(input_ids=dec.prompt, use_cache=False).logits[:, -1:].argmax(-1)  # the prefill's token
            full = model(input_ids=torch.cat([dec.prompt, first, tokens[:, :-1]], 1), use_cache=False).logits.float()
            expected = full[:, settings.prompt_len:].transpose(0, 1)  # step k sees position prompt_len + k
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
            assert int(dec.position) == settings.prompt_len + 5
            dec.static_ids = tokens[:, :1].clone()
            dec.static_logits = logits[0].clone()
            assert dec.check_replay(dec._graph_step, 5) == 0.0


def test_int_gemv_bytes_count_the_tensors_the_kernel_reads(dense):
    """The Triton int GEMV reads float32 zero x scale instead of the packed zeros."""
    model = build_variant(dense, "gptq-2b-g64-actorder")
    stored = bytes_read_per_step(model)
    layers = quantized_layers(model).values()
    for layer in layers:
        layer.last_path = "triton-int2-gemv"
    extra = sum(m.scales.numel() * 4 - m.qzeros.numel() * 4 for m in layers)
    assert bytes_read_per_step(model) == stored + extra
