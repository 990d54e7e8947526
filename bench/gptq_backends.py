"""Native GPTQ vs the external backends on the same real layers and the same H.

Usage (gptqmodel is not a project dependency; see methods/gptq/BACKENDS.md):
    python -m venv --system-site-packages /tmp/gptqmodel-venv
    /tmp/gptqmodel-venv/bin/pip install 'gptqmodel==7.6.0'
    /tmp/gptqmodel-venv/bin/python bench/gptq_backends.py [--block 3] [--num-sequences 8] [--seqlen 512]

Captures the inputs of every linear of one block of the embedded SmolLM2-135M (full-precision
model, `--num-sequences` x `--seqlen` calibration tokens of the embedded corpus), forms
H = mean x xᵀ (float64), and quantizes each layer with every available backend through
`GPTQQuantizer.quantize_linear`. Reports, per setting, the relative output error
tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of the stored (packed) layer, summed over the block's linears and
averaged as a ratio to native, and the quantization seconds. A backend that cannot run is
listed with its ImportError. Takes about 1.5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import time
from pathlib import Path

import torch
from torch import nn

from harness.data import calibration_batch
from harness.models import load_model
from harness.quantizer import LayerStats, QuantContext
from methods.gptq import GPTQConfig, GPTQQuantizer

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
SETTINGS = [
    ("4 bit g128", dict(bits=4, group_size=128)),
    ("4 bit g128 act_order", dict(bits=4, group_size=128, act_order=True)),
    ("3 bit g64", dict(bits=3, group_size=64)),
    ("3 bit g64 act_order", dict(bits=3, group_size=64, act_order=True)),
    ("2 bit g64", dict(bits=2, group_size=64)),
    ("4 bit per-row sym", dict(bits=4, group_size=-1, symmetric=True)),
]
BACKENDS = ["native", "gptqmodel", "auto-gptq"]


class _Stop(Exception):
    pass


def capture_hessians(model: nn.Module, ids: torch.Tensor, block: int) -> dict[str, tuple[torch.Tensor, int]]:
    """H (float64 mean of x xᵀ) and token count of every linear of `model.layers[block]`."""
    names = [f"model.layers.{block}.{n}" for n in LINEARS]
    sums: dict[str, list] = {n: [0.0, 0] for n in names}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name][0] = sums[name][0] + x.T @ x
            sums[name][1] += x.shape[0]
            if name == names[-1]:
                raise _Stop
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in ids.split(4):
                try:
                    model(batch)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return {n: (s / c, c) for n, (s, c) in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--num-sequences", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per layer (the fastest counts)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    backends: dict[str, str | None] = {}
    for backend in BACKENDS:
        try:
            GPTQQuantizer(GPTQConfig(backend=backend))
            backends[backend] = None
        except ImportError as exc:
            backends[backend] = str(exc)
    runnable = [b for b, err in backends.items() if err is None]

    loaded = load_model("smollm2-135m", dtype=torch.float32, device=torch.device("cpu"), progress=False)
    ids = calibration_batch("embedded", loaded.tokenizer, args.num_sequences, args.seqlen,
                            torch.Generator().manual_seed(0))
    stats = capture_hessians(loaded.model, ids, args.block)

    versions = f"torch {torch.__version__}"
    if "gptqmodel" in runnable:
        versions += f", gptqmodel {importlib.metadata.version('gptqmodel')}"
    lines = [
        f"# GPTQ backends on SmolLM2-135M block {args.block} (7 linears), same H",
        "",
        f"{versions}; H from {args.num_sequences}x{args.seqlen} calibration tokens; error = "
        "sum over the block's linears of tr(ΔW H ΔWᵀ) / sum of tr(W H Wᵀ), of the stored layers; "
        "'vs native' = mean over layers of the per-layer error ratio; seconds = all 7 layers, "
        f"fastest of {args.repeats} runs each (load average {os.getloadavg()[0]:.1f} at the start)",
        "",
        "| setting | backend | rel. error | vs native | seconds |",
        "|---|---|---:|---:|---:|",
    ]
    for label, params in SETTINGS:
        native_errors: list[float] = []
        for backend in runnable:
            quantizer = GPTQQuantizer(GPTQConfig(backend=backend, **params))
            num = den = 0.0
            ratios, seconds = [], 0.0
            for i, (name, (H, count)) in enumerate(stats.items()):
                W = loaded.model.get_submodule(name).weight.detach()
                ctx = QuantContext(layer_name=name, block_index=args.block, generator=torch.Generator())
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    quantizer.quantize_linear(loaded.model.get_submodule(name), LayerStats(H, count), ctx)
                    times.append(time.perf_counter() - t0)
                seconds += min(times)
                rel = ctx.log[-1]["rel_error"]
                energy = float(((W.double() @ H) * W.double()).sum())
                num, den = num + rel * energy, den + energy
                if backend == "native":
                    native_errors.append(rel)
                ratios.append(rel / native_errors[i])
            lines.append(f"| {label} | {backend} | {num / den:.5f} | {sum(ratios) / len(ratios):.3f} | {seconds:.2f} |")
    lines.append("")
    for backend, err in backends.items():
        if err is not None:
            lines.append(f"- `{backend}` not run: {err}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
