"""Score a model on held-out recipe examples (the baselines are in `recipes.baselines`).

Each held-out row is asked exactly as fine-tuning renders it: one user message whose content is
the prompt (task rows) or `prompts.instruction(instruction, input)` (Alpaca rows), through the
model's chat template. Scores:
  rank   (label rows) rank classification, as lm-evaluation-harness scores multiple choice: each
         label is scored by the summed log-probability of its tokens and the end-of-turn token
         after the prompt, exactly as fine-tuning encodes the reply; the argmax is the answer;
  label  (label rows, reported as generation accuracy) the first label named in the greedy answer
         equals the gold label;
  exact  (other rows) the greedy answer's first words equal the gold words, after normalising
         case, punctuation and space.
A row's `accuracy` is rank accuracy for label tasks and exact match for the others.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.generate import prompts
from core.generate.logits import SettingsError

_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes inside words kept), whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def first_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label named earliest in `answer` (whole words, normalised); ties go to the longest."""
    text = f" {normalize(answer)} "
    best: tuple[int, int, str] | None = None
    for label in labels:
        at = text.find(f" {normalize(label)} ")
        if at >= 0 and (best is None or (at, -len(label)) < best[:2]):
            best = (at, -len(label), label)
    return best[2] if best else None


def score_label(answer: str, gold: str, labels: Sequence[str]) -> bool:
    return first_label(answer, labels) == gold


def score_exact(answer: str, gold: str) -> bool:
    """The answer starts with the gold words (case, punctuation and spacing ignored)."""
    want = normalize(gold).split()
    return bool(want) and normalize(answer).split()[: len(want)] == want


def score(row: dict[str, Any], answer: str) -> bool:
    gold = row.get("completion", row.get("output", ""))
    if row.get("labels"):
        return score_label(answer, gold, row["labels"])
    return score_exact(answer, gold)


def user_content(row: dict[str, Any]) -> str:
    """The user message fine-tuning builds from a row (task or Alpaca shape)."""
    if "prompt" in row:
        return row["prompt"]
    return prompts.instruction(row["instruction"], row.get("input", ""))


