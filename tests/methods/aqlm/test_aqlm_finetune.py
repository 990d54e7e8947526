"""AQLM block fine-tuning on the tiny random LLaMA: it lowers the block error, keeps the codes
and the stored layout, restores the best state, is deterministic, and is off by default."""
from __future__ import annotations

import pytest
import torch

from harness.models.adapters import get_adapter
from harness.calibration import capture_block_inputs
from harness.pipeline import run_pipeline
from harness.quantizer import LayerStats, QuantContext
from methods.aqlm import AQLMConfig, AQLMLinear, AQLMQuantizer

#: Small enough for a 2-core machine: 16 codebook entries for vectors of 8 weights (a coarse
#: quantizer of the random weights, which leaves fine-tuning something to recover), few epochs.
BASE = {"num_codebooks": 1, "nbits_per_codebook": 4, "in_group_size": 8, "max_epochs": 2, "steps_per_epoch": 10,
        "kmeans_iters": 5}
TUNE = {**BASE, "finetune": True, "finetune_lr": 1e-3, "finetune_max_epochs": 8, "finetune_batch_size": 4,
        "finetune_val_fraction": 0.25, "finetune_patience": 2}

def _load_tiny(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture
def calibration():
    """16 sequences of 32 tokens: 4 pipeline batches of 4 (3 for training, 1 for validation)."""
    return torch.randint(0, 1000, (16, 32), generator=torch.Generator().manual_seed(1))


def _quantize(path, calibration, params, **kwargs):
    model = _load_tiny(path)
    quantizer = AQLMQuantizer(AQLMConfig(**params))
    logs = run_pipeline(model, quantizer, get_adapter(model), calibration, progress=False, batch_size=4, **kwargs)
    return model, logs


def _last_block_outputs(model, ids):
    """The last decoder block's outputs (the final norm's input) [n, seqlen, hidden]."""
    seen = []
    handle = model.model.norm.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    return seen[0]


def test_finetuning_lowers_the_error_against_the_full_precision_model(tiny_llama_dir, calibration):
    """Per block, the held-out validation MSE drops; for the whole model, the last block's
    outputs on the calibration sequences get closer to the full-precision model's. (Unseen
    sequences are not compared: on a random model with 16 calibration sequences the gain
    there is within noise.)"""
    reference = _last_block_outputs(_load_tiny(tiny_llama_dir), calibration)
    plain, plain_logs = _quantize(tiny_llama_dir, calibration, BASE)
    tuned, tuned_logs = _quantize(tiny_llama_dir, calibration, TUNE)
    assert not any("finetune_epochs" in e for e in plain_logs)
    entries = [e for e in tuned_logs if "finetune_epochs" in e]
    assert [e["name"] for e in entries] == ["model.layers.0", "model.layers.1"]
    for e in entries:
        assert {"finetune_epochs", "finetune_train_mse_start", "finetune_train_mse_end", "finetune_val_mse_start",
                "finetune_val_mse_best", "finetune_seconds"} <= set(e)
        assert 1 <= e["finetune_epochs"] <= 8
        assert e["finetune_val_mse_best"] < e["finetune_val_mse_start"]
        assert e["finetune_train_mse_end"] < e["finetune_train_mse_start"]
    plain_error = (_last_block_outputs(plain, calibration) - reference).pow(2).mean()
    tuned_error = (_last_block_outputs(tuned, calibration) - reference).pow(2).mean()
    print(f"last block output MSE on the calibration sequences: {plain_error:.4g} -> {tuned_error:.4g}")
    assert tuned_error < 0.97 * plain_error


def _quantized_block(path, calibration, params):
    """(block 0 with its linears quantized, its BlockData, full-precision targets, quantizer)."""
    model = _load_tiny(path)
    adapter = get_adapter(model)
    data = capture_block_inputs(model, adapter, calibration, batch_size=4, storage=torch.device("cpu"))
    block = adapter.blocks(model)[0]
    with torch.inference_mode():
        targets = torch.cat([data.run(block, hidden, kwargs) for _, hidden, kwargs in data.batches()])
    quantizer = AQLMQuantizer(AQLMConfig(**params))
    for group in adapter.linear_groups(block):
        for name in group:
            linear = block.get_submodule(name)
            stats = LayerStats(torch.eye(linear.in_features, dtype=torch.float64), 1)
            ctx = QuantContext(name, 0, torch.Generator().manual_seed(0), progress=False)
            block.set_submodule(name, quantizer.quantize_linear(linear, stats, ctx))
    return block, data, targets, quantizer


def _state(block):
    return {k: v.clone() for k, v in block.state_dict().items()}


def test_finetuning_changes_only_codebooks_scales_and_norms(tiny_llama_dir, calibration):
    block, data, targets, quantizer = _quantized_block(tiny_llama_dir, calibration, TUNE)
    before = _state(block)
    flags = {name: p.requires_grad for name, p in block.named_parameters()}
    ctx = QuantContext("model.layers.0", 0, torch.Generator().manual_seed(0), progress=False)
    quantizer.finetune_block(block, data, targets, ctx)
    after = block.state_dict()
    assert list(after) == list(before)  # same keys, same order
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}
    assert {name: p.requires_grad for name, p in block.named_parameters()} == flags
    assert not block.training
    layers = [m for m in block.modules() if isinstance(m, AQLMLinear)]
    assert layers and all(not m._parameters for m in layers)  # codebooks and scales are buffers again
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed, "fine-tuning changed nothing"
    assert all(k.rsplit(".", 1)[-1].startswith(("codebook_", "scales")) or "norm" in k for k in changed), changed
    assert any("norm" in k for k in changed) and any("codebook_" in k for k in changed)
    (entry,) = ctx.log
    assert entry["finetune_val_mse_best"] < entry["finetune_val_mse_start"]
    with torch.inference_mode():  # the packed layers still compute their stored weights
        x = torch.randn(5, layers[0].in_features)
        torch.testing.assert_close(layers[0](x), x @ layers[0].dequantize().T)


