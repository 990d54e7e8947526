"""Run one cell end to end: load, (calibrate), quantize, measure bits, save, evaluate, record."""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness import environment
from harness.environment import peak_memory
from harness.checkpoint import save_quantized
from harness.data import calibration_batch, eval_windows, token_hash
from harness.metrics.bits import count_bits
from harness.metrics.perplexity import perplexity
from harness.models import load_model
from harness.models.adapters import iter_block_linears
from harness.quantize import quantize
from harness.registry import get_method
from harness.store import ResultStore
from harness.suite import Cell

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def base_record(cell: Cell) -> dict[str, Any]:
    method = get_method(cell.method)
    return {
        "key": cell.key,
        "label": cell.label,
        "suite": cell.suite,
        "model": {"label": cell.model.label, "id": cell.model.id},
        "method": cell.method,
        "method_label": cell.method_label,
        "budget": cell.budget,
        "params": cell.params,
        "reference": not method.modifies_weights,
        "cell": cell.model_dump(mode="json"),
    }


def failed_record(cell: Cell, error_type: str, message: str, tb: str | None) -> dict[str, Any]:
    record = base_record(cell)
    record.update(
        status="failed",
        error={"type": error_type, "message": message, "traceback": tb},
        finished_at=_now(),
    )
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_cell(cell: Cell, store: ResultStore, *, progress: bool = True, base_dir: Path | None = None) -> dict[str, Any]:
    """Execute `cell` and write its record (ok or failed) into `store`; returns the record."""
    try:
        record = _execute(cell, store, progress=progress, base_dir=base_dir)
    except Exception as exc:  # a failed cell is recorded; the suite goes on
        logger.error("cell %s failed: %s: %s", cell.label, type(exc).__name__, exc)
        record = failed_record(cell, type(exc).__name__, str(exc), traceback.format_exc())
    store.put(record)
    if record["status"] == "ok":  # per-block checkpoints are only needed until the record exists
        shutil.rmtree(checkpoint_dir(store, cell), ignore_errors=True)
    return record


def checkpoint_dir(store: ResultStore, cell: Cell) -> Path:
    return store.root / "checkpoints" / cell.key


def _execute(cell: Cell, store: ResultStore, *, progress: bool, base_dir: Path | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    device = environment.resolve_device(cell.device)
    dtype = _DTYPES[cell.dtype]
    method_cls = get_method(cell.method)
    method_cls.validate_environment()
    quantizer = method_cls(method_cls.Config.model_validate(cell.params))

    loaded = load_model(cell.model, dtype=dtype, device=device, progress=progress, base_dir=base_dir)
    model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    default_seqlen = cell.model.seqlen or adapter.default_seqlen(model.config)
    t_loaded = time.perf_counter()

    calibration_info = None
    calibration = None
    if cell.calibration is not None:
        calib = cell.calibration
        seqlen = calib.seqlen or default_seqlen
        generator = torch.Generator().manual_seed(calib.seed if calib.seed is not None else cell.seed)
        calibration = calibration_batch(
            calib.source, tokenizer, calib.num_sequences, seqlen, generator, base_dir=base_dir
        )
        calibration_info = {
            "source": calib.source,
            "num_sequences": int(calibration.shape[0]),
            "seqlen": int(calibration.shape[1]),
            "seed": calib.seed,
            "dtype": calib.dtype,
            "token_hash": token_hash(calibration),
        }

    linear_names = [name for name, _, _ in iter_block_linears(model, adapter)]
    layers = quantize(
        model, quantizer, adapter=adapter, calibration=calibration, seed=cell.seed,
        progress=progress, checkpoint_dir=checkpoint_dir(store, cell),
        calibration_dtype=_DTYPES[cell.calibration.dtype] if cell.calibration else torch.float32,
    )
    t_quantized = time.perf_counter()

    bits = count_bits(model, linear_names=linear_names)
    saved_model = None
    if cell.save_model:
        saved_model = store.model_dir(cell.key)
        size_bytes = save_quantized(model, saved_model, tokenizer=tokenizer)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            size_bytes = save_quantized(model, Path(tmp) / "model")

    metrics: dict[str, Any] = {
        "bits": bits["bits"],
        "bits_formula": bits["bits_formula"],
        "bits_paper": bits["bits_paper"],
        "model_bits": bits["model_bits"],
        "quantized_weights": bits["quantized_weights"],
        "total_weights": bits["total_weights"],
        "size_bytes": size_bytes,
    }
    ppl_spec = cell.evaluations.perplexity
    if ppl_spec is not None:
        metrics["perplexity"] = {}
        for dataset in ppl_spec.datasets:
            seqlen = ppl_spec.seqlen or default_seqlen
            windows = eval_windows(dataset, tokenizer, seqlen, max_windows=ppl_spec.max_windows, base_dir=base_dir)
            result = perplexity(
                model, windows, batch_size=ppl_spec.batch_size, progress=progress, desc=f"ppl {dataset}"
            )
            metrics["perplexity"][dataset] = result.to_dict()
            logger.info("%s: %s perplexity %.3f (%d windows of %d)", cell.label, dataset, result.ppl, result.windows, seqlen)
    t_done = time.perf_counter()

    per_layer = {entry["name"]: entry for entry in bits["layers"]}
    for entry in layers:
        entry.update({k: v for k, v in per_layer.get(entry["name"], {}).items() if k not in entry})

    record = base_record(cell)
    record.update(
        status="ok",
        model={**record["model"], "family": adapter.name, "source": loaded.source, "seqlen_default": default_seqlen},
        metrics=metrics,
        calibration=calibration_info,
        layers=layers,
        saved_model=str(saved_model) if saved_model else None,
        timings={
            "load_s": round(t_loaded - t0, 3),
            "quantize_s": round(t_quantized - t_loaded, 3),
            "eval_s": round(t_done - t_quantized, 3),
            "total_s": round(t_done - t0, 3),
            **peak_memory(device),
        },
        environment=environment.capture(device),
        error=None,
        finished_at=_now(),
    )
    return record
