"""Logits processors against transformers' warpers, greedy limits, sampling, bad settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.generate.logits import (
    NoRepeatNGram,
    Processors,
    RepetitionPenalty,
    SettingsError,
    Temperature,
    TopK,
    TopP,
    build_processors,
    is_greedy,
    sample_next,
)

DTYPES = [torch.float32, torch.bfloat16]


def random_logits(seed: int, B: int = 4, V: int = 50, *, ties: bool = False, inf: bool = False):
    """(B, V) float32 logits; `ties` draws small integers (many equal values), `inf` masks some."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        x = torch.randint(-3, 4, (B, V), generator=g).float()
    else:
        x = torch.randn(B, V, generator=g) * 3
    if inf:
        x[torch.rand(B, V, generator=g) < 0.3] = float("-inf")
        x[:, 0] = 1.0  # every row keeps a finite entry
    return x


def input_ids(seed: int, B: int = 4, V: int = 50, T: int = 12):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed + 1))


def assert_same(ours: torch.Tensor, theirs: torch.Tensor):
    """Same kept mask exactly, same values where kept."""
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    kept = torch.isfinite(ours)
    assert torch.equal(kept, torch.isfinite(theirs))
    torch.testing.assert_close(ours[kept], theirs[kept], rtol=0, atol=0)


def oracle(theirs, ids, x, dtype):
    """transformers' warper on exactly the values we see, in float32, cast back to dtype."""
    return theirs(ids, x.to(dtype).float()).to(dtype)


logit_cases = st.tuples(st.integers(0, 10_000), st.booleans(), st.booleans())