def rendered_length(tokenizer: Any, row: dict[str, Any]) -> int:
    """Tokens of the row as fine-tuning renders it: prompt, generation header and answer."""
    chat = [{"role": "user", "content": user_content(row)}]
    answer = row.get("completion", row.get("output", ""))
    return len(tokenizer.encode(tokenizer.apply_chat_template(chat))) + len(
        tokenizer.encode(answer)
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def evaluate_rows(llm: Any, rows: Sequence[dict[str, Any]], max_new_tokens: int = 12) -> dict:
    """Accuracy per task plus every answer; `llm` is a `core.generate.engine.LLM`."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    answers, too_long = [], 0
    started = time.perf_counter()
    for row in rows:
        messages = [{"role": "user", "content": user_content(row)}]
        try:
            answer = llm.generate(messages, mode="greedy", max_new_tokens=max_new_tokens)
        except SettingsError:  # the prompt does not fit the model's context: scored as a miss
            answer, too_long = "", too_long + 1
        task, ok = row.get("task", "task"), score(row, answer)
        hits[task] += ok
        totals[task] += 1
        if len(answers) % 10 == 9:
            print(f"  {len(answers) + 1}/{len(rows)} rows", file=sys.stderr, flush=True)
        answers.append(
            {
                "task": task,
                "answer": answer,
                "gold": row.get("completion", row.get("output")),
                "ok": ok,
            }
        )
    accuracy = {task: hits[task] / totals[task] for task in totals}
    return {
        "accuracy": accuracy,
        "n": dict(totals),
        "too_long": too_long,
        "answers": answers,
        "seconds": round(time.perf_counter() - started, 1),
    }


def first_per_task(rows: Sequence[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` rows of each task, in file order (all rows when `limit` is None)."""
    seen: Counter[str] = Counter()
    kept = []
    for row in rows:
        seen[row.get("task", "task")] += 1
        if limit is None or seen[row.get("task", "task")] <= limit:
            kept.append(row)
    return kept


# --------------------------------------------------------------------------- rank classification
def label_continuations(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, ids of each label's reply) as fine-tuning encodes a row answered by that
    label: the chat up to the generation header, then the label's tokens and end-of-turn token."""
    from core.train import data

    prompt: list[int] = []
    replies = []
    for label in row["labels"]:
        chat = [
            {"role": "user", "content": user_content(row)},
            {"role": "assistant", "content": label},
        ]
        ids, labels = data.encode_chat(tokenizer, chat, "rank")
        scored = [j for j, t in enumerate(labels) if t != data.IGNORE]
        prompt = ids[: scored[0]]  # the same for every label: the rendered prompt is encoded alone
        replies.append(ids[scored[0] : scored[-1] + 1])
    return prompt, replies


def continuation_logprobs(
    model: Any, prompt: Sequence[int], replies: Sequence[Sequence[int]]
) -> list[float]:
    """Summed log p(reply | prompt) for each reply: one pass over the prompt, then every reply
    as one right-padded batch over copies of the prompt's KV cache (causal, so padding after a
    reply cannot change its scores)."""
    import torch

    n, longest = len(replies), max(len(r) for r in replies)
    batch = torch.zeros(n, longest, dtype=torch.long)  # (n, L)
    for i, reply in enumerate(replies):
        batch[i, : len(reply)] = torch.tensor(reply)
    valid = torch.arange(longest) < torch.tensor([len(r) for r in replies])[:, None]  # (n, L)
    cache = model.new_cache(1, len(prompt) + longest)
    with torch.no_grad():
        first = model(torch.tensor([list(prompt)]), cache, last_only=True)  # (1, 1, V)
        cache.reorder(torch.zeros(n, dtype=torch.long))  # n copies of the prompt's keys/values
        rest = model(batch, cache)  # (n, L, V): rest[:, t] predicts token t + 1
        logits = torch.cat([first.expand(n, -1, -1), rest[:, :-1]], dim=1)  # (n, L, V)
        logp = logits.float().log_softmax(-1).gather(-1, batch[..., None]).squeeze(-1)  # (n, L)
    return (logp * valid).sum(-1).tolist()


def classify_rows(llm: Any, rows: Sequence[dict[str, Any]], scores_of: Any) -> dict[str, Any]:
    """Accuracy per task over the rows with labels when each row's answer is the label with the
    highest of `scores_of(row)` (one score per label), and each row's pick (None without labels).
    A prompt that leaves no room for a label in the model's context is a counted miss."""
    from core import kernels
    from core.model import ContextLengthError

    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    picks, too_long = [], 0
    started = time.perf_counter()
    with kernels.batched(llm.model):  # several rows per step
        for row in rows:
            if not row.get("labels"):
                picks.append(None)
                continue
            try:
                scores = scores_of(row)
                pick = row["labels"][max(range(len(scores)), key=scores.__getitem__)]
            except ContextLengthError:
                pick, too_long = None, too_long + 1
            task = row.get("task", "task")
            hits[task] += pick == row.get("completion", row.get("output"))
            totals[task] += 1
            picks.append(pick)
    accuracy = {task: hits[task] / totals[task] for task in totals}
    return {
        "accuracy": accuracy,
        "picks": picks,
        "too_long": too_long,
        "seconds": round(time.perf_counter() - started, 1),
    }


def rank_rows(llm: Any, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rank classification: each label scored by log p(label reply | the row's prompt)."""
    return classify_rows(
        llm,
        rows,
        lambda row: continuation_logprobs(llm.model, *label_continuations(llm.tokenizer, row)),
    )


def channel_logprobs(
    model: Any, tokenizer: Any, prompts_: Sequence[str], reply: str
) -> list[float]:
    """Summed log p(reply | prompt) for each prompt, as fine-tuning encodes a chat whose user
    message is the prompt and whose assistant reply is `reply` (its end-of-turn token included):
    all prompts as one right-padded batch (causal, so the padding cannot change a score)."""
    import torch

    from core.train import data

    chats = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": reply}] for p in prompts_
    ]
    encoded = [data.encode_chat(tokenizer, chat, "channel") for chat in chats]
    longest = max(len(ids) for ids, _ in encoded)
    batch = torch.zeros(len(encoded), longest, dtype=torch.long)  # (n, L)
    targets = torch.full((len(encoded), longest), data.IGNORE, dtype=torch.long)  # (n, L)
    for i, (ids, labels) in enumerate(encoded):
        batch[i, : len(ids)] = torch.tensor(ids)
        targets[i, : len(ids)] = torch.tensor(labels)
    with torch.no_grad():
        logits = model(batch[:, :-1]).float()  # (n, L - 1, V): position t predicts token t + 1
    gold = targets[:, 1:]  # (n, L - 1)
    scored = gold != data.IGNORE
    logp = logits.log_softmax(-1).gather(-1, gold.clamp(min=0)[..., None]).squeeze(-1)
    return (logp * scored).sum(-1).tolist()


def channel_rows(llm: Any, rows: Sequence[dict[str, Any]], template: str) -> dict[str, Any]:
    """Noisy-channel classification (Min et al., 2022): each label scored by the log-probability
    of the row's passage given `template.format(label=...)`, the argmax is the answer (Bayes'
    rule under a uniform prior: the test sets are balanced). Rows need "passage" and "labels"."""
    return classify_rows(
        llm,
        rows,
        lambda row: channel_logprobs(
            llm.model,
            llm.tokenizer,
            [template.format(label=label) for label in row["labels"]],
            row["passage"],
        ),
    )


def evaluate(
    source: str | Path,
    test_file: str | Path,
    max_new_tokens: int = 12,
    limit: int | None = None,
    label_generation: bool = True,
    channel: str | None = None,
) -> dict:
    """Load `source` with `core.generate.engine.LLM.load`; score it on (up to `limit` per task)
    test rows: label tasks by rank classification (generation accuracy alongside unless
    `label_generation` is False, which saves most of the time for a large model), the others by
    exact match.
    With a `channel` template, rows carrying a "passage" are also classified by `channel_rows`
    (`channel_accuracy`, and each answer's `channel_pick`), beside their rank accuracy."""
    from core.generate.engine import LLM

    rows = first_per_task(read_rows(test_file), limit)
    llm = LLM.load(source, dtype="fp32")
    asked = [label_generation or not row.get("labels") for row in rows]
    generated = evaluate_rows(
        llm, [r for r, a in zip(rows, asked, strict=True) if a], max_new_tokens
    )
    ranked = rank_rows(llm, rows)
    answers, replies = [], iter(generated["answers"])
    for row, ask, pick in zip(rows, asked, ranked["picks"], strict=True):
        gold = row.get("completion", row.get("output"))
        answer = next(replies) if ask else {"task": row.get("task", "task"), "gold": gold}
        if row.get("labels"):
            answer.update(rank_pick=pick, rank_ok=pick == gold)
        answers.append(answer)
    n = dict(Counter(row.get("task", "task") for row in rows))
    scoring = {t: "rank" if t in ranked["accuracy"] else "exact" for t in n}
    accuracy = {**generated["accuracy"], **ranked["accuracy"]}
    result = {
        "model": str(source),
        "test_file": str(test_file),
        "n": n,
        "answers": answers,
        "generation_accuracy": generated["accuracy"],
        "rank_accuracy": ranked["accuracy"],
        "too_long": generated["too_long"],
        "rank_too_long": ranked["too_long"],
        "generation_seconds": generated["seconds"],
        "seconds": round(generated["seconds"] + ranked["seconds"], 1),
    }
    at = [i for i, row in enumerate(rows) if channel and row.get("passage") and row.get("labels")]
    if at:
        chosen = channel_rows(llm, [rows[i] for i in at], channel)
        for i, pick in zip(at, chosen["picks"], strict=True):
            gold = rows[i].get("completion", rows[i].get("output"))
            answers[i].update(channel_pick=pick, channel_ok=pick == gold)
        result.update(
            channel_accuracy=chosen["accuracy"],
            channel_too_long=chosen["too_long"],
            seconds=round(result["seconds"] + chosen["seconds"], 1),
        )
    return {**result, "accuracy": accuracy, "scoring": scoring}