def test_keep_best_restores_the_start_when_no_epoch_improves(tiny_llama_dir, calibration):
    params = {**TUNE, "finetune_lr": 50.0, "finetune_max_epochs": 2, "finetune_patience": 1}
    block, data, targets, quantizer = _quantized_block(tiny_llama_dir, calibration, params)
    before = _state(block)
    ctx = QuantContext("model.layers.0", 0, torch.Generator().manual_seed(0), progress=False)
    quantizer.finetune_block(block, data, targets, ctx)
    (entry,) = ctx.log
    assert entry["finetune_best_epoch"] == 0 and entry["finetune_val_mse_best"] == entry["finetune_val_mse_start"]
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_without_validation_all_epochs_run(tiny_llama_dir, calibration):
    params = {**TUNE, "finetune_val_fraction": 0.0, "finetune_max_epochs": 2, "finetune_max_sequences": 8}
    block, data, targets, quantizer = _quantized_block(tiny_llama_dir, calibration, params)
    ctx = QuantContext("model.layers.0", 0, torch.Generator().manual_seed(0), progress=False)
    quantizer.finetune_block(block, data, targets, ctx)
    (entry,) = ctx.log
    assert entry["finetune_epochs"] == 2
    assert entry["finetune_val_mse_start"] is None and entry["finetune_val_mse_best"] is None


def test_finetuning_is_off_by_default_and_keeps_no_targets(tiny_llama_dir, calibration, monkeypatch):
    assert not AQLMQuantizer(AQLMConfig()).finetunes_blocks()
    assert AQLMQuantizer(AQLMConfig(finetune=True)).finetunes_blocks()
    calls = []
    monkeypatch.setattr(AQLMQuantizer, "finetune_block", lambda self, *args: calls.append(args))
    _, logs = _quantize(tiny_llama_dir, calibration[:4], BASE)
    assert calls == [] and not any("finetune_epochs" in e for e in logs)


def test_same_seed_gives_identical_codes_and_codebooks(tiny_llama_dir, calibration):
    """The whole pipeline with fine-tuning (bfloat16 autocast, as the quickstart runs it), twice."""
    params = {**TUNE, "finetune_max_epochs": 2}
    a, _ = _quantize(tiny_llama_dir, calibration[:8], params, compute_dtype=torch.bfloat16)
    b, _ = _quantize(tiny_llama_dir, calibration[:8], params, compute_dtype=torch.bfloat16)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert any(".codes_0" in k for k in state_a)
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


def test_bfloat16_finetuning_runs_the_block_in_bfloat16_and_keeps_float32_state(tiny_llama_dir, calibration):
    """`finetune_dtype: bfloat16` autocasts the passes (the linears' training outputs are bfloat16) while
    the tuned parameters, the log's MSEs and the stored layout stay as with float32; it still
    lowers the validation MSE, and the history has one entry per epoch."""
    params = {**TUNE, "finetune_dtype": "bfloat16", "finetune_max_epochs": 3}
    block, data, targets, quantizer = _quantized_block(tiny_llama_dir, calibration, params)
    before = block.state_dict()
    dtypes_seen: set[torch.dtype] = set()
    layers = [m for m in block.modules() if isinstance(m, AQLMLinear)]
    handles = [  # the training passes (the validation passes may take the table-lookup path)
        m.register_forward_hook(lambda mod, args, out: dtypes_seen.add(out.dtype) if out.requires_grad else None)
        for m in layers
    ]
    ctx = QuantContext("model.layers.0", 0, torch.Generator().manual_seed(0), progress=False)
    quantizer.finetune_block(block, data, targets, ctx)
    for h in handles:
        h.remove()
    assert dtypes_seen == {torch.bfloat16}
    assert data.compute_dtype == torch.float32  # the pipeline's data is not changed
    after = block.state_dict()
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}
    (entry,) = ctx.log
    assert len(entry["finetune_val_mse_history"]) == entry["finetune_epochs"]
    assert min(entry["finetune_val_mse_history"]) == entry["finetune_val_mse_best"] < entry["finetune_val_mse_start"]


def test_the_default_finetuning_dtype_is_the_calibrations_and_leaves_record_params_unchanged(
    tiny_llama_dir, calibration
):
    """Without `finetune_dtype` the passes use the calibration dtype (float32 here), and the
    resolved params a cell stores do not name the field (the keys of earlier cells hold); set,
    it is part of them."""
    from harness.registry import method_config

    block, data, targets, quantizer = _quantized_block(tiny_llama_dir, calibration, TUNE)
    dtypes_seen: set[torch.dtype] = set()
    layers = [m for m in block.modules() if isinstance(m, AQLMLinear)]
    handles = [m.register_forward_hook(lambda mod, args, out: dtypes_seen.add(out.dtype)) for m in layers]
    quantizer.finetune_block(block, data, targets, QuantContext("model.layers.0", 0, torch.Generator(), progress=False))
    for h in handles:
        h.remove()
    assert dtypes_seen == {torch.float32}
    for method in ("aqlm", "crvq"):
        assert "finetune_dtype" not in method_config(method, 1, {}).model_dump(mode="json")
        dumped = method_config(method, 1, {"finetune_dtype": "bfloat16"}).model_dump(mode="json")
        assert dumped["finetune_dtype"] == "bfloat16"
        assert method_config(method, params=dumped).finetune_dtype == "bfloat16"  # the dump round-trips
