"""Shared fixtures: the packaged SmolLM2 GGUF and offline settings for every test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from core.load import smollm2_gguf_path


@pytest.fixture
def exact_prefill(monkeypatch):
    """Prefill's GEMM in fp32 (where the CPU has native bf16 it is bf16 by default): for tests
    that hold the model to the weights' exact logits."""
    monkeypatch.setenv("SCRATCHGPT_PREFILL", "fp32")


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct GGUF; `make test` installs it, so its absence is a failure."""
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2():
    """Our engine on the packaged SmolLM2 (loaded once per test session)."""
    from core.generate.engine import LLM

    return LLM.load("default")


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf):
    """transformers on the same GGUF, dequantized into plain nn.Linear layers (slow: load once)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    return model.eval()
