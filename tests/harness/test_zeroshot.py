"""Zero-shot accuracy: the harness evaluator against lm-eval's own run, quantized in-memory
models, the per-task cache, and hub tasks failing fast and clearly while the cell is recorded."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.metrics import zeroshot
from harness.metrics.zeroshot import evaluate_zero_shot
from harness.quantizer import QuantizedLinear
from harness.tasks import CLOZE4, LASTWORD, PACK_DIR, PACK_TASKS

LIMIT = 12


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from harness.models import load_model

    return load_model(str(tiny_llama_dir), dtype=torch.float32, device=torch.device("cpu"), progress=False)


def test_harness_equals_lm_eval_own_run(tiny, tiny_llama_dir) -> None:
    """Acceptance: the harness (in-memory model) gives exactly lm-eval's own result (lm-eval loads the model)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    ours = evaluate_zero_shot(tiny.model, tiny.tokenizer, list(PACK_TASKS), batch_size=4, limit=LIMIT)
    theirs = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_llama_dir), "dtype": "float32", "device": "cpu"},
        tasks=list(PACK_TASKS),
        task_manager=TaskManager(include_path=str(PACK_DIR), include_defaults=False),
        num_fewshot=0, limit=LIMIT, batch_size=4, log_samples=False,
    )
    for task in PACK_TASKS:
        mine, ref = ours.tasks[task], theirs["results"][task]
        assert mine.error is None and mine.samples == LIMIT
        assert mine.acc == ref["acc,none"] and mine.acc_stderr == ref["acc_stderr,none"]
        assert mine.version == theirs["versions"][task]
    assert ours.tasks[CLOZE4].acc_norm == theirs["results"][CLOZE4]["acc_norm,none"]
    assert ours.tasks[LASTWORD].acc_norm is None  # a loglikelihood task has no acc_norm
    assert ours.to_dict()["average"]["acc"] == pytest.approx(
        (theirs["results"][CLOZE4]["acc,none"] + theirs["results"][LASTWORD]["acc,none"]) / 2
    )


