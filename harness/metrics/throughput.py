"""Decode throughput, the protocol's way: greedy decoding through a static KV cache.

For each batch size: a fixed prompt of `prompt_len` tokens is prefilled, then `new_tokens`
single-token forward passes each consume the previous greedy token (the prefill's argmax is the
first). Timed runs follow `warmup` untimed ones; the record holds the median over `repeats` of
tokens/second per sequence (new_tokens / decode seconds) and in total (x batch), their min and
max, the prefill time, memory, the compute path of every quantized layer, and the bytes a
decode step reads (weights as stored + the static KV cache) as achieved bandwidth next to a
measured copy bandwidth (and the card's nominal one where known).

Several models (the quantized one and its unquantized reference) are measured in one call with
their repeats interleaved, so that both see the same machine load; only numbers of one call are
comparable. On CUDA the decode step is captured in a CUDA graph when it can be (its logits are
checked against eager decoding, teacher-forced on eager's tokens, within the dtype's agreement
tolerance: split-K float32 atomics make two runs differ in the last bits, so comparing greedy
tokens would reject a good graph on a near tie; the record says whether graphs were used and why
not), and the clock is CUDA events; on CPU it is `perf_counter`. Positions are passed explicitly
from a device tensor advanced in place, so a captured step never depends on how a transformers
version derives them from the cache.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.environment import device_name
from harness.metrics.agreement import cache_kwarg, fixed_tokens, layer_paths, quantized_layers, tolerance_for
from harness.metrics.memory import copy_bandwidth_gbs, nominal_bandwidth_gbs, peak_rss_gib, reset_peak_rss


__all__ = ["DecodeSettings", "decode_throughput"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSettings:
    """Protocol settings of one throughput measurement (see the module docstring)."""

    batch_sizes: tuple[int, ...] = (1,)
    prompt_len: int = 1
    new_tokens: int = 128
    warmup: int = 2
    repeats: int = 5
    cuda_graphs: bool = True
    seed: int = 0


class _Decoder:
    """One model prepared for timed greedy decoding at one batch size."""

    def __init__(self, model: nn.Module, batch: int, settings: DecodeSettings):
        from transformers import StaticCache

        self.model, self.settings = model, settings
        embed = model.get_input_embeddings().weight
        self.device, self.dtype = embed.device, embed.dtype
        self.prompt = fixed_tokens(model.config.vocab_size, settings.prompt_len, batch=batch,
                                   seed=settings.seed).to(self.device)
        self.cache = StaticCache(config=model.config, max_cache_len=settings.prompt_len + settings.new_tokens)
        self.cache_kwarg = cache_kwarg(model)
        self.prompt_positions = torch.arange(settings.prompt_len, device=self.device)[None]
        self.position = torch.zeros(1, 1, dtype=torch.long, device=self.device)  # of the next decode token
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_note = "not CUDA" if self.device.type != "cuda" else "disabled by the settings"
        self.graph_rel_diff: float | None = None
        self.static_ids: torch.Tensor | None = None
        self.static_logits: torch.Tensor | None = None

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1,
                          **{self.cache_kwarg: self.cache}).logits[:, -1]

    def _prefill(self) -> torch.Tensor:
        self.cache.reset()
        self.position.fill_(self.settings.prompt_len)
        return self._forward(self.prompt, self.prompt_positions).argmax(-1, keepdim=True)

    def _step(self, ids: torch.Tensor) -> torch.Tensor:
        """One decode step at `self.position` (advanced in place): logits [batch, vocab]."""
        logits = self._forward(ids, self.position)
        self.position.add_(1)
        return logits

    def _graph_step(self) -> None:
        logits = self._step(self.static_ids)
        self.static_logits.copy_(logits)
        self.static_ids.copy_(logits.argmax(-1, keepdim=True))

    def _eager_trace(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy tokens [batch, steps] and float32 logits [steps, batch, vocab] of eager decoding."""
        ids, tokens, logits = self._prefill(), [], []
        for _ in range(steps):
            step = self._step(ids)
            ids = step.argmax(-1, keepdim=True)
            tokens.append(ids)
            logits.append(step.float())
        return torch.cat(tokens, 1), torch.stack(logits)

    def _replay_trace(self, replay, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [steps, batch, vocab] of `replay` (the captured step) fed eager's `tokens`
        (teacher forcing: a flipped near-tie cannot make the two sequences diverge)."""
        self.static_ids.copy_(self._prefill())
        logits = []
        for t in range(tokens.shape[1]):
            if t:
                self.static_ids.copy_(tokens[:, t - 1:t])
            replay()
            logits.append(self.static_logits.float().clone())
        return torch.stack(logits)

    def check_replay(self, replay, steps: int) -> float:
        """Max |replay - eager| / max |eager| over the logits of `steps` teacher-forced steps."""
        tokens, eager = self._eager_trace(steps)
        replayed = self._replay_trace(replay, tokens)
        return float((replayed - eager).abs().max()) / max(float(eager.abs().max()), 1e-30)

    def prepare(self) -> None:
        """Capture the decode step in a CUDA graph (CUDA and `cuda_graphs` only); a capture that
        fails or whose logits differ from eager decoding's falls back to eager, noting why."""
        if self.device.type != "cuda" or not self.settings.cuda_graphs:
            return
        if self.settings.new_tokens < 3:  # the warm-up steps before capture fill 3 cache positions
            self.graph_note = "too few new tokens to capture a graph (at least 3)"
            return
        try:
            ids = self._prefill()
            self.static_ids = ids.clone()
            self.static_logits = self._step(ids).clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up off the capture stream (kernel compilation)
                for _ in range(2):
                    self._graph_step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_step()
            self.graph_rel_diff = self.check_replay(graph.replay, min(8, self.settings.new_tokens))
            tolerance = tolerance_for(self.dtype)
            if not self.graph_rel_diff <= tolerance:
                self.graph_note = (f"graph replay logits differ from eager decoding by {self.graph_rel_diff:.2e} "
                                   f"(tolerance {tolerance:g})")
            else:
                self.graph, self.graph_note = graph, "captured"
        except Exception as exc:  # capture is best effort: eager decoding is always correct
            self.graph_note = f"capture failed: {type(exc).__name__}: {str(exc)[:200]}"
            torch.cuda.synchronize()
        finally:
            self.cache.reset()
        if self.graph is None:
            logger.warning("CUDA graph not used, decoding eagerly (host-bound timings): %s", self.graph_note)

    def run(self) -> tuple[float, float]:
        """One timed generation: (prefill seconds, decode seconds for `new_tokens` steps)."""
        n = self.settings.new_tokens
        if self.device.type == "cuda":
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            torch.cuda.synchronize()
            marks[0].record()
            ids = self._prefill()
            marks[1].record()
            self._decode(ids, n)
            marks[2].record()
            torch.cuda.synchronize()
            return marks[0].elapsed_time(marks[1]) / 1e3, marks[1].elapsed_time(marks[2]) / 1e3
        t0 = time.perf_counter()
        ids = self._prefill()
        t1 = time.perf_counter()
        self._decode(ids, n)
        return t1 - t0, time.perf_counter() - t1

    def _decode(self, ids: torch.Tensor, steps: int) -> None:
        if self.graph is not None:
            self.static_ids.copy_(ids)
            for _ in range(steps):
                self.graph.replay()
            return
        for _ in range(steps):
            ids = self._step(ids).argmax(-1, keepdim=True)

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared tensors once)."""
    return _storage_bytes([*model.parameters(), *model.buffers()])


def bytes_read_per_step(model: nn.Module) -> int:
    """Weight bytes one decode step reads: every tensor once, except the input embedding table
    (one row per token) unless it is tied to the output head; a quantized layer on the
    cached-dense path reads its dense weight instead of its stored tensors, and one whose kernel
    reads other tensors than it stores says how many bytes (`bytes_read_per_call()`, e.g. the
    int GEMV reads float32 zero x scale, not the packed zeros)."""
    total = weight_bytes(model)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight.untyped_storage().data_ptr() != embed.untyped_storage().data_ptr():
        total -= embed.numel() * embed.element_size()
    for layer in quantized_layers(model).values():
        if layer.path_used() == "cached-dense-matmul":
            total += layer.num_weights * embed.element_size()
            continue
        read = getattr(layer, "bytes_read_per_call", None)
        read = read() if callable(read) else None
        if read is not None:
            total += read - _storage_bytes([*layer.parameters(recurse=False), *layer.buffers(recurse=False)])
    return total


def _summary(samples: list[tuple[float, float]], settings: DecodeSettings, batch: int) -> dict[str, Any]:
    per_seq = [settings.new_tokens / decode for _, decode in samples]
    return {
        "batch_size": batch,
        "tokens_per_s": statistics.median(per_seq),
        "total_tokens_per_s": statistics.median(per_seq) * batch,
        "tokens_per_s_min": min(per_seq),
        "tokens_per_s_max": max(per_seq),
        "repeats_tokens_per_s": [round(v, 4) for v in per_seq],
        "prefill_s": statistics.median(p for p, _ in samples),
        "ms_per_token": 1e3 / statistics.median(per_seq),
    }


def decode_throughput(
    models: dict[str, nn.Module], settings: DecodeSettings = DecodeSettings(), *, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Measure every model of `models` (name -> model, all on one device) under `settings`,
    repeats interleaved. Returns name -> record: {device, device_name, dtype, timer, settings,
    results: [per batch size: batch_size, tokens_per_s (median per sequence), total_tokens_per_s,
    min/max, every repeat, prefill_s, ms_per_token, cuda_graphs, cuda_graphs_note, peak memory,
    bytes_per_step, achieved_gbs, kv_cache_gib, paths {path: layer count}], weights_gib, paths and
    layer_paths {layer: path} of the first batch size, memory_bandwidth {copy_gbs, nominal_gbs}}."""
    first = next(iter(models.values()))
    device = first.get_input_embeddings().weight.device
    copy_gbs = copy_bandwidth_gbs(device)
    records = {name: _base_record(model, settings, device, copy_gbs) for name, model in models.items()}
    with torch.inference_mode():
        for batch in settings.batch_sizes:
            decoders = {name: _Decoder(model, batch, settings) for name, model in models.items()}
            peaks = dict.fromkeys(models, 0)
            for name, dec in decoders.items():
                dec.prepare()
                for _ in tqdm(range(settings.warmup), desc=f"warm-up {name} b{batch}", disable=not progress, leave=False):
                    dec.run()
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
            order = list(decoders)
            for r in tqdm(range(settings.repeats), desc=f"decode b{batch}", disable=not progress, leave=False):
                for name in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
                    before = _reset_peak(device)
                    samples[name].append(decoders[name].run())
                    peaks[name] = max(peaks[name], _peak_since(device, before))
            for name, dec in decoders.items():
                row = _summary(samples[name], settings, batch)
                step_bytes = bytes_read_per_step(models[name]) + dec.cache_bytes()
                row.update(
                    cuda_graphs=dec.graph is not None,
                    cuda_graphs_note=dec.graph_note,
                    cuda_graphs_max_rel_diff=dec.graph_rel_diff,
                    bytes_per_step=step_bytes,
                    achieved_gbs=step_bytes * row["tokens_per_s"] / 1e9,
                    kv_cache_gib=dec.cache_bytes() / 2**30,
                    **_memory_fields(device, peaks[name], models[name], dec),
                )
                paths = layer_paths(models[name])
                row["paths"] = dict(sorted(Counter(paths.values()).items()))
                records[name]["results"].append(row)
                if "paths" not in records[name]:  # the first batch size's (the protocol's default: 1)
                    records[name]["paths"], records[name]["layer_paths"] = row["paths"], paths
            del decoders
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


