"""CRVQ through the engine on the tiny random LLaMA: sequential pipeline with per-block
checkpoints (resume), bit counting of the whole model, save and reload."""
from __future__ import annotations

import torch
from safetensors import safe_open

from harness.checkpoint import load_quantized, save_quantized
from harness.metrics.bits import count_bits
from harness.models.adapters import get_adapter, iter_block_linears
from harness.pipeline import run_pipeline
from methods.crvq import CRVQConfig, CRVQLinear, CRVQQuantizer

#: hidden 64 / intermediate 128: a ratio of 1/8 gives 1 critical group on 64 inputs, 2 on 128.
PARAMS = {"nbits": 4, "extended_nbits": 4, "num_extended_codebooks": 2, "critical_ratio": 0.125, "max_epochs": 2,
          "steps_per_epoch": 5, "kmeans_iters": 5, "importance_kmeans_iters": 5}


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_pipeline_resume_bits_and_reload(tiny_llama_dir, tmp_path):
    calibration = torch.randint(0, 1000, (8, 32), generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(2))
    model = _model(tiny_llama_dir)
    adapter = get_adapter(model)
    names = [name for name, _, _ in iter_block_linears(model, adapter)]
    quantizer = CRVQQuantizer(CRVQConfig(**PARAMS))
    logs = run_pipeline(model, quantizer, adapter, calibration, progress=False, batch_size=4,
                        checkpoint_dir=tmp_path / "ckpt")
    layers = {n: model.get_submodule(n) for n in names}
    assert all(isinstance(m, CRVQLinear) for m in layers.values())
    assert {e["n_crit"] for e in logs} == {1, 2}
    expected = _logits(model, ids)

    # every block checkpointed: a rerun loads them instead of quantizing again
    assert len(list((tmp_path / "ckpt").glob("block_*.json"))) == 2
    resumed = _model(tiny_llama_dir)
    logs2 = run_pipeline(resumed, quantizer, get_adapter(resumed), calibration, progress=False, batch_size=4,
                         checkpoint_dir=tmp_path / "ckpt")
    assert [e["name"] for e in logs2] == [e["name"] for e in logs]
    torch.testing.assert_close(_logits(resumed, ids), expected)

    bits = count_bits(model, linear_names=names)
    weights = sum(m.num_weights for m in layers.values())
    assert bits["bits"] == sum(m.stored_bits() for m in layers.values()) / weights
    assert abs(bits["bits_formula"] - bits["bits"]) < 1e-9
    assert bits["bits_paper"] < bits["bits"]
    bits_for_shape = {(m.out_features, m.in_features): quantizer.bits_for_shape(m.out_features, m.in_features)
                      for m in layers.values()}
    for m in layers.values():
        assert abs(bits_for_shape[(m.out_features, m.in_features)][0] - m.measured_bits()) < 1e-12

    save_quantized(model, tmp_path / "saved")
    reloaded = load_quantized(tmp_path / "saved")  # non-quantized tensors come back from float16
    for name, layer in layers.items():
        again = reloaded.get_submodule(name)
        assert isinstance(again, CRVQLinear) and torch.equal(again.perm, layer.perm)
        assert torch.equal(again.dequantize(), layer.dequantize())
    torch.testing.assert_close(_logits(reloaded, ids), expected, rtol=1e-2, atol=1e-2)
    assert not torch.equal(_logits(reloaded, ids), expected)  # the float32 embedding was rounded

    # exact=True: what float16 would change stays float32, so the reload is the evaluated model
    deploy_bytes = (tmp_path / "saved" / "model.safetensors").stat().st_size
    save_quantized(model, tmp_path / "exact", exact=True)
    exact = load_quantized(tmp_path / "exact")
    assert torch.equal(_logits(exact, ids), expected)
    stored = safe_open(str(tmp_path / "exact" / "model.safetensors"), "pt")
    assert stored.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert (tmp_path / "exact" / "model.safetensors").stat().st_size > deploy_bytes