def check_against(ours, theirs, case, dtype) -> None:
    """Our processor and transformers' warper on the same random (seed, ties, -inf) logits."""
    seed, ties, inf = case
    x, ids = random_logits(seed, ties=ties, inf=inf).to(dtype), input_ids(seed)
    assert_same(ours(ids, x), oracle(theirs, ids, x, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(case=logit_cases, k=st.integers(1, 60))
def test_top_k_matches_transformers(dtype, case, k):
    check_against(TopK(k), TopKLogitsWarper(k), case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(case=logit_cases, p=st.sampled_from([1e-9, 1e-3, 0.1, 0.5, 0.8, 0.9, 0.95, 0.999]))
def test_top_p_matches_transformers(dtype, case, p):
    check_against(TopP(p), TopPLogitsWarper(p), case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(case=logit_cases, t=st.sampled_from([0.01, 0.3, 0.7, 1.0, 1.5, 10.0]))
def test_temperature_matches_transformers(dtype, case, t):
    check_against(Temperature(t), TemperatureLogitsWarper(t), case, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(case=logit_cases, penalty=st.sampled_from([0.5, 1.0, 1.1, 1.3, 2.0]))
def test_repetition_penalty_matches_transformers(dtype, case, penalty):
    check_against(
        RepetitionPenalty(penalty), RepetitionPenaltyLogitsProcessor(penalty), case, dtype
    )


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    B=st.sampled_from([1, 2, 5]),
    T=st.integers(1, 24),
    V=st.sampled_from([3, 6, 50]),
)
def test_no_repeat_ngram_matches_transformers(dtype, seed, n, B, T, V):
    """Small vocabularies make repeats common; T < n (nothing to ban) is drawn too."""
    x = random_logits(seed, B=B, V=V, inf=seed % 3 == 0).to(dtype)
    ids = input_ids(seed, B=B, V=V, T=T)
    ours = NoRepeatNGram(n)(ids, x)
    assert_same(ours, oracle(NoRepeatNGramLogitsProcessor(n), ids, x, dtype))


def test_no_repeat_ngram_bans_exactly_the_completions():
    ids = torch.tensor([[1, 2, 3, 1, 2, 4, 1, 2], [0, 0, 0, 0, 0, 0, 0, 0]])
    x = torch.zeros(2, 6)
    banned = ~torch.isfinite(NoRepeatNGram(3)(ids, x))
    assert banned.nonzero().tolist() == [[0, 3], [0, 4], [1, 0]]  # "1 2" was followed by 3 and 4
    assert (~torch.isfinite(NoRepeatNGram(1)(ids, x))).sum(-1).tolist() == [4, 1]  # any seen id
    assert NoRepeatNGram(0)(ids, x) is x and NoRepeatNGram(9)(ids, x) is x  # off; T < n
    # "5 7" would ban 7, an id past the head (V = 6): no real column is banned for it
    far = torch.tensor([[5, 7, 5]])
    assert torch.equal(NoRepeatNGram(2)(far, x[:1]), x[:1])
    assert_same(NoRepeatNGram(2)(far, x[:1]), NoRepeatNGramLogitsProcessor(2)(far, x[:1]))


def test_repetition_penalty_ignores_ids_beyond_the_head():
    x = random_logits(0, B=1, V=10)
    ids = torch.tensor([[3, 12, 3]])  # 12 >= V: an embedding row with no logit
    ours = RepetitionPenalty(1.5)(ids, x)
    assert_same(ours, RepetitionPenaltyLogitsProcessor(1.5)(ids, x.clone()))
    assert torch.equal(ours[0, :3], x[0, :3]) and not torch.equal(ours[0, 3], x[0, 3])


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.sampled_from([0, 1, 5, 100]),
    t=st.sampled_from([0.5, 1.0, 2.0]),
    p=st.sampled_from([0.3, 0.9, 1.0]),
    penalty=st.sampled_from([1.0, 1.2]),
    ngram=st.sampled_from([0, 1, 2]),
)
def test_pipeline_matches_transformers_list(dtype, seed, k, t, p, penalty, ngram):
    x, ids = random_logits(seed, inf=seed % 2 == 0).to(dtype), input_ids(seed)
    ours = build_processors(
        temperature=t, top_k=k, top_p=p, repetition_penalty=penalty, no_repeat_ngram_size=ngram
    )
    theirs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)])
    if ngram:
        theirs.append(NoRepeatNGramLogitsProcessor(ngram))
    if k:
        theirs.append(TopKLogitsWarper(k))
    theirs.append(TemperatureLogitsWarper(t))
    if p < 1:  # transformers' top_p=1.0 also drops tokens whose probability underflows to 0
        theirs.append(TopPLogitsWarper(p))
    # the oracle rounds once per step in bf16 too, as ours does
    expected = x
    for proc in theirs:
        expected = oracle(proc, ids, expected, dtype)
    assert_same(ours(ids, x), expected)


def test_edge_cases():
    x, ids = random_logits(1, inf=True), input_ids(1)
    assert TopK(0)(ids, x) is x and TopK(50)(ids, x) is x and TopK(10**6)(ids, x) is x
    assert TopP(1.0)(ids, x) is x
    # transformers' TopP(1.0) masks only tokens of probability exactly 0: the same distribution
    torch.testing.assert_close(
        x.softmax(-1), TopPLogitsWarper(1.0)(ids, x).softmax(-1), rtol=0, atol=0
    )
    kept = torch.isfinite(TopP(1e-9)(ids, x))
    assert torch.equal(kept.sum(-1), torch.ones(4, dtype=torch.long))
    assert torch.equal(kept.float().argmax(-1), x.argmax(-1))


def test_ties_at_kth_value_are_kept():
    x = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, float("-inf")]])
    assert torch.isfinite(TopK(2)(None, x)).tolist() == [[True, True, True, True, False, False]]
    # more kept than finite: nothing changes
    assert torch.equal(TopK(5)(None, x), x)


