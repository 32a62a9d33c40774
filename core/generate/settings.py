"""`GenerationSettings`: every decoding knob and its default, in one place for the engine, the
CLI, the web app and the API; `validate` checks them against a server's caps."""

from __future__ import annotations

from dataclasses import dataclass

from core.generate.logits import SettingsError, build_processors

MODES = ("greedy", "sample", "beam")


@dataclass(frozen=True)
class GenerationSettings:
    """Every decoding knob; `validate` checks them against the server's caps."""

    mode: str = "greedy"
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # 0 off; n bans any token that would repeat an n-gram
    # the two repetition knobs count the prompt too (as transformers), or only the reply
    penalize_prompt: bool = True
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def validate(self, *, max_new_tokens_cap: int = 2048, max_beams: int = 8) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"mode must be one of {MODES}, got {self.mode!r}.")
        build_processors(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
        )
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_new_tokens_cap:
            raise SettingsError(
                f"max_new_tokens must be a whole number from 1 to {max_new_tokens_cap}, got {n!r}."
            )
        b = self.num_beams
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= max_beams:
            raise SettingsError(
                f"num_beams must be a whole number from 1 to {max_beams}, got {b!r}."
            )
        if self.early_stopping not in (True, False, "never"):
            raise SettingsError(
                f"early_stopping must be true, false or 'never', got {self.early_stopping!r}."
            )
        if not -10.0 <= float(self.length_penalty) <= 10.0:
            raise SettingsError(
                f"length_penalty must be between -10 and 10, got {self.length_penalty!r}."
            )
        if not isinstance(self.penalize_prompt, bool):
            raise SettingsError(
                f"penalize_prompt must be true or false, got {self.penalize_prompt!r}."
            )
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise SettingsError(
                f"seed must be empty or a whole number from 0 to 2**63 - 1, got {seed!r}."
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise SettingsError("stop strings must be non-empty text.")

    def token_knobs(self) -> dict[str, float | int]:
        """`stream_tokens` arguments for this mode: greedy ignores the sampling knobs, while the
        repetition knobs apply in every mode."""
        sample = self.mode == "sample"
        return dict(
            temperature=self.temperature if sample else 0.0,
            top_k=self.top_k if sample else 0,
            top_p=self.top_p if sample else 1.0,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            penalize_prompt=self.penalize_prompt,
        )


DEFAULTS = GenerationSettings()  # what a client that sends no knobs gets
