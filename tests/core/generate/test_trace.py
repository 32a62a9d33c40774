"""Decoding traces: the probabilities recorded are softmax of the processed scores at every
step, the beam tree ends at the returned answer, replay and branching agree with decoding, and
tracing off changes nothing."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.config import ModelConfig
from core.generate.decode import run_beam_search, stream_tokens
from core.generate.logits import SettingsError, build_processors
from core.generate.settings import GenerationSettings
from core.generate.trace import Trace, logprobs_json
from core.generate.traced import branch, replay, run_traced
from core.model import Decoder

ROOT = Path(__file__).resolve().parents[3]
PROMPT = [5, 17, 33, 2, 40, 41]
SAMPLE = dict(temperature=0.8, top_k=5, top_p=0.9, repetition_penalty=1.3)


@pytest.fixture(scope="module")
def tiny() -> Decoder:
    """A random Llama-shaped model with sharp distributions (so the processors bite)."""
    torch.manual_seed(0)
    config = ModelConfig.preset(
        "llama",
        vocab_size=97,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        ffn_hidden=48,
        block_size=128,
    )
    model = Decoder(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0 if p.dim() == 2 else 1.0)
    return model


def expected_stages(model, prompt, tokens, i, processors, beam=False, penalize_prompt=True):
    """Independently: the full forward over the prefix, then each processor; softmax of each."""
    ids = torch.tensor([prompt + tokens[:i]])
    with torch.no_grad():
        scores = model(ids)[:, -1].float()  # (1, V), no cache
    if beam:
        scores = F.log_softmax(scores, dim=-1)
    seen = ids if penalize_prompt else torch.tensor([tokens[:i]], dtype=torch.long)
    out = [scores.softmax(-1)[0]]
    for processor in processors:
        scores = processor(seen, scores)
        out.append(scores.softmax(-1)[0])
    return out


def assert_matches(step, probs):
    assert len(step.stages) == len(probs)
    for stage, p in zip(step.stages, probs, strict=True):
        for token, prob in stage.top:
            assert prob == pytest.approx(float(p[token]), abs=1e-5)
        assert [t for t, _ in stage.top] == torch.topk(p, len(stage.top)).indices.tolist() or (
            # ties (e.g. several zeros past top-k) may order differently: compare the values
            sorted(v for _, v in stage.top)
            == pytest.approx(sorted(torch.topk(p, len(stage.top)).values.tolist()), abs=1e-6)
        )
        assert math.exp(stage.chosen) == pytest.approx(float(p[step.token]), abs=1e-5)
        assert stage.support == int((p > 0).sum())
        assert stage.entropy == pytest.approx(float(torch.special.entr(p).sum()), abs=1e-4)


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_recorded_probabilities_are_softmax_of_processed_scores(tiny, mode):
    knobs = dict(SAMPLE) if mode == "sample" else dict(temperature=0.0, repetition_penalty=1.3)
    knobs["no_repeat_ngram_size"] = 2
    trace = Trace(top_n=10)
    gen = torch.Generator().manual_seed(3)
    tokens = list(
        stream_tokens(tiny, PROMPT, max_new_tokens=20, generator=gen, trace=trace, **knobs)
    )
    assert trace.tokens == tokens and len(tokens) == 20
    processors = build_processors(**knobs)
    names = ["model", *(type(p).__name__ for p in processors)]
    for i, step in enumerate(trace.steps):
        assert [s.name for s in step.stages] == names
        assert_matches(step, expected_stages(tiny, PROMPT, tokens, i, processors))
    if mode == "greedy":  # greedy picks the most probable processed token
        assert all(s.token == s.stages[-1].top[0][0] for s in trace.steps)


def test_top_k_after_distribution_keeps_exactly_k(tiny):
    trace = Trace(top_n=10)
    gen = torch.Generator().manual_seed(1)
    list(
        stream_tokens(
            tiny, PROMPT, max_new_tokens=12, top_k=3, temperature=1.5, generator=gen, trace=trace
        )
    )
    for step in trace.steps:
        model, top_k, temperature = step.stages
        assert (model.name, top_k.name, temperature.name) == ("model", "TopK", "Temperature")
        assert model.support == 97
        assert top_k.support == temperature.support == 3
        assert sum(p > 0 for _, p in top_k.top) == 3  # the other 7 shown are exactly zero
        assert step.token in [t for t, p in temperature.top if p > 0]


@pytest.mark.parametrize("eos", [None, 11])
@pytest.mark.parametrize("penalize_prompt", [True, False])
def test_beam_trace_best_path_is_the_answer_with_softmax_of_processed_scores(
    tiny, eos, penalize_prompt
):
    trace = Trace(top_n=5)
    knobs = dict(
        num_beams=3,
        max_new_tokens=10,
        repetition_penalty=1.2,
        no_repeat_ngram_size=2,
        penalize_prompt=penalize_prompt,
        eos_ids=[eos] if eos is not None else [],
    )
    result = run_beam_search(tiny, PROMPT, trace=trace, **knobs)
    assert trace.tokens == result.best
    best = trace.nodes[trace.best]
    assert best.status == ("finished" if result.beams else "running")
    if result.beams:  # its summed score over the length penalty is the returned score
        assert best.score / len(result.best) == pytest.approx(result.beams[0][1], abs=1e-4)
    processors = build_processors(temperature=0.0, repetition_penalty=1.2, no_repeat_ngram_size=2)
    for i, step in enumerate(trace.steps):
        assert_matches(
            step,
            expected_stages(tiny, PROMPT, result.best, i, processors, True, penalize_prompt),
        )
    for step in range(len(result.best)):  # at most num_beams open hypotheses per step
        nodes = [n for n in trace.nodes if n.step == step]
        assert sum(n.status == "running" for n in nodes) <= 3
        assert all(trace.nodes[n.parent].status == "running" for n in nodes)
    finished = {
        tuple(t.token for t in trace.path(n.id)) for n in trace.nodes if n.status == "finished"
    }
    assert {tuple(tokens) for tokens, _ in result.beams} <= finished


def test_tracing_off_and_on_decode_the_same(tiny):
    for knobs in (dict(temperature=0.0), dict(SAMPLE)):
        plain = list(
            stream_tokens(
                tiny, PROMPT, max_new_tokens=15, generator=torch.Generator().manual_seed(7), **knobs
            )
        )
        traced = list(
            stream_tokens(
                tiny,
                PROMPT,
                max_new_tokens=15,
                trace=Trace(),
                generator=torch.Generator().manual_seed(7),
                **knobs,
            )
        )
        assert plain == traced
    beam = dict(num_beams=4, max_new_tokens=12, eos_ids=[11], length_penalty=0.8)
    plain_beam = run_beam_search(tiny, PROMPT, **beam)
    traced_beam = run_beam_search(tiny, PROMPT, trace=Trace(), **beam)
    assert plain_beam == traced_beam


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
def test_replay_scores_a_reply_as_decoding_did(tiny, mode):
    settings = GenerationSettings(
        mode=mode,
        **SAMPLE,
        no_repeat_ngram_size=2,
        num_beams=2,
        max_new_tokens=70,
        penalize_prompt=False,
    )
    trace = Trace()
    if mode == "beam":
        tokens = run_beam_search(
            tiny,
            PROMPT,
            num_beams=2,
            max_new_tokens=70,
            repetition_penalty=1.3,
            no_repeat_ngram_size=2,
            penalize_prompt=False,
            trace=trace,
        ).best
    else:
        gen = torch.Generator().manual_seed(5)
        tokens = list(
            stream_tokens(
                tiny,
                PROMPT,
                max_new_tokens=70,
                generator=gen,
                trace=trace,
                **settings.token_knobs(),
            )
        )
    replayed = replay(tiny, PROMPT, tokens, settings)  # 70 tokens: two chunks of the forward
    assert replayed.tokens == tokens
    for ours, theirs in zip(replayed.steps, trace.steps, strict=True):
        assert [s.name for s in ours.stages] == [s.name for s in theirs.stages]
        for a, b in zip(ours.stages, theirs.stages, strict=True):
            assert [t for t, _ in a.top[:3]] == [t for t, _ in b.top[:3]]
            assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-5)
            assert a.chosen == pytest.approx(b.chosen, abs=1e-4) and a.support == b.support


def test_trace_refuses_a_bad_number_of_alternatives():
    for bad in (0, 21, 2.5, True):
        with pytest.raises(SettingsError, match="logprobs must be a whole number from 1 to 20"):
            Trace(bad)


# -- the real model ---------------------------------------------------------------------------


def chat(llm, question: str) -> list[int]:
    return llm.tokenizer.encode(llm.render([{"role": "user", "content": question}]))


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_traced_run_is_the_engines_reply_on_smollm2(smollm2, mode):
    settings = smollm2.settings(mode=mode, num_beams=3, max_new_tokens=24)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    ids = smollm2.fit_prompt(question, settings.max_new_tokens).ids
    run = run_traced(smollm2, ids, settings, top_n=5)
    text = smollm2.tokenizer.decode(run.tokens, skip_special_tokens=True)
    assert text == smollm2.generate(question, settings)
    assert "Paris" in text
    assert run.trace.tokens == run.tokens
    assert all(0 < s.prob <= 1 for s in run.trace.steps)
    if mode == "greedy":  # the chosen token is the top candidate at every step
        assert all(s.token == s.stages[-1].top[0][0] for s in run.trace.steps)
    else:
        assert len(run.trace.nodes) > len(run.tokens) * 3  # kept and pruned hypotheses


def test_branch_keeps_the_prefix_and_the_chosen_token_on_smollm2(smollm2):
    settings = smollm2.settings(mode="greedy", max_new_tokens=20)
    ids = chat(smollm2, "Name a colour.")
    reply = run_traced(smollm2, ids, settings)
    position = 3
    alternative = reply.trace.steps[position].stages[-1].top[1][0]  # the runner-up
    branched = branch(smollm2, ids, reply.tokens, position, alternative, settings)
    assert branched.tokens[:position] == reply.tokens[:position]
    assert branched.tokens[position] == alternative != reply.tokens[position]
    assert len(branched.tokens) <= settings.max_new_tokens
    # the continuation is what greedy decoding gives from that prefix
    again = run_traced(
        smollm2,
        ids + branched.tokens[: position + 1],
        smollm2.settings(mode="greedy", max_new_tokens=20 - position - 1),
    )
    assert branched.tokens[position + 1 :] == again.tokens
    with pytest.raises(SettingsError, match="branch position must be from 0 to"):
        branch(smollm2, ids, reply.tokens, len(reply.tokens) + 1, alternative, settings)


def test_logprobs_json_is_openai_shaped_on_smollm2(smollm2):
    settings = smollm2.settings(mode="sample", seed=4, max_new_tokens=12)
    run = run_traced(smollm2, chat(smollm2, "Say hello."), settings, top_n=3)
    content = logprobs_json(run.trace.steps, smollm2.tokenizer, 3)
    assert [c["id"] for c in content] == run.tokens
    for item in content:
        assert item["logprob"] <= 0
        assert 1 <= len(item["top_logprobs"]) <= 3
        alts = [a["logprob"] for a in item["top_logprobs"]]
        assert alts == sorted(alts, reverse=True)
        assert item["stages"][0]["name"] == "model"
        assert item["stages"][-1]["logprob"] == item["logprob"]


def test_cli_prints_each_tokens_probability_and_alternatives():
    base = [sys.executable, "-m", "core", "generate", "What is the capital of France?"]
    run = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = run([*base, "--mode", "greedy", "--max-new-tokens", "8", "--logprobs", "3"])
    assert out.returncode == 0, out.stderr
    answer, table = out.stdout.split("\n# token, probability, top 3")
    rows = table.strip().splitlines()[1:]
    assert 1 <= len(rows) <= 8 and "Paris" in answer
    for i, row in enumerate(rows):
        left, alternatives = row.split(" | ")
        number, rest = left.split(maxsplit=1)
        token, prob = rest.strip().rsplit(maxsplit=1)
        assert int(number) == i and 0 < float(prob) <= 1
        assert alternatives.startswith(f"{token} {prob}")  # greedy: the pick is the top one
        assert len(re.findall(r" \d\.\d{4}(?:  |$)", alternatives)) == 3  # three, each with p
    bad = run([*base, "--logprobs", "21"])
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: logprobs must be a whole number from 1 to 20, got 21."