def _base_record(model: nn.Module, settings: DecodeSettings, device: torch.device, copy_gbs: float) -> dict[str, Any]:
    dtype = model.get_input_embeddings().weight.dtype
    return {
        "device": device.type,
        "device_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "timer": "cuda-events" if device.type == "cuda" else "perf_counter",
        "torch_threads": torch.get_num_threads(),
        "settings": {**asdict(settings), "batch_sizes": list(settings.batch_sizes)},
        "weights_gib": weight_bytes(model) / 2**30,
        "memory_bandwidth": {"copy_gbs": copy_gbs, "nominal_gbs": nominal_bandwidth_gbs(device)},
        "results": [],
    }


def _reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    reset_peak_rss()
    return 0


def _peak_since(device: torch.device, before: int) -> int:
    """CUDA: bytes allocated above the level before the run (the run's own workspace)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - before
    return 0


def _memory_fields(device: torch.device, workspace: int, model: nn.Module, dec: _Decoder) -> dict[str, Any]:
    if device.type == "cuda":
        own = weight_bytes(model) + dec.cache_bytes() + workspace
        return {"peak_cuda_gib": own / 2**30, "peak_note": "own weights + KV cache + peak decode workspace"}
    return {"peak_rss_gib": peak_rss_gib(), "peak_note": "process peak RSS (all models of the run)"}
