"""End-to-end fine-tuning: distillation from the unquantized model lowers the student's KL."""
from __future__ import annotations

import pytest
import torch

from harness.finetune_e2e import distillation_kl, finetune_e2e, tunable_parameters
from harness.models import load_model
from harness.quantize import quantize
from harness.quantizer import QuantizedLinear
from harness.suite import FinetuneE2ESpec
from methods.aqlm import AQLMQuantizer

AQLM_FAST = {"num_codebooks": 1, "nbits_per_codebook": 4, "in_group_size": 8, "max_epochs": 1, "steps_per_epoch": 2,
             "kmeans_iters": 2}


def _sequences(n: int, seqlen: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _kl(student, teacher, ids) -> float:
    return float(distillation_kl(student(input_ids=ids).logits, teacher(input_ids=ids).logits))


@pytest.fixture(scope="module")
def quantized(tiny_llama_dir):
    teacher = load_model(str(tiny_llama_dir), dtype=torch.float32, device="cpu", progress=False)
    student = load_model(str(tiny_llama_dir), dtype=torch.float32, device="cpu", progress=False)
    calib = _sequences(12, 32, 1000)
    quantize(student.model, AQLMQuantizer(AQLMQuantizer.Config(**AQLM_FAST)), calibration=calib, progress=False)
    return student, teacher.model, calib


def test_distillation_kl_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    assert float(distillation_kl(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_kl(logits + torch.randn(logits.shape), logits)) > 0


def test_distillation_lowers_the_kl_to_the_teacher(quantized):
    student, teacher, calib = quantized
    held_out = _sequences(4, 32, 1000) + 7
    before_state = {k: v.clone() for k, v in student.model.state_dict().items()}
    kl_before = _kl(student.model, teacher, held_out)
    spec = FinetuneE2ESpec(epochs=4, lr=3e-3, batch_size=4, microbatch_size=2, val_fraction=0.25, patience=4)
    log = finetune_e2e(student.model, teacher, student.adapter, calib, spec, seed=0, progress=False)
    assert log["train_sequences"] == 9 and log["val_sequences"] == 3
    assert log["trainable_parameters"] > 0 and log["epochs"] == 4
    assert log["val_kl_best"] < log["val_kl_start"]
    assert log["train_kl_end"] < log["train_kl_start"]
    assert _kl(student.model, teacher, held_out) < kl_before  # sequences never trained on
    after = student.model.state_dict()
    assert list(after) == list(before_state)  # same keys, in the same order
    for name, value in after.items():
        assert value.dtype == before_state[name].dtype, name
        if ".codes_" in name:
            assert torch.equal(value, before_state[name]), name  # codes stay fixed
    changed = [n for n in after if "codebook_" in n and not torch.equal(after[n], before_state[n])]
    assert changed and any("norm" in n and not torch.equal(after[n], before_state[n]) for n in after)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_tunable_parameters_restores_everything_on_error(quantized):
    student, _, _ = quantized
    model = student.model
    buffers = {n: (b.dtype, b.clone()) for n, b in model.named_buffers()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with tunable_parameters(model) as params:
            assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
            layer = next(m for m in model.modules() if isinstance(m, QuantizedLinear))
            assert "codebook_0" in dict(layer.named_parameters(recurse=False))
            raise RuntimeError("boom")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for name, b in model.named_buffers():
        assert b.dtype == buffers[name][0] and torch.equal(b, buffers[name][1]), name


def test_gradient_checkpointing_gives_the_same_result(quantized):
    import copy

    student, teacher, calib = quantized
    results = []
    for checkpointing in (True, False):
        model = copy.deepcopy(student.model)
        spec = FinetuneE2ESpec(epochs=1, lr=1e-3, batch_size=4, microbatch_size=2, val_fraction=0.0,
                               gradient_checkpointing=checkpointing)
        log = finetune_e2e(model, teacher, student.adapter, calib[:8], spec, seed=3, progress=False)
        assert log["val_sequences"] == 0 and log["val_kl_start"] is None
        results.append(model.state_dict())
    assert all(torch.allclose(results[0][k].float(), results[1][k].float(), atol=1e-6) for k in results[0])
    assert not any(hasattr(b, "__dict__") and "forward" in b.__dict__ for b in student.adapter.blocks(student.model))
