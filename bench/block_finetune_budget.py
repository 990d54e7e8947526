"""Block fine-tuning budget: several fine-tuning settings from the same quantized block.

Usage:
  python bench/block_finetune_budget.py [--method aqlm] [--blocks 2]
      [--settings 'lr1e-3_3={"lr": 1e-3, "max_epochs": 3}' ...]

Quantizes the first `--blocks` blocks of the embedded model (SmolLM2-135M) with the published
budget-1 algorithm at the paper settings of bench/paper_settings_speed.py, with the layer
schedule 25 x 4e-4 (its per-layer errors match 100 x 1e-4, bench/results/paper_settings_speed.md
section 4). At every block, each fine-tuning setting starts from the same quantized block (the
state is restored between them) and the same shuffling seed; printed per setting: epochs,
seconds, the validation MSE before and after every epoch. The block keeps the last setting's
result and the pipeline goes on with it, so list the reference setting last. Settings are
`methods.aqlm.finetune.finetune_block` arguments over the paper's (lr 1e-4, betas (0.9, 0.999),
10 epochs, 8 sequences per step, 1/10 held out, patience 3, best epoch kept), plus
`"dtype": "bfloat16"` for autocast.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.windows import calibration_batch  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.pipeline import run_pipeline  # noqa: E402
from harness.registry import build_quantizer  # noqa: E402
from methods.aqlm.finetune import finetune_block, finetune_options  # noqa: E402
from bench.paper_settings_speed import PAPER, FirstBlocks  # noqa: E402

DEFAULT_SETTINGS = ['lr1e-3_3={"lr": 1e-3, "max_epochs": 3}', 'lr3e-4_4={"lr": 3e-4, "max_epochs": 4}', "paper={}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="aqlm", choices=["aqlm", "crvq"])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", action="append", default=None, metavar="NAME=JSON")
    args = parser.parse_args()
    settings = [(name, json.loads(spec)) for name, _, spec in
                (s.partition("=") for s in (args.settings or DEFAULT_SETTINGS))]
    torch.set_num_threads(args.threads)
    quantizer = build_quantizer(args.method, 1, {**PAPER, "steps_per_epoch": 25, "lr": 4e-4})
    engine = getattr(quantizer, "engine", quantizer)  # CRVQ fine-tunes through its AQLM engine
    paper_finetune = finetune_options(engine.config)  # the paper's (PAPER), the base every setting overrides

    def compare_settings(block, inputs, targets, ctx) -> None:
        state = copy.deepcopy(block.state_dict())
        for name, overrides in settings:
            block.load_state_dict(state)
            options = {**paper_finetune, **overrides}
            if "dtype" in options:
                options["compute_dtype"] = getattr(torch, options.pop("dtype"))
            entry = finetune_block(block, inputs, targets, generator=torch.Generator().manual_seed(0), **options)
            print(json.dumps({
                "block": ctx.block_index, "setting": name, "epochs": entry["finetune_epochs"],
                "seconds": entry["finetune_seconds"], "val_mse_start": round(entry["finetune_val_mse_start"], 7),
                "val_mse": [round(v, 7) for v in entry["finetune_val_mse_history"]],
            }), flush=True)

    engine.finetune_block = compare_settings
    loaded = load_model("smollm2-135m", dtype=torch.float32, device=torch.device("cpu"), progress=False)
    calibration = calibration_batch("embedded", loaded.tokenizer, 110, 512, torch.Generator().manual_seed(0))
    run_pipeline(loaded.model, quantizer, FirstBlocks(loaded.adapter, args.blocks), calibration, seed=0,
                 progress=False)


if __name__ == "__main__":
    main()
