"""What an encoder is for, on text: fill in [MASK]ed words, and contextual vectors of one word in
different sentences (the same spelling, a different vector per meaning)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from core.encoder import Encoder
from core.mlm import MaskingError, special_id
from core.tokenizer import Tokenizer

MASK = "[MASK]"


def _encode(tokenizer: Tokenizer, model: Encoder, text: str):
    if not text.strip():
        raise MaskingError("the text is empty; write a sentence.")
    encoding = tokenizer.backend.encode(text, add_special_tokens=True)
    if len(encoding.ids) > model.config.block_size:
        raise MaskingError(
            f"the text is {len(encoding.ids)} tokens; this encoder reads at most "
            f"{model.config.block_size}. Shorten it."
        )
    return encoding


@torch.inference_mode()
def fill_mask(
    model: Encoder, tokenizer: Tokenizer, text: str, k: int = 5
) -> list[list[tuple[str, float]]]:
    """For each [MASK] in `text`, the `k` likeliest tokens and their probabilities."""
    if not 1 <= k <= 100:
        raise MaskingError(f"top-k must be between 1 and 100, got {k}.")
    if model.head is None:
        raise MaskingError("this encoder has no MLM head (a BertModel checkpoint); use one with.")
    if MASK not in text:
        raise MaskingError(
            f"write {MASK} where the missing word goes, e.g. 'To be or not to {MASK}'."
        )
    ids = torch.tensor([_encode(tokenizer, model, text).ids])  # (1, T)
    where = ids == special_id(tokenizer, MASK)
    logits = model(ids.to(model.wte.weight.device), select=where.to(model.wte.weight.device))
    specials = [t.content for t in tokenizer.backend.get_added_tokens_decoder().values()]
    logits[:, [tokenizer.token_to_id(t) for t in specials]] = float("-inf")  # never a control token
    probs, top = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)  # (M, k)
    return [
        [
            (tokenizer.backend.id_to_token(int(i)), float(p))
            for p, i in zip(row_p, row_i, strict=True)
        ]
        for row_p, row_i in zip(probs, top, strict=True)
    ]


@torch.inference_mode()
def word_vectors(
    model: Encoder, tokenizer: Tokenizer, word: str, sentences: Sequence[str]
) -> torch.Tensor:
    """The hidden state of `word` (mean over its pieces) in each sentence: (N, C)."""
    if not word.strip() or len(word.split()) != 1:
        raise MaskingError(f"give one word to compare, got {word!r}.")
    pattern = re.compile(rf"\b{re.escape(word.strip())}\b", re.IGNORECASE)
    vectors = []
    for n, sentence in enumerate(sentences, start=1):
        found = pattern.search(sentence)
        if found is None:
            raise MaskingError(f"sentence {n} does not contain the word {word!r}: {sentence!r}.")
        encoding = _encode(tokenizer, model, sentence)
        spans = enumerate(encoding.offsets)  # the word's pieces: tokens overlapping its characters
        pieces = [i for i, (s, e) in spans if e > s and s < found.end() and e > found.start()]
        ids = torch.tensor([encoding.ids], device=model.wte.weight.device)
        vectors.append(model.hidden(ids)[0, pieces].float().mean(0))
    return torch.stack(vectors)


def similarity_table(vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows: (N, C) -> (N, N)."""
    unit = F.normalize(vectors.float(), dim=-1)
    return unit @ unit.T
