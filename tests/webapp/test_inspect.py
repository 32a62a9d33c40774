"""The "Inside the model" data path on the real SmolLM2 and ChatService: a chat reply scored token
by token, branches, the beam tree, the decoding lab, /chat logprobs, and the drawings."""

from __future__ import annotations

import pytest
import torch

from core.generate.traced import replay, run_traced
from webapp.chat import ChatInputError, ChatLimits, ChatRequest, ChatService
from webapp.display import answer_markdown
from webapp.documents import Library
from webapp.inspect_runs import (
    NOTES_PRESET,
    add_branch,
    chat_logprobs,
    inspect_reply,
    lab,
    last_reply,
    repetition_rate,
)
from webapp.inspect_views import beam_svg, context_html, heatmap_svg, stages_table, tokens_html
from webapp.models import ModelRegistry

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def service(smollm2, tmp_path_factory) -> ChatService:
    registry = ModelRegistry("no-models-here", loader=lambda source: smollm2)
    library = Library(path=tmp_path_factory.mktemp("chroma"))
    yield ChatService(registry, library, limits=ChatLimits(max_new_tokens=16))
    library.close()


def chat_once(service, request: ChatRequest) -> list[dict]:
    """The chat history after one answer, as the UI shows it."""
    *_, reply = service.reply(request)
    return [
        {"role": "user", "content": request.message},
        {"role": "assistant", "content": answer_markdown(reply)},
    ]


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
def test_a_reply_is_scored_as_it_was_decoded(service, smollm2, mode):
    request = ChatRequest(QUESTION, mode=mode, num_beams=3, seed=7)
    history = chat_once(service, request)
    reply = last_reply(history)
    found = inspect_reply(service, request, reply)
    branch = found.branches[0]
    assert smollm2.tokenizer.decode(branch.tokens, skip_special_tokens=True) == reply
    steps = branch.trace.steps
    assert [s.token for s in steps] == branch.tokens
    assert all(0 < s.prob <= 1 and s.stages[0].name == "model" for s in steps)
    if mode == "greedy":  # a greedy reply takes the most probable processed token every time
        assert all(s.token == s.stages[-1].top[0][0] for s in steps)
    if mode == "sample":  # sampling's processors are all there, top-k keeping exactly its k
        assert [s.name for s in steps[0].stages] == ["model", "TopK", "Temperature", "TopP"]
        assert all(s.stages[1].support == 50 for s in steps)
    if mode == "beam":  # the tree's best path is the answer shown (less its stop token)
        stops = smollm2.tokenizer.stop_token_ids
        assert [t for t in found.beam.tokens if t not in stops] == branch.tokens
        assert {n.status for n in found.beam.nodes} >= {"running", "pruned"}
        assert found.beam.nodes[found.beam.best].status == "finished"


def test_branching_keeps_the_prefix_and_builds_a_tree(service, smollm2):
    request = ChatRequest(QUESTION, mode="greedy")
    found = inspect_reply(service, request, last_reply(chat_once(service, request)))
    reply = found.branches[0]
    runner_up = reply.trace.steps[2].stages[0].top[1][0]
    first = add_branch(smollm2, found, 0, 2, runner_up)
    assert first.tokens[:2] == reply.tokens[:2] and first.tokens[2] == runner_up
    assert (first.parent, first.position, first.id) == (0, 2, 1)
    assert [s.token for s in first.trace.steps] == first.tokens  # replayed for its token view
    second = add_branch(smollm2, found, 1, 4, first.trace.steps[4].stages[0].top[1][0])
    assert second.tokens[:4] == first.tokens[:4] and second.parent == 1
    with pytest.raises(ChatInputError, match="Pick a token from 0 to"):
        add_branch(smollm2, found, 1, 99, runner_up)
    with pytest.raises(ChatInputError, match="There is no branch 7"):
        add_branch(smollm2, found, 7, 0, runner_up)


def test_nothing_to_inspect_says_so():
    with pytest.raises(ChatInputError, match="send a message first"):
        last_reply([{"role": "user", "content": "hi"}])


