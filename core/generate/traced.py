"""Traced decoding runs: a reply decoded with its `Trace`, an existing reply scored the same way
(`replay`), and a reply continued from another candidate at any position (`branch`).

These decode token by token like `LLM.stream`, with the same settings, seed and stop tokens, and
keep the token ids, which the inspection views and `--logprobs` need beside the text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from core import kernels
from core.generate.decode import apply_processors, beam_search, stream_tokens, token_processors
from core.generate.logits import SettingsError, build_processors
from core.generate.settings import GenerationSettings
from core.generate.trace import Trace
from core.model import Decoder

if TYPE_CHECKING:
    from core.generate.engine import LLM

REPLAY_CHUNK = 64  # reply tokens scored per forward pass: bounds the (chunk, vocab) logits


@dataclass
class Run:
    """A traced reply: ids after the prompt, its text, its trace, and the time spent decoding."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    trace: Trace = field(default_factory=Trace)
    seconds: float = 0.0
    finish_reason: str = ""  # once done: "eos", "length", "stop_string" or "cancelled"

    @property
    def logprob(self) -> float:
        """Log-probability of the whole reply under the model's own distribution (before any
        processor), so replies decoded in different ways compare."""
        return sum(step.stages[0].chosen for step in self.trace.steps)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


def decode_traced(
    llm: LLM,
    prompt_ids: Sequence[int],
    settings: GenerationSettings,
    *,
    top_n: int = 10,
    cancel: threading.Event | None = None,
) -> Iterator[Run]:
    """Decode with a trace, yielding the `Run` after each step (beam: its current best), and
    once more at the end with its `finish_reason` set (empty until then).

    Stop tokens and stop strings end the reply as in `LLM.stream` (beam answers keep their
    stop token, as `BeamResult.best` does)."""
    run = Run(trace=Trace(top_n))
    stops, beam = llm.tokenizer.stop_token_ids, settings.mode == "beam"
    model = llm.model
    if beam:
        steps = _beam_updates(model, prompt_ids, settings, stops, run.trace)
    else:
        generator = None
        if settings.seed is not None:
            generator = torch.Generator(device=model.wte.weight.device).manual_seed(settings.seed)
        steps = (
            [token]
            for token in stream_tokens(
                model,
                prompt_ids,
                max_new_tokens=settings.max_new_tokens,
                stop_ids=stops,
                generator=generator,
                trace=run.trace,
                **settings.token_knobs(),
            )
        )
    started = time.perf_counter()
    for tokens in steps:
        run.tokens = tokens if beam else [*run.tokens, *tokens]
        run.seconds = time.perf_counter() - started
        if _cut(run, llm.tokenizer, () if beam else settings.stop):
            yield run
            return
        yield run
        started = time.perf_counter() - run.seconds  # the consumer's time is not decoding time
        if cancel is not None and cancel.is_set():
            run.finish_reason = "cancelled"
            return
    run.seconds = time.perf_counter() - started
    if beam:
        run.tokens = run.trace.tokens
    ended = len(run.tokens) >= settings.max_new_tokens and not set(run.tokens[-1:]) & stops
    run.finish_reason = "length" if ended else "eos"
    _cut(run, llm.tokenizer, settings.stop)
    yield run


def _cut(run: Run, tokenizer, stop: tuple[str, ...]) -> bool:
    """Set the run's text; True (and the text cut before it) where a stop string appears."""
    run.text = tokenizer.decode(run.tokens, skip_special_tokens=True).rstrip("\ufffd")
    hits = [i for i in (run.text.find(s) for s in stop) if i >= 0]
    if hits:
        run.text, run.finish_reason = run.text[: min(hits)], "stop_string"
    return bool(hits)


def _beam_updates(
    model: Decoder, prompt_ids: Sequence[int], s: GenerationSettings, stops, trace: Trace
) -> Iterator[list[int]]:
    stream = beam_search(
        model,
        prompt_ids,
        num_beams=s.num_beams,
        max_new_tokens=s.max_new_tokens,
        length_penalty=s.length_penalty,
        early_stopping=s.early_stopping,
        eos_ids=sorted(stops),
        repetition_penalty=s.repetition_penalty,
        no_repeat_ngram_size=s.no_repeat_ngram_size,
        penalize_prompt=s.penalize_prompt,
        trace=trace,
    )
    with kernels.batched(model):
        for update in stream:
            yield update.tokens