def test_tie_at_nucleus_boundary_breaks_like_transformers():
    x = torch.tensor([[0.4, 0.3, 0.3, 0.0], [0.3, 0.3, 0.4, 0.0]]).log()
    ours, theirs = TopP(0.6)(None, x), TopPLogitsWarper(0.6)(None, x)
    assert_same(ours, theirs)
    assert torch.isfinite(ours).sum(-1).tolist() == [2, 2]  # the smallest set reaching 0.6


def test_batched_rows_are_independent():
    x, ids = random_logits(3, B=6), input_ids(3, B=6)
    procs = build_processors(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3)
    rows = torch.cat([procs(ids[i : i + 1], x[i : i + 1]) for i in range(6)])
    assert torch.equal(procs(ids, x), rows)


@pytest.mark.parametrize("setting", [{"temperature": 0.01}, {"top_k": 1}])
def test_near_zero_temperature_and_top_k_1_are_greedy(setting):
    g = torch.Generator().manual_seed(0)
    # distinct logits with gaps of 1: temperature 0.01 (the least) leaves all the mass on the argmax
    x = torch.stack([torch.randperm(64, generator=g) for _ in range(8)]).float()
    procs = build_processors(**setting)
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(sample_next(procs(None, x), gen), x.argmax(-1))


def test_is_greedy():
    assert is_greedy(0, 0) and is_greedy(0.0, 50) and is_greedy(0.7, 1)
    assert not is_greedy(0.7, 0) and not is_greedy(0.01, 2)
    with pytest.raises(SettingsError):
        is_greedy(-1.0, 0)


def test_build_processors_order_and_omissions():
    assert build_processors() == []
    assert build_processors(temperature=0, top_k=5, top_p=0.5) == []
    procs = build_processors(temperature=0, repetition_penalty=1.2)
    assert [type(p) for p in procs] == [RepetitionPenalty]
    procs = build_processors(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.1)
    assert [type(p) for p in procs] == [RepetitionPenalty, TopK, Temperature, TopP]
    procs = build_processors(top_k=5, repetition_penalty=1.1, no_repeat_ngram_size=3)
    assert [type(p) for p in procs] == [RepetitionPenalty, NoRepeatNGram, TopK]
    procs = build_processors(temperature=0, no_repeat_ngram_size=2)  # greedy keeps the ban
    assert [type(p) for p in procs] == [NoRepeatNGram] and procs[0].n == 2
    assert build_processors(no_repeat_ngram_size=0) == []
    assert isinstance(procs, Processors)


# --- sampling statistics ----------------------------------------------------------------------

P = np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02])


def expected_probs(p, *, temperature=1.0, top_k=0, top_p=1.0):
    """The processed distribution written independently, in float64 numpy."""
    q = p.copy()
    if top_k:
        q[np.argsort(-q)[top_k:]] = 0
    q = q ** (1 / temperature)
    q /= q.sum()
    order = np.argsort(-q)
    before = np.cumsum(q[order]) - q[order]  # mass strictly above each token
    q[order[before >= top_p]] = 0
    return q / q.sum()


SAMPLING_SETTINGS = [
    {},
    {"temperature": 0.5},
    {"temperature": 2.0},
    {"top_k": 3},
    {"top_p": 0.8},
    {"top_k": 5, "temperature": 0.5, "top_p": 0.8},
]


@pytest.mark.parametrize("setting", SAMPLING_SETTINGS, ids=str)
def test_draws_follow_processed_distribution(setting):
    n = 20_000
    x = torch.tensor(np.log(P), dtype=torch.float32).expand(n, -1)  # (n, 8) same row n times
    draws = sample_next(build_processors(**setting)(None, x), torch.Generator().manual_seed(7))
    counts = np.bincount(draws.numpy(), minlength=len(P))
    q = expected_probs(P, **setting)
    assert counts[q == 0].sum() == 0  # outside top-k / the nucleus never appears
    support = q > 0
    f_exp = q[support] * n
    assert chisquare(counts[support], f_exp * counts[support].sum() / f_exp.sum()).pvalue > 1e-3


