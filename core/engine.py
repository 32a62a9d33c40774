"""`LLM`: resolve a model source, place it with accelerate, and stream text from it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core import checkpoint, weights
from core.checkpoint import CheckpointError
from core.decode import stream_tokens
from core.defaults import DEFAULT_MODEL_NAME, smollm2_gguf_path
from core.model import Decoder
from core.weights import WeightsError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


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


def read_source(source: str | Path) -> tuple[Any, dict[str, torch.Tensor], Any, str]:
    """(config, state, tokenizer, display name) for `default`, a GGUF, our checkpoint or an HF dir."""
    if str(source) == "default":
        path = smollm2_gguf_path()
        config, state, tok = weights.load_gguf(path)
        return config, state, tok, DEFAULT_MODEL_NAME
    path = Path(source).expanduser()
    if not path.exists():
        return _from_hub(str(source))
    checkpoint.refuse_pickle(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return (*weights.load_gguf(path), path.stem)
    if path.is_file():
        raise ModelLoadError(f"{path}: not a model; give a .gguf file or a checkpoint directory.")
    if checkpoint.is_checkpoint_dir(path):
        return (*checkpoint.load_state(path), path.name)
    if (path / "config.json").exists():
        return (*weights.load_hf_dir(path), path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return (*weights.load_gguf(ggufs[0]), ggufs[0].stem)
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
            f"{repo_id}: not found locally and could not be downloaded from the hub ({type(err).__name__}); "
            "check the id, the network, and that HF_HUB_OFFLINE is not set."
        ) from err
    return (*weights.load_hf_dir(local), repo_id)


@dataclass
class LLM:
    """A loaded model with its tokenizer, ready to generate."""

    model: Decoder
    tokenizer: Any
    name: str

    @classmethod
    def load(cls, source: str | Path = "default", *, device: str | None = None,
             dtype: str | torch.dtype | None = None) -> LLM:  # fmt: skip
        """Load `default`, a .gguf, a checkpoint dir, a Hugging Face dir or a hub id."""
        target = pick_device(device)
        torch_dtype = pick_dtype(dtype, target)
        if target.type == "cpu":
            # Denormal floats take a slow microcode path on x86: bf16 element-wise ops run ~40x
            # slower without flush-to-zero. Inference never needs values below 1e-38.
            torch.set_flush_denormal(True)
        try:
            config, state, tokenizer, name = read_source(source)
            model = checkpoint.build_model(
                config, state, source=str(source), device=target, dtype=torch_dtype
            )
        except (CheckpointError, WeightsError) as err:
            raise ModelLoadError(str(err)) from err
        if tokenizer is None:
            raise ModelLoadError(
                f"{source}: no tokenizer found beside the weights (tokenizer.json)."
            )
        return cls(model=model, tokenizer=tokenizer, name=name)

    @property
    def config(self) -> Any:
        return self.model.config

    def render(self, messages: list[dict[str, str]] | str) -> str:
        """A chat (list of role/content dicts) through the model's template; a string as is."""
        if isinstance(messages, str):
            return messages
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def stream(
        self, messages: list[dict[str, str]] | str, *, max_new_tokens: int = 256,
        temperature: float = 0.0, seed: int | None = None,
    ) -> Iterator[str]:  # fmt: skip
        """Yield pieces of the reply as they are decoded; their concatenation is the reply."""
        prompt_ids = self.tokenizer.encode(self.render(messages))
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.model.wte.weight.device).manual_seed(seed)
        ids: list[int] = []
        emitted = ""
        stop = self.tokenizer.stop_token_ids
        for token in stream_tokens(self.model, prompt_ids, max_new_tokens=max_new_tokens,
                                   temperature=temperature, stop_ids=stop, generator=generator):  # fmt: skip
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a multi-byte character is still incomplete: wait
                continue
            if len(text) > len(emitted):
                yield text[len(emitted) :]
                emitted = text
        # Cut off mid-character by the token budget: drop the incomplete bytes, not show U+FFFD.
        text = self.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
        if len(text) > len(emitted):
            yield text[len(emitted) :]

    def generate(self, messages: list[dict[str, str]] | str, **kwargs: Any) -> str:
        return "".join(self.stream(messages, **kwargs))