def test_quantized_model_is_evaluated_in_memory(tiny) -> None:
    from harness.quantize import quantize
    from harness.registry import get_method

    model = copy.deepcopy(tiny.model)
    rtn = get_method("rtn")
    quantize(model, rtn(rtn.Config(bits=2, group_size=64)), progress=False)
    packed = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert packed
    calls = []
    handle = packed[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        result = evaluate_zero_shot(model, tiny.tokenizer, [CLOZE4], batch_size=4, limit=LIMIT)
    finally:
        handle.remove()
    r = result.tasks[CLOZE4]
    assert r.error is None and 0.0 <= r.acc <= 1.0 and 0.0 <= r.acc_norm <= 1.0 and r.samples == LIMIT
    assert calls, "lm-eval did not run the packed layers of the in-memory model"
    assert result.to_dict()["lm_eval_version"] == zeroshot.lm_eval_version() and result.errors == []


def test_results_are_cached_per_task(tiny, tmp_path, monkeypatch) -> None:
    first = evaluate_zero_shot(tiny.model, tiny.tokenizer, [LASTWORD], limit=LIMIT, cache_dir=tmp_path)
    assert (tmp_path / f"{LASTWORD}.json").is_file() and not first.tasks[LASTWORD].cached

    def no_run(*args, **kwargs):
        raise AssertionError("a cached task was evaluated again")

    monkeypatch.setattr(zeroshot, "_run_task", no_run)
    again = evaluate_zero_shot(tiny.model, tiny.tokenizer, [LASTWORD], limit=LIMIT, cache_dir=tmp_path)
    assert again.tasks[LASTWORD].cached and again.tasks[LASTWORD].acc == first.tasks[LASTWORD].acc
    other_limit = evaluate_zero_shot(tiny.model, tiny.tokenizer, [LASTWORD], limit=LIMIT + 1, cache_dir=tmp_path)
    assert other_limit.tasks[LASTWORD].error is not None  # a different limit is not served from the cache


def _cell(tiny_llama_dir: Path, text_file: Path, tasks: list[str]):
    from harness.suite import Cell, EvaluationsSpec, ModelSpec, PerplexitySpec, ZeroShotSpec

    return Cell(
        suite="zs", model=ModelSpec(id=str(tiny_llama_dir), name="tiny"), method="rtn", method_label="rtn",
        budget=None, params={"bits": 4, "group_size": 64, "symmetric": False}, calibration=None,
        evaluations=EvaluationsSpec(
            perplexity=PerplexitySpec(datasets=[str(text_file)], seqlen=64, max_windows=4),
            zero_shot=ZeroShotSpec(tasks=tasks, batch_size=4, limit=LIMIT),
        ),
        seed=0, device="cpu", dtype="float32", save_model=False,
    )


def test_hub_task_fails_fast_and_cell_is_recorded(tiny_llama_dir, eval_text_file, tmp_path) -> None:
    """Acceptance: with the hub blocked (tests run offline), `piqa` gets a clear error within
    30 s, the pack task and the cell's other metrics are still recorded, and the cell is ok."""
    from harness.evaluations.zero_shot import zeroshot_cache_dir
    from harness.runner import run_cell
    from harness.store import ResultStore

    store = ResultStore(tmp_path)
    cell = _cell(tiny_llama_dir, eval_text_file, ["piqa", CLOZE4])
    start = time.perf_counter()
    record = run_cell(cell, store, progress=False).dump()
    assert time.perf_counter() - start < 60
    assert record["status"] == "ok", record.get("error")
    metrics = record["metrics"]
    assert metrics["bits"] > 0 and metrics["perplexity"][str(eval_text_file)]["windows"] == 4
    zs = metrics["zero_shot"]
    assert zs["seconds"] < 30 and zs["errors"] == ["piqa"]
    message = zs["tasks"]["piqa"]["error"]["message"]
    for part in ("'piqa'", "baber/piqa", "not in the local datasets cache", "offline mode is set",
                 CLOZE4, "HF_DATASETS_OFFLINE=1"):
        assert part in message, part
    assert zs["tasks"]["piqa"]["acc"] is None and zs["tasks"][CLOZE4]["acc"] is not None
    assert zs["average"] == {"acc": zs["tasks"][CLOZE4]["acc"], "acc_norm": zs["tasks"][CLOZE4]["acc_norm"],
                             "tasks": [CLOZE4]}
    cache = zeroshot_cache_dir(store, cell)
    assert sorted(p.name for p in cache.iterdir()) == [f"{CLOZE4}.json"]  # errors are not cached


_NO_HUB_SCRIPT = """
import json, sys, time, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from harness.metrics.zeroshot import evaluate_zero_shot
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
start = time.perf_counter()
result = evaluate_zero_shot(model, tokenizer, ["piqa"])
print(json.dumps({"seconds": time.perf_counter() - start, "error": result.tasks["piqa"].error}))
"""


def test_unreachable_hub_without_offline_variables_fails_fast(tiny_llama_dir) -> None:
    """No HF_*_OFFLINE set and a hub endpoint that refuses connections: no retry loop, a clear error."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: connection refused at once, nothing leaves the machine
    proc = subprocess.run([sys.executable, "-c", _NO_HUB_SCRIPT, str(tiny_llama_dir)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["seconds"] < 30
    assert "'piqa'" in out["error"]["message"] and "cannot be reached: it did not answer" in out["error"]["message"]


def test_unknown_task_names_a_fix(tiny, monkeypatch) -> None:
    from lm_eval.tasks import TaskManager

    # the real run indexes lm-eval's whole task tree first (~10 s); the pack alone shows the same error path
    monkeypatch.setattr(zeroshot, "task_manager", lambda tasks: TaskManager(include_path=str(PACK_DIR), include_defaults=False))
    result = evaluate_zero_shot(tiny.model, tiny.tokenizer, ["embedded_clozee4"], limit=2)
    message = result.tasks["embedded_clozee4"].error["message"]
    assert "unknown zero-shot task 'embedded_clozee4'" in message and "Did you mean embedded_cloze4" in message