def test_expected_probs_reference_is_right():
    assert (expected_probs(P, top_p=0.8) > 0).sum() == 5  # 0.77 < 0.8 <= 0.87
    combined = expected_probs(P, top_k=5, temperature=0.5, top_p=0.8)
    assert (combined > 0).sum() == 3  # 0.51, 0.73, 0.86


def test_seeded_sampling_is_reproducible():
    x = random_logits(5, B=16)
    a = sample_next(x, torch.Generator().manual_seed(123))
    b = sample_next(x, torch.Generator().manual_seed(123))
    c = sample_next(x, torch.Generator().manual_seed(124))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16,) and a.dtype == torch.long


def test_sample_next_bf16():
    x = torch.tensor([[0.0, float("-inf"), 2.0, float("-inf")]], dtype=torch.bfloat16)
    draws = sample_next(x.expand(2000, -1), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 2}


# --- bad settings -----------------------------------------------------------------------------

BAD = [
    (Temperature, -0.5, r"temperature must be 0 \(greedy\) or from 0.01 to 100, got -0.5\."),
    (
        Temperature,
        math.nan,
        r"temperature must be a number 0 \(greedy\) or from 0.01 to 100, got nan\.",
    ),
    (Temperature, math.inf, r"temperature must be a number 0 \(greedy\)"),
    (Temperature, 0, r"temperature 0 means greedy decoding"),
    (Temperature, "0.7", r"temperature must be a number"),
    (TopP, 0, r"top_p must be in \(0, 1\], got 0\."),
    (TopP, -0.1, r"top_p must be in \(0, 1\], got -0.1\."),
    (TopP, 1.5, r"top_p must be in \(0, 1\], got 1.5\."),
    (TopP, math.nan, r"top_p must be a number in \(0, 1\], got nan\."),
    (TopK, -1, r"top_k must be a whole number >= 0 \(0 turns it off\), got -1\."),
    (TopK, 2.5, r"top_k must be a whole number >= 0 \(0 turns it off\), got 2.5\."),
    (TopK, 3.0, r"top_k must be a whole number"),
    (TopK, True, r"top_k must be a whole number"),
    (
        RepetitionPenalty,
        0,
        r"repetition_penalty must be a number > 0 \(1.0 turns it off\), got 0\.",
    ),
    (RepetitionPenalty, -1.2, r"repetition_penalty must be a number > 0"),
    (RepetitionPenalty, math.inf, r"repetition_penalty must be a number > 0"),
    (NoRepeatNGram, -1, r"no_repeat_ngram_size must be a whole number >= 0 \(0 turns it off"),
    (NoRepeatNGram, 2.5, r"no_repeat_ngram_size must be a whole number >= 0.*got 2.5\."),
    (NoRepeatNGram, 3.0, r"no_repeat_ngram_size must be a whole number"),
    (NoRepeatNGram, True, r"no_repeat_ngram_size must be a whole number"),
    (NoRepeatNGram, "3", r"no_repeat_ngram_size must be a whole number"),
]


@pytest.mark.parametrize(("cls", "value", "message"), BAD)
def test_bad_settings_raise(cls, value, message):
    with pytest.raises(SettingsError, match=message):
        cls(value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1.0},
        {"temperature": math.nan},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"top_k": -3},
        {"top_k": 1.5},
        {"repetition_penalty": 0.0},
        {"no_repeat_ngram_size": -2},
        {"no_repeat_ngram_size": 1.5},
        {"temperature": 0, "top_p": 2.0},  # validated even when greedy ignores it
    ],
    ids=str,
)
def test_build_processors_validates(kwargs):
    with pytest.raises(SettingsError):
        build_processors(**kwargs)


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)
    assert TopK(np.int64(3)).top_k == 3 and Temperature(1).temperature == 1.0
    assert NoRepeatNGram(np.int64(3)).n == 3
