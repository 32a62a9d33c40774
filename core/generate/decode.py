"""Decoding over a `Decoder` with a KV cache: greedy, sampling and beam search, all streaming.

Token-level only: text, stop strings and chat templates live in `core.generate.engine`.
Beam search follows `transformers`' (5.x) algorithm step for step, so the same logits give the
same best sequence: candidates are scored by summed log-probabilities, finished hypotheses by
sum / generated_length ** length_penalty, with its early-stopping rules (True, False, "never").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from core.generate.logits import (
    Processors,
    SettingsError,
    build_processors,
    is_greedy,
    sample_next,
)
from core.generate.prefix import PromptCache
from core.model import Decoder

if TYPE_CHECKING:
    from core.generate.trace import Trace

NEG = -1.0e9  # "impossible" score, as transformers uses


def token_processors(
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
) -> tuple[bool, Processors]:
    """(greedy?, the processors) for one-row decoding: greedy keeps only the repetition ones."""
    greedy = is_greedy(temperature, top_k)
    processors = build_processors(
        temperature=0.0 if greedy else temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    return greedy, processors


def apply_processors(
    processors: Processors, seen: torch.Tensor, scores: torch.Tensor, trace: Trace | None
) -> torch.Tensor:
    """The processed scores; a trace also records the distribution after every stage."""
    if trace is not None:
        return trace.process(processors, seen, scores)
    return processors(seen, scores) if processors else scores


@torch.inference_mode()
def stream_tokens(
    model: Decoder,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    penalize_prompt: bool = True,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    generator: torch.Generator | None = None,
    trace: Trace | None = None,
    prompts: PromptCache | None = None,
    owner: str = "",
) -> Iterator[int]:
    """Yield up to `max_new_tokens` ids, greedy (temperature 0 or top_k 1) or sampled.

    A stop id ends the stream without being yielded. Processors see the prompt and every
    generated token (the repetition penalty and the n-gram ban need them), or with
    `penalize_prompt=False` the generated tokens only (an answer may then copy its sources).
    A `trace` records each yielded token's distributions (`core.generate.trace`). With
    `prompts`, the prompt starts from the longest cached prefix and the reply's cache is kept
    there when the stream ends, as `owner`'s (`core.generate.prefix`).
    """
    if not prompt_ids:
        raise SettingsError("the prompt is empty; give at least one token.")
    greedy, processors = token_processors(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    device = model.wte.weight.device
    budget = min(max_new_tokens, model.config.block_size - len(prompt_ids))
    room = len(prompt_ids) + max(budget, 0)
    held, first = 0, None
    if prompts is not None and budget > 0:
        cache, held, first = prompts.take(model, prompt_ids, room, owner)
    else:
        cache = model.new_cache(1, room)
    seen = torch.tensor([list(prompt_ids)], device=device)  # (1, T)
    idx = seen[:, held:]  # what the cache does not hold yet
    if not penalize_prompt:
        seen = seen[:, :0]  # (1, S): the tokens the processors see
    fed = list(prompt_ids[:held])  # the tokens the cache holds
    after_prompt = last = None  # the raw scores after the prompt, after fed (processors copy)
    try:
        for step in range(budget):
            if step == 0 and first is not None:  # this very prompt before: its kept scores
                last = first
            else:
                last = model(idx, cache=cache, last_only=True)[:, -1].float()  # (1, vocab)
                fed += idx[0].tolist()
            after_prompt = last if step == 0 else after_prompt
            scores = apply_processors(processors, seen, last, trace)
            token = int(scores.argmax(-1)) if greedy else int(sample_next(scores, generator))
            if token in stop_ids:
                return
            if trace is not None:
                trace.chose(token)
            yield token
            idx = torch.tensor([[token]], device=device)  # (1, 1): only the new token goes in
            if processors:
                seen = torch.cat([seen, idx], dim=1)
    finally:
        if prompts is not None and after_prompt is not None:
            prompts.put(fed, cache, {len(prompt_ids): after_prompt, len(fed): last}, owner)


@dataclass
class BeamResult:
    """The best sequence and every finished beam, best first, with its length-normalised score."""

    best: list[int]
    beams: list[tuple[list[int], float]] = field(default_factory=list)


@dataclass
class BeamUpdate:
    """After each step: the current best hypothesis, and how many of its tokens are final."""

    tokens: list[int]
    stable: int


def _common_prefix(rows: list[list[int]]) -> int:
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return n


@torch.inference_mode()
def beam_search(
    model: Decoder,
    prompt_ids: Sequence[int],
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_ids: Sequence[int] = (),
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    penalize_prompt: bool = True,
    trace: Trace | None = None,
) -> Iterator[BeamUpdate]:
    """Yield a `BeamUpdate` after every step; the generator's return value is the `BeamResult`.

    Finished sequences keep their EOS token, as `transformers` returns them. The repetition
    processors see each beam's full sequence, prompt included, as in `transformers`. A `trace`
    records the tree of hypotheses and each one's distributions (`core.generate.trace`).
    """
    if not prompt_ids:
        raise SettingsError("the prompt is empty; give at least one token.")
    nb, device = num_beams, model.wte.weight.device
    max_new = min(max_new_tokens, model.config.block_size - len(prompt_ids))
    if max_new < 1:
        raise SettingsError("the prompt fills the whole context; nothing can be generated.")
    processors = build_processors(
        temperature=0.0,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    keep = max(2, 1 + len(eos)) * nb  # candidates per step: enough that nb survive any EOS
    prompt = torch.tensor(list(prompt_ids), device=device)
    cache = model.new_cache(1, len(prompt_ids) + max_new)
    logits = model(prompt[None], cache=cache, last_only=True)[:, -1].float()  # (1, V)
    cache.reorder(torch.zeros(nb, dtype=torch.long, device=device))  # nb copies of the prompt
    logits = logits.expand(nb, -1)
    running = torch.zeros(nb, 0, dtype=torch.long, device=device)  # (nb, generated so far)
    running_scores = torch.full((nb,), NEG, device=device)
    running_scores[0] = 0.0  # identical beams at first: only one may expand
    finished = [[] for _ in range(nb)]
    finished_scores = torch.full((nb,), NEG, device=device)
    finished_mask = torch.zeros(nb, dtype=torch.bool, device=device)
    improvable, last_best = True, None
    for step in range(max_new):
        log_probs = F.log_softmax(logits, dim=-1)  # (nb, V)
        history = running
        if processors and penalize_prompt:
            history = torch.cat([prompt.expand(nb, -1), running], 1)
        log_probs = apply_processors(processors, history, log_probs, trace)
        vocab = log_probs.shape[-1]
        total = (log_probs + running_scores[:, None]).reshape(-1)  # (nb * V,)
        cand_scores, cand_idx = torch.topk(total, k=keep)  # (keep,), best first
        origin, token = cand_idx // vocab, cand_idx % vocab
        cand = torch.cat([running[origin], token[:, None]], dim=1)  # (keep, step + 1)
        hits = torch.isin(token, eos) | (step + 1 >= max_new)  # (keep,): finishes here
        # Finished: only the top nb candidates may enter, scored with the length penalty.
        final = cand_scores / ((step + 1) ** length_penalty)
        closed = (not improvable) or (early_stopping is True and bool(finished_mask.all()))
        final = torch.where(
            hits & (torch.arange(keep, device=device) < nb) & (not closed), final, NEG
        )
        merged_scores = torch.cat([finished_scores, final])
        top = torch.topk(merged_scores, k=nb).indices
        pool = finished + [row.tolist() for row in cand]
        pool_mask = torch.cat(
            [finished_mask, hits & (torch.arange(keep, device=device) < nb) & (not closed)]
        )
        finished = [pool[int(i)] for i in top]
        finished_scores, finished_mask = merged_scores[top], pool_mask[top]
        # Running: the best nb candidates that did not finish.
        alive = torch.topk(cand_scores + hits.float() * NEG, k=nb).indices
        running, running_scores = cand[alive], (cand_scores + hits.float() * NEG)[alive]
        if trace is not None:
            trace.beam_step(origin, token, cand_scores, alive, top, finished_mask)
        # Could an open beam still beat the worst finished one? (transformers' heuristic)
        best_len = max_new if (early_stopping == "never" and length_penalty > 0) else step + 1
        best_possible = running_scores[0] / (best_len**length_penalty)
        worst = torch.where(finished_mask, finished_scores.min(), torch.tensor(NEG, device=device))
        improvable = improvable and bool((best_possible > worst).any())
        done = (
            not improvable
            or (early_stopping is True and bool(finished_mask.all()))
            or bool(hits.all())
        )
        best = _current_best(
            running, running_scores, step + 1, length_penalty, finished, finished_scores
        )
        if best != last_best:
            rows = [r.tolist() for r in running] + [
                f for f, m in zip(finished, finished_mask, strict=True) if m
            ]
            yield BeamUpdate(tokens=best, stable=_common_prefix(rows))
            last_best = best
        if done:
            break
        cache.reorder(origin[alive])
        logits = model(running[:, -1:], cache=cache, last_only=True)[:, -1].float()  # (nb, V)
    beams = [
        (f, float(s)) for f, s, m in zip(finished, finished_scores, finished_mask, strict=True) if m
    ]
    return BeamResult(best=beams[0][0] if beams else running[0].tolist(), beams=beams)


def _current_best(
    running, running_scores, length, length_penalty, finished, finished_scores
) -> list[int]:
    """What a user should see now: the best finished hypothesis, unless a running one beats it."""
    open_score = float(running_scores[0]) / (length**length_penalty)
    if float(finished_scores[0]) > NEG / 2 and float(finished_scores[0]) >= open_score:
        return finished[0]
    return running[0].tolist()


def run_beam_search(model: Decoder, prompt_ids: Sequence[int], **kwargs) -> BeamResult:
    """Beam search to the end, without streaming."""
    stream = beam_search(model, prompt_ids, **kwargs)
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value
