"""Checkpoint directories (`model.safetensors`, `config.json`, `tokenizer.json`); model building.

Nothing here unpickles: `.pt`/`.bin`/`.pth`/`.ckpt` files are refused. A model is built only after
every tensor's name and shape has been checked, so a bad file never leaves a half-loaded model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.config import ConfigError, ModelConfig
from core.model import Decoder, NoInit

WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and, if any, the tensor."""


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickle checkpoints are refused because loading them can run arbitrary code; "
            "convert the weights to safetensors (e.g. `safetensors.torch.save_file`)."
        )


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes a `Decoder` with this config has, without allocating it."""
    with torch.device("meta"), NoInit():
        model = Decoder(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_state(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise `CheckpointError` naming the first missing, unexpected or mis-shaped tensor."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{source}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)."
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor {unexpected[0]!r}; "
            "the config does not describe these weights."
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(state[name].shape)} but the config "
                f"implies {shape}; the config does not match the weights."
            )


def build_model(
    config: ModelConfig,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Decoder:
    """Validate `state` against `config`, then materialise a `Decoder` on `device` in `dtype`."""
    from accelerate import init_empty_weights

    check_state(config, state, source)
    with init_empty_weights():  # parameters on the meta device: no throwaway random init
        model = Decoder(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def save(model: Decoder, directory: str | Path, tokenizer: Any = None) -> Path:
    """Write a checkpoint directory atomically: a crash midway leaves any previous one intact."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        model.config.save(tmp / CONFIG_FILE)
        if tokenizer is not None:
            tokenizer.save(tmp)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_state(directory: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Any]:
    """Read a checkpoint directory: (config, state dict, tokenizer or None); validates nothing."""
    from safetensors import SafetensorError, safe_open

    from core.tokenizer import Tokenizer

    directory = Path(directory)
    weights, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not weights.exists():
        pickled = sorted(p for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickled:
            refuse_pickle(pickled[0])
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}; a checkpoint directory needs one.")
    if not config_path.exists():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE} beside {WEIGHTS_FILE}.")
    try:
        config = ModelConfig.load(config_path)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{config_path}: {err}") from err
    try:
        # Copy out of the memory map: a model must not crash if its file is later overwritten.
        with safe_open(str(weights), framework="pt") as handle:
            state = {key: handle.get_tensor(key).clone() for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{weights}: truncated or damaged safetensors file ({err}); re-save or re-download it."
        ) from err
    tokenizer = Tokenizer.from_dir(directory) if (directory / TOKENIZER_FILE).exists() else None
    return config, state, tokenizer


def is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).exists() and _is_ours(path / CONFIG_FILE)


def _is_ours(config_path: Path) -> bool:
    """Our config.json holds `n_layer`; a Hugging Face one holds `model_type`."""
    import json

    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, OSError):
        return True  # let load_state report the broken file
    return isinstance(data, dict) and "model_type" not in data
