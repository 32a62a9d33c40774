"""Greedy and beam search against `transformers.generate`, on tiny random models and SmolLM2."""

from __future__ import annotations

import pytest
import torch

from core.checkpoint import build_model
from core.generate.decode import run_beam_search, stream_tokens
from core.weights import load_hf_dir

transformers = pytest.importorskip("transformers")


def tiny_pair(family: str, tmp_path):
    """A random transformers model and ours on the same weights."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128
        )
        ref = transformers.GPT2LMHeadModel(cfg)
    elif family == "llama":
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        ref = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    with torch.no_grad():  # sharper distributions than the 0.02-std init: beams then disagree
        for p in ref.parameters():
            p.mul_(8.0 if p.dim() == 2 else 1.0)
    ref.eval().save_pretrained(tmp_path)
    config, state, _ = load_hf_dir(tmp_path)
    return ref, build_model(config, state, source="tiny")


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2"])
def pair(request, tmp_path_factory):
    return tiny_pair(request.param, tmp_path_factory.mktemp(request.param))


PROMPTS = [[5, 17, 33, 2], [60, 1, 1, 9, 40, 41, 12], [7]]


def hf_generate(ref, prompt, **kwargs) -> list[int]:
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), do_sample=False, **kwargs)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers_on_tiny_models(pair, prompt):
    ref, ours = pair
    expected = hf_generate(ref, prompt, max_new_tokens=30, eos_token_id=None, pad_token_id=0)
    assert list(stream_tokens(ours, prompt, max_new_tokens=30)) == expected


def eos_for(ours, prompt) -> int:
    """A token greedy decoding emits a few steps in: as EOS, beams finish at different lengths."""
    return list(stream_tokens(ours, prompt, max_new_tokens=6))[4]


@pytest.mark.parametrize("num_beams", [2, 4])
@pytest.mark.parametrize("length_penalty", [0.6, 1.0, 2.0])
@pytest.mark.parametrize(
    "early_stopping", [True, False, pytest.param("never", marks=pytest.mark.slow)]
)
def test_beam_search_matches_transformers_on_tiny_models(
    pair, num_beams, length_penalty, early_stopping
):
    ref, ours = pair
    for prompt in PROMPTS[:2]:
        eos = eos_for(ours, prompt)
        kwargs = dict(
            num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping
        )
        expected = hf_generate(
            ref, prompt, max_new_tokens=16, eos_token_id=eos, pad_token_id=eos, **kwargs
        )
        result = run_beam_search(ours, prompt, max_new_tokens=16, eos_ids=[eos], **kwargs)
        assert result.best == expected
        assert len(result.beams) == num_beams
        assert [s for _, s in result.beams] == sorted((s for _, s in result.beams), reverse=True)


def test_beam_width_one_is_greedy(pair):
    _, ours = pair
    prompt = PROMPTS[0]
    assert run_beam_search(ours, prompt, num_beams=1, max_new_tokens=12).best == list(
        stream_tokens(ours, prompt, max_new_tokens=12)
    )


def test_beam_result_scores_are_length_normalised(pair):
    """Each finished beam's score is its summed log-probability / length ** length_penalty."""
    _, ours = pair
    prompt = PROMPTS[1]
    result = run_beam_search(ours, prompt, num_beams=3, max_new_tokens=8, length_penalty=1.5)
    for tokens, score in result.beams:
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logp = torch.log_softmax(ours(ids)[0, len(prompt) - 1 : -1].float(), dim=-1)
        total = logp.gather(1, torch.tensor(tokens)[:, None]).sum().item()
        assert score == pytest.approx(total / len(tokens) ** 1.5, abs=1e-3)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_greedy_matches_transformers_on_tiny_models(pair, n):
    ref, ours = pair
    changed = False
    for prompt in PROMPTS:  # PROMPTS[2] is shorter than n: bans start once the text is long enough
        kwargs = dict(max_new_tokens=30, eos_token_id=None, pad_token_id=0)
        expected = hf_generate(ref, prompt, no_repeat_ngram_size=n, **kwargs)
        got = list(stream_tokens(ours, prompt, max_new_tokens=30, no_repeat_ngram_size=n))
        assert got == expected
        changed |= got != list(stream_tokens(ours, prompt, max_new_tokens=30))
    assert changed  # the sharpened tiny models loop, so the ban must bite somewhere


@pytest.mark.parametrize(("n", "num_beams"), [(2, 2), (3, 4)])
def test_no_repeat_ngram_beam_search_matches_transformers_on_tiny_models(pair, n, num_beams):
    """With no EOS every beam runs the full 16 tokens, long enough to loop; with one they differ
    in length."""
    ref, ours = pair
    changed = False
    for prompt in PROMPTS[:2]:
        for eos in (None, eos_for(ours, prompt)):
            expected = hf_generate(
                ref,
                prompt,
                max_new_tokens=16,
                eos_token_id=eos,
                pad_token_id=0 if eos is None else eos,
                num_beams=num_beams,
                no_repeat_ngram_size=n,
            )
            kwargs = dict(
                num_beams=num_beams, max_new_tokens=16, eos_ids=[] if eos is None else [eos]
            )
            result = run_beam_search(ours, prompt, no_repeat_ngram_size=n, **kwargs)
            assert result.best == expected
            changed |= result.best != run_beam_search(ours, prompt, **kwargs).best
    assert changed  # the ban must bite somewhere


def test_penalize_prompt_false_leaves_the_prompt_out_of_the_repetition_knobs(pair):
    """The first token has no generated history: with penalize_prompt=False a huge penalty and a
    1-gram ban leave it as plain greedy picks it, even though the prompt holds it; with the
    prompt penalized, it is pushed out."""
    _, ours = pair
    candidates = ([*base, k] for base in PROMPTS for k in range(64))
    prompt, token = next(
        (p, t)
        for p in candidates
        for [t] in [list(stream_tokens(ours, p, max_new_tokens=1))]
        if t in p
    )
    for search in ("greedy", "beam"):
        knobs = dict(repetition_penalty=50.0, no_repeat_ngram_size=1, penalize_prompt=False)
        if search == "greedy":
            free = list(stream_tokens(ours, prompt, max_new_tokens=1, **knobs))
            held = list(
                stream_tokens(ours, prompt, max_new_tokens=1, **{**knobs, "penalize_prompt": True})
            )
        else:
            free = run_beam_search(ours, prompt, num_beams=2, max_new_tokens=1, **knobs).best
            knobs["penalize_prompt"] = True
            held = run_beam_search(ours, prompt, num_beams=2, max_new_tokens=1, **knobs).best
        assert free == [token] and held != [token], search
