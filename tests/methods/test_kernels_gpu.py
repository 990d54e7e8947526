"""The Triton decode kernels on a GPU (`pytest -m gpu`; bench/gpu_check.sh runs them first).

Every bench format (RTN/GPTQ 2-4 bit g64/g128, AQLM 1x8/2x8/1x16, CRVQ) at LLaMA-2-7B's MLP
shapes and at a ragged small shape, in float16 and bfloat16, batch 1 and 8: the layer takes its
Triton kernel, its output is finite and within twice the same-dtype dequantized reference's error
(+ one ulp) of float32 truth, and two calls agree to rounding (split-K atomics add in any order).
Then the whole decode loop on a tiny LLaMA: logit agreement and decoding captured in a CUDA graph
for every format.

Skipped without CUDA. `GPU_TEST_DEVICE=cpu` with `TRITON_INTERPRET=1` runs the same checks on CPU
under Triton's interpreter at small shapes (the script's rehearsal); graph capture is CUDA only.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.gpu

DEVICE = torch.device(os.environ.get("GPU_TEST_DEVICE", "cuda"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("on CPU the kernels run only under TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from bench.formats import FORMATS, _generator, build_variant  # noqa: E402
from harness.metrics.agreement import logit_agreement, quantized_layers  # noqa: E402
from harness.metrics.throughput import DecodeSettings, decode_throughput  # noqa: E402

CUDA = DEVICE.type == "cuda"
#: (out, in): LLaMA-2-7B's gate/up and down projections, and a ragged shape (out not a multiple of the tiles)
SHAPES = [(11008, 4096), (4096, 11008), (1000, 1024)] if CUDA else [(96, 256)]
DTYPES = [torch.float16, torch.bfloat16]


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.fixture(scope="module")
def layers():
    """One packed layer per (format, shape), built once on the device."""
    built = {}
    for out, inp in SHAPES:
        base = nn.Linear(inp, out, bias=False, device=DEVICE)
        nn.init.normal_(base.weight, std=0.02, generator=torch.Generator(device=DEVICE).manual_seed(0))
        for fmt in FORMATS:
            built[fmt, out, inp] = FORMATS[fmt](base, _generator(f"{fmt}:{out}x{inp}", 0, DEVICE)).to(DEVICE)
    return built


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_kernel_matches_the_dequantized_reference(layers, fmt, dtype, shape):
    layer = layers[fmt, *shape]
    truth_weight = layer.dequantize().to(DEVICE)
    eps = float(torch.finfo(dtype).eps)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    with torch.inference_mode():
        for n in (1, 8):
            x = torch.randn(n, shape[1], device=DEVICE, generator=gen).to(dtype)
            fast = layer(x)
            assert layer.path_used().startswith("triton-"), (fmt, n, layer.path_used())
            assert fast.dtype == dtype and fast.shape == (n, shape[0]) and bool(torch.isfinite(fast).all())
            truth = nn.functional.linear(x.float(), truth_weight)
            e_fast, e_ref = _rel(fast, truth), _rel(layer.reference_forward(x), truth)
            assert e_fast <= 2 * e_ref + eps, f"{fmt} {dtype} n={n}: fast {e_fast:.2e} vs reference {e_ref:.2e}"
            again = layer(x)
            assert _rel(again, fast) <= 2 * eps, f"{fmt} {dtype} n={n}: two calls differ by {_rel(again, fast):.2e}"


@pytest.fixture(scope="module")
def tiny():
    """A 2-block LLaMA (hidden 256: every format's groups divide it) in float16 on the device
    (1 block of hidden 128 under the interpreter)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4) if CUDA else \
        dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2)
    config = LlamaConfig(vocab_size=512, **shape, max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    return model.eval()


#: Formats of the whole-model test: all on CUDA; one of each kernel family under the (slow) interpreter
MODEL_FORMATS = list(FORMATS) if CUDA else ["gptq-2b-g128-actorder", "aqlm-2x8", "crvq-1x8+3x8"]


def test_every_format_agrees_and_decodes_in_a_cuda_graph(tiny):
    models = {"dense": tiny, **{fmt: build_variant(tiny, fmt) for fmt in MODEL_FORMATS}}
    for fmt in MODEL_FORMATS:
        result = logit_agreement(models[fmt], tokens=8 if CUDA else 3)
        assert result["agree"], (fmt, result)
        assert all(p.startswith("triton-") for p in result["paths"]), (fmt, result["paths"])
    settings = DecodeSettings(batch_sizes=(1, 8) if CUDA else (2,), prompt_len=4 if CUDA else 1,
                              new_tokens=16 if CUDA else 2, warmup=1 if CUDA else 0, repeats=1)
    records = decode_throughput(models, settings, progress=False)
    for name, record in records.items():
        for row in record["results"]:
            assert row["tokens_per_s"] > 0
            if CUDA:
                assert row["cuda_graphs"], (name, row["batch_size"], row["cuda_graphs_note"])
            if name != "dense":
                assert all(p.startswith("triton-") for p in row["paths"]), (name, row["paths"])
        assert len(quantized_layers(models[name])) == (0 if name == "dense" else 7 * tiny.config.num_hidden_layers)