def run_traced(
    llm, prompt_ids: Sequence[int], settings: GenerationSettings, top_n: int = 10
) -> Run:
    """`decode_traced` to the end."""
    *_, run = decode_traced(llm, prompt_ids, settings, top_n=top_n)  # each yield is this run
    return run


@torch.inference_mode()
def replay(
    model: Decoder,
    prompt_ids: Sequence[int],
    reply_ids: Sequence[int],
    settings: GenerationSettings,
    top_n: int = 10,
) -> Trace:
    """Score an existing reply as decoding saw it (teacher forcing): per token, the distribution
    at every stage under `settings`, through the same processors on the same history."""
    if not prompt_ids:
        raise SettingsError("the prompt is empty; give at least one token.")
    if len(prompt_ids) + len(reply_ids) > model.config.block_size:
        raise SettingsError(
            f"prompt and reply have {len(prompt_ids) + len(reply_ids)} tokens, over the model's "
            f"context of {model.config.block_size}."
        )
    trace = Trace(top_n)
    beam = settings.mode == "beam"
    if beam:  # beam search processes log-probabilities, without sampling's knobs
        processors = build_processors(
            temperature=0.0,
            repetition_penalty=settings.repetition_penalty,
            no_repeat_ngram_size=settings.no_repeat_ngram_size,
        )
    else:
        _, processors = token_processors(**_sampling_knobs(settings))
    device = model.wte.weight.device
    everything = torch.tensor([list(prompt_ids) + list(reply_ids)], device=device)  # (1, T)
    P = len(prompt_ids)
    cache = model.new_cache(1, everything.shape[1])
    if P > 1:
        model(everything[:, : P - 1], cache=cache, last_only=True)
    for start in range(0, len(reply_ids), REPLAY_CHUNK):
        chunk = everything[:, P - 1 + start : P - 1 + min(start + REPLAY_CHUNK, len(reply_ids))]
        with kernels.exact():  # the reply's tokens as decoding steps computed them: fp32 sums
            logits = model(chunk, cache=cache).float()  # (1, c, V): row j predicts reply[start + j]
        for j in range(chunk.shape[1]):
            at = start + j
            scores = logits[:, j]  # (1, V)
            if beam:
                scores = F.log_softmax(scores, dim=-1)
            seen = (
                everything[:, : P + at] if settings.penalize_prompt else everything[:, P : P + at]
            )
            apply_processors(processors, seen, scores, trace)
            trace.chose(int(reply_ids[at]))
    return trace


def _sampling_knobs(settings: GenerationSettings) -> dict:
    knobs = settings.token_knobs()
    knobs.pop("penalize_prompt")
    return knobs


def branch(
    llm: LLM,
    prompt_ids: Sequence[int],
    reply_ids: Sequence[int],
    position: int,
    token: int,
    settings: GenerationSettings,
    top_n: int = 10,
) -> Run:
    """The reply's first `position` tokens, then `token`, then decoding on from there; the run's
    tokens include that prefix. Budget: `settings.max_new_tokens` counts from the prompt."""
    if not 0 <= position <= len(reply_ids):
        raise SettingsError(
            f"branch position must be from 0 to {len(reply_ids)} (the reply's length), "
            f"got {position}."
        )
    prefix = [*reply_ids[:position], int(token)]
    if int(token) in llm.tokenizer.stop_token_ids:
        return Run(tokens=prefix, trace=Trace(top_n), finish_reason="eos")
    left = settings.max_new_tokens - len(prefix)
    if left < 1:
        return Run(tokens=prefix, trace=Trace(top_n), finish_reason="length")
    rest = run_traced(llm, [*prompt_ids, *prefix], replace(settings, max_new_tokens=left), top_n)
    return Run(
        tokens=prefix + rest.tokens,
        trace=rest.trace,
        seconds=rest.seconds,
        finish_reason=rest.finish_reason,
    )