def test_the_lab_streams_every_column_at_once(service, smollm2):
    settings = smollm2.settings(max_new_tokens=10, seed=3)
    ids = smollm2.fit_prompt([{"role": "user", "content": QUESTION}], 10).ids
    names = ["greedy", "beam 3", "sample T=0.7"]
    rounds = list(lab(smollm2, ids, names, settings))
    first, last = rounds[0], rounds[-1]
    assert all(len(c.run.tokens) >= 1 for c in first)  # each column has begun after one round
    assert all(c.done for c in last) and [c.name for c in last] == names
    greedy = run_traced(smollm2, ids, smollm2.settings(mode="greedy", max_new_tokens=10))
    assert last[0].run.text == greedy.text
    for column in last:
        assert column.run.tokens_per_second > 0 and column.run.logprob <= 0
        assert 0 <= column.repetition <= 1
    model_logprob = sum(s.stages[0].chosen for s in greedy.trace.steps)
    assert last[0].run.logprob == pytest.approx(model_logprob)  # the model's, comparable
    sample = last[2].run.trace.steps  # T=0.7 sharpens: its own distribution is not the model's
    assert last[2].run.logprob == pytest.approx(sum(s.stages[0].chosen for s in sample))
    with pytest.raises(ChatInputError, match="Unknown strategy"):
        next(lab(smollm2, ids, ["nucleus 2"], settings))
    with pytest.raises(ChatInputError, match="at most 6"):
        next(lab(smollm2, ids, NOTES_PRESET * 2, settings))


def test_repetition_rate_counts_repeated_trigrams():
    assert repetition_rate([1, 2, 3, 4, 5]) == 0
    assert repetition_rate([1, 2, 3, 1, 2, 3]) == pytest.approx(1 / 4)  # (1,2,3) seen twice
    assert repetition_rate([7, 7]) == 0


def test_chat_logprobs_are_openai_shaped_and_match_the_text(service, smollm2):
    request = ChatRequest(QUESTION, mode="greedy")
    items = list(chat_logprobs(service, request, "", 3))
    final = items[-1]
    assert final["finish_reason"] in ("eos", "length")
    assert all(
        i["logprobs"] is None for i in items[:-1]
    )  # the per-token list comes once, at the end
    content = final["logprobs"]["content"]
    ids = [c["id"] for c in content]
    assert smollm2.tokenizer.decode(ids, skip_special_tokens=True) == final["text"]
    assert final["text"] == last_reply(chat_once(service, request))
    for c in content:
        assert c["top_logprobs"][0]["id"] == c["id"]  # greedy: the top alternative is the pick
        assert len(c["top_logprobs"]) == 3
    with pytest.raises(ChatInputError, match="logprobs must be a whole number from 1 to 20"):
        next(chat_logprobs(service, request, "", 0))


def test_drawings_escape_model_text_and_show_what_they_say(smollm2):
    tok = smollm2.tokenizer
    evil = tok.encode("<script>alert(1)</script> & done")
    settings = smollm2.settings(mode="beam", num_beams=2, max_new_tokens=6)
    ids = smollm2.fit_prompt([{"role": "user", "content": "<b>hi</b>"}], 6).ids
    beam = run_traced(smollm2, ids, settings).trace
    trace = replay(smollm2.model, ids, evil, settings)
    view = tokens_html(trace.steps, tok)
    assert "<script" not in view and "</script" not in view  # no live tag, not even in a title
    assert ">&lt;</span>" in view and ">&lt;/</span>" in view  # shown as text, token by token
    assert view.count('class="tok"') == len(evil)
    headers, rows = stages_table(trace.steps[0], tok)
    assert headers == ["#", "model"] and len(rows) == 11  # top 10, then the totals row
    svg = beam_svg(beam, tok)
    assert svg.count('<g class="beam-node') == len(beam.nodes) - 1
    assert svg.count("beam-node finished") >= 1
    labels = ["<a>", "b", "c"]
    heat = heatmap_svg(
        torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]), labels, labels, "t"
    )
    assert "<a>" not in heat and heat.count("<rect") == 1 + 6  # background + nonzero cells
    shaded = context_html(["<s>", "x", "y"], torch.tensor([0.9, 0.02, 0.08]))
    assert "&lt;s&gt;" in shaded and shaded.count("<span") == 3
