"""Score a model on held-out recipe examples, the unigram baseline, and samples from a model.

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
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import prompts
from core.logits import SettingsError

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
    """Tokens of the row as fine-tuning renders it: the prompt with the generation header + answer."""
    chat = [{"role": "user", "content": user_content(row)}]
    answer = row.get("completion", row.get("output", ""))
    return len(tokenizer.encode(tokenizer.apply_chat_template(chat))) + len(
        tokenizer.encode(answer)
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def evaluate_rows(llm: Any, rows: Sequence[dict[str, Any]], max_new_tokens: int = 12) -> dict:
    """Accuracy per task plus every answer; `llm` is a `core.engine.LLM`."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    answers, too_long = [], 0
    started = time.perf_counter()
    for row in rows:
        messages = [{"role": "user", "content": user_content(row)}]
        try:
            answer = "".join(llm.stream(messages, mode="greedy", max_new_tokens=max_new_tokens))
        except SettingsError:  # the prompt does not fit the model's context: scored as a miss
            answer, too_long = "", too_long + 1
        task, ok = row.get("task", "task"), score(row, answer)
        hits[task] += ok
        totals[task] += 1
        if len(answers) % 10 == 9:
            print(f"  {len(answers) + 1}/{len(rows)} rows", file=sys.stderr, flush=True)
        answers.append({"task": task, "answer": answer, "gold": row.get("completion", row.get("output")), "ok": ok})  # fmt: skip
    accuracy = {task: hits[task] / totals[task] for task in totals}
    return {"accuracy": accuracy, "n": dict(totals), "too_long": too_long, "answers": answers,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


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
    from core import data

    prompt: list[int] = []
    replies = []
    for label in row["labels"]:
        chat = [{"role": "user", "content": user_content(row)},
                {"role": "assistant", "content": label}]  # fmt: skip
        ids, labels = data.encode_chat(tokenizer, chat, "rank")
        scored = [j for j, t in enumerate(labels) if t != data.IGNORE]
        prompt = ids[: scored[0]]  # the same for every label: the rendered prompt is encoded alone
        replies.append(ids[scored[0] : scored[-1] + 1])
    return prompt, replies


def continuation_logprobs(model: Any, prompt: Sequence[int], replies: Sequence[Sequence[int]]) -> list[float]:  # fmt: skip
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
    from core.model import ContextLengthError

    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    picks, too_long = [], 0
    started = time.perf_counter()
    model = llm.model
    before = model.layout
    model.set_layout("row")  # several rows per step: row-major is the fast layout
    try:
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
    finally:
        model.set_layout(before)
    accuracy = {task: hits[task] / totals[task] for task in totals}
    return {"accuracy": accuracy, "picks": picks, "too_long": too_long,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def rank_rows(llm: Any, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rank classification: each label scored by log p(label reply | the row's prompt)."""
    return classify_rows(llm, rows, lambda row: continuation_logprobs(
        llm.model, *label_continuations(llm.tokenizer, row)))  # fmt: skip


def channel_logprobs(model: Any, tokenizer: Any, prompts_: Sequence[str], reply: str) -> list[float]:  # fmt: skip
    """Summed log p(reply | prompt) for each prompt, as fine-tuning encodes a chat whose user
    message is the prompt and whose assistant reply is `reply` (its end-of-turn token included):
    all prompts as one right-padded batch (causal, so the padding cannot change a score)."""
    import torch

    from core import data

    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": reply}]
             for p in prompts_]  # fmt: skip
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
    return classify_rows(llm, rows, lambda row: channel_logprobs(
        llm.model, llm.tokenizer, [template.format(label=label) for label in row["labels"]],
        row["passage"]))  # fmt: skip


def evaluate(source: str | Path, test_file: str | Path, max_new_tokens: int = 12,
             limit: int | None = None, label_generation: bool = True,
             channel: str | None = None) -> dict:  # fmt: skip
    """Load `source` with `core.engine.LLM.load`; score it on (up to `limit` per task) test rows:
    label tasks by rank classification (generation accuracy alongside unless `label_generation`
    is False, which saves most of the time for a large model), the others by exact match.
    With a `channel` template, rows carrying a "passage" are also classified by `channel_rows`
    (`channel_accuracy`, and each answer's `channel_pick`), beside their rank accuracy."""
    from core.engine import LLM

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
    result = {"model": str(source), "test_file": str(test_file), "n": n, "answers": answers,
              "generation_accuracy": generated["accuracy"], "rank_accuracy": ranked["accuracy"],
              "too_long": generated["too_long"], "rank_too_long": ranked["too_long"],
              "generation_seconds": generated["seconds"],
              "seconds": round(generated["seconds"] + ranked["seconds"], 1)}  # fmt: skip
    at = [i for i, row in enumerate(rows) if channel and row.get("passage") and row.get("labels")]
    if at:
        chosen = channel_rows(llm, [rows[i] for i in at], channel)
        for i, pick in zip(at, chosen["picks"], strict=True):
            gold = rows[i].get("completion", rows[i].get("output"))
            answers[i].update(channel_pick=pick, channel_ok=pick == gold)
        result.update(channel_accuracy=chosen["accuracy"], channel_too_long=chosen["too_long"],
                      seconds=round(result["seconds"] + chosen["seconds"], 1))  # fmt: skip
    return {**result, "accuracy": accuracy, "scoring": scoring}


# --------------------------------------------------------------------------- unigram baseline
def unigram_perplexity(train_ids: Sequence[int], val_ids: Sequence[int], vocab_size: int) -> float:
    """exp(mean NLL) of `val_ids` under add-one-smoothed unigram counts of `train_ids`."""
    if not val_ids:
        raise ValueError("the validation split has no tokens; nothing to score.")
    counts = Counter(train_ids)
    total = len(train_ids) + vocab_size
    nll = sum(-math.log((counts[t] + 1) / total) for t in val_ids)
    return math.exp(nll / len(val_ids))


def split_stream(stream: Sequence[int], val_fraction: float, block_size: int):
    """(train ids, val target ids) as `core.data` splits the pre-training stream: the tail is
    validation, cut into blocks of block_size + 1 whose targets are the last block_size tokens."""
    n_val = int(len(stream) * val_fraction)
    train, val = list(stream[: len(stream) - n_val]), list(stream[len(stream) - n_val :])
    n_blocks = max(0, (len(val) - 1) // block_size)
    return train, val[1 : n_blocks * block_size + 1]


def pretrain_baseline(paths: Sequence[str | Path], model_dir: str | Path, val_fraction: float,
                      block_size: int) -> dict[str, Any]:  # fmt: skip
    """Unigram and model perplexity on every target token of the validation split the trainer
    uses (its own val ppl reads only `eval_steps` batches of it)."""
    from core import data
    from core.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(model_dir)
    stream = data.token_stream(data.read_texts(paths), tokenizer).tolist()
    train, val = split_stream(stream, val_fraction, block_size)
    ppl = unigram_perplexity(train, val, tokenizer.vocab_size)
    n_val = int(len(stream) * val_fraction)
    model_ppl = model_perplexity(model_dir, stream[len(stream) - n_val :], block_size)
    return {"unigram_ppl": ppl, "model_val_ppl_full": model_ppl, "train_tokens": len(train),
            "val_tokens": len(val)}  # fmt: skip


def model_perplexity(model_dir: str | Path, val: Sequence[int], block_size: int) -> float:
    """exp(mean NLL) of the model over non-overlapping blocks of `block_size` + 1 tokens."""
    import torch

    from core.engine import LLM

    model = LLM.load(model_dir, dtype="fp32").model.set_layout("row")  # many rows per step
    n_blocks = (len(val) - 1) // block_size
    ids = torch.tensor(val[: n_blocks * block_size + 1])
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n_blocks, 32):
            rows = [
                ids[i * block_size : (i + 1) * block_size + 1]
                for i in range(start, min(start + 32, n_blocks))
            ]
            batch = torch.stack(rows)  # (B, T + 1)
            logits = model(batch[:, :-1])  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"
            )
            nll, count = nll + loss.item(), count + batch[:, 1:].numel()
    return math.exp(nll / count)


def samples(source: str | Path, prompt: str, temperatures: Sequence[float] = (0.5, 0.8, 1.1),
            max_new_tokens: int = 120, seed: int = 0) -> dict[str, str]:  # fmt: skip
    """Sampled continuations of a raw text prompt, one per temperature (seeded)."""
    from core.engine import LLM

    llm = LLM.load(source, dtype="fp32")
    knobs = {"mode": "sample", "top_k": 0, "top_p": 1.0, "max_new_tokens": max_new_tokens}
    return {
        str(t): prompt + llm.generate(prompt, temperature=t, seed=seed, **knobs)
        for t in temperatures
    }


def ngram_baseline(train_file: str | Path, test_file: str | Path) -> dict[str, Any]:
    """What classical text classifiers trained on the same rows score on the same held-out rows:
    multinomial naive Bayes over word counts and over character 2-5-grams (scikit-learn, which
    sentence-transformers installs). A reference for how much the passages give away."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    def passages(path: str | Path) -> tuple[list[str], list[str]]:
        rows = [r for r in read_rows(path) if "\n\nPassage: " in r["prompt"]]  # the question rows
        return [r["prompt"].rsplit("Passage: ", 1)[-1] for r in rows], [
            r["completion"] for r in rows
        ]

    (x_train, y_train), (x_test, y_test) = passages(train_file), passages(test_file)
    result: dict[str, Any] = {"n": len(y_test)}
    for name, vectorizer in (("words", CountVectorizer()),
                             ("char 2-5-grams", CountVectorizer(analyzer="char_wb", ngram_range=(2, 5)))):  # fmt: skip
        model = MultinomialNB().fit(vectorizer.fit_transform(x_train), y_train)
        predicted = model.predict(vectorizer.transform(x_test))
        result[name] = sum(p == y for p, y in zip(predicted, y_test, strict=True)) / len(y_test)
    return result
