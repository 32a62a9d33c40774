"""Masked language modelling: BERT's masking scheme, MLM datasets for `core.train`, and the
encoder's uses (masked-token accuracy, fill-mask, contextual word vectors).

Masking: 15% of the non-special tokens are chosen (with `whole_word`, every piece of a chosen
word); of those 80% become [MASK], 10% a random non-special token, 10% stay; the labels hold the
originals at chosen positions and -100 elsewhere. Training batches draw their masks from torch's
global RNG, which training checkpoints save, so a resumed run masks exactly as an unbroken one;
validation blocks are masked the same way at every evaluation (a generator seeded per block).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from core.encoder import SPECIAL_TOKENS, Encoder
from core.tokenizer import Tokenizer
from core.train.data import IGNORE, DataError

MASK_RATE, REPLACE_WITH_MASK, REPLACE_WITH_RANDOM = 0.15, 0.8, 0.1


class MaskingError(DataError):
    """Text or a tokenizer that cannot be used for masked-LM; the message says what to change."""


@dataclass
class Masking:
    """What BERT's scheme needs to know about a vocabulary."""

    mask_id: int
    special_ids: torch.Tensor  # (S,) ids never chosen: [CLS], [SEP], [PAD], ...
    random_ids: torch.Tensor  # (R,) ids a chosen token may be replaced with
    continuation: torch.Tensor  # (vocab,) bool: a WordPiece "##" piece that continues a word
    rate: float = MASK_RATE
    whole_word: bool = False

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, rate: float = MASK_RATE, whole_word=False):
        vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
        if "[MASK]" not in vocab:
            raise MaskingError("the tokenizer has no [MASK] token; use a BERT (WordPiece) one.")
        if not 0.0 < rate < 1.0:
            raise MaskingError(f"the masking rate must be in (0, 1), got {rate}.")
        special = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
        special |= set(SPECIAL_TOKENS) & vocab.keys()
        continuation = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        continuation[[i for t, i in vocab.items() if t.startswith("##")]] = True
        return cls(
            mask_id=vocab["[MASK]"],
            special_ids=torch.tensor(sorted(vocab[t] for t in special)),
            random_ids=torch.tensor(sorted(i for t, i in vocab.items() if t not in special)),
            continuation=continuation,
            rate=rate,
            whole_word=whole_word,
        )

    def chosen(self, ids: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """(..., T) ids -> bool (..., T): the tokens to predict (never a special token)."""
        normal = ~torch.isin(ids, self.special_ids)
        if not self.whole_word:
            return normal & (torch.rand(ids.shape, generator=gen) < self.rate)
        starts = ~self.continuation[ids] | ~normal  # a special token also ends the word before it
        positions = torch.arange(ids.shape[-1]).expand_as(ids)
        first = torch.cummax(torch.where(starts, positions, 0), dim=-1).values  # word's 1st piece
        pick = torch.rand(ids.shape, generator=gen) < self.rate  # the draw at a word's first piece
        return normal & pick.gather(-1, first)  # decides for all its pieces

    def apply(
        self, ids: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., T) ids -> (inputs, labels) under the 80/10/10 scheme."""
        chosen = self.chosen(ids, gen)
        roll = torch.rand(ids.shape, generator=gen)
        to_mask = chosen & (roll < REPLACE_WITH_MASK)
        to_random = (
            chosen & (roll >= REPLACE_WITH_MASK) & (roll < REPLACE_WITH_MASK + REPLACE_WITH_RANDOM)
        )
        pick = torch.randint(len(self.random_ids), ids.shape, generator=gen)
        inputs = torch.where(to_mask, self.mask_id, ids)
        inputs = torch.where(to_random, self.random_ids[pick], inputs)
        return inputs, torch.where(chosen, ids, IGNORE)


class MaskedBlocks(torch.utils.data.Dataset):
    """Blocks of `[CLS] + block_size - 2 tokens + [SEP]` -> (masked inputs, labels)."""

    def __init__(
        self,
        stream: torch.Tensor,
        block_size: int,
        masking: Masking,
        cls_sep: tuple[int, int],
        fixed_seed: int | None = None,
    ) -> None:
        self.stream, self.span, self.masking = stream, block_size - 2, masking
        self.cls, self.sep = cls_sep
        self.fixed_seed = fixed_seed  # None: fresh masks each time (training)

    def __len__(self) -> int:
        return len(self.stream) // self.span

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        body = self.stream[i * self.span : (i + 1) * self.span]
        ids = torch.cat([torch.tensor([self.cls]), body, torch.tensor([self.sep])])
        gen = (
            None if self.fixed_seed is None else torch.Generator().manual_seed(self.fixed_seed + i)
        )
        return self.masking.apply(ids, gen)


def train_wordpiece(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """An uncased WordPiece tokenizer (BERT's pipeline) learned on `texts`."""
    backend = Backend(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return Tokenizer(backend)


def special_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise MaskingError(f"the tokenizer has no {token} token; use a BERT (WordPiece) one.")
    return found


def token_stream(texts: Sequence[str], tokenizer: Tokenizer) -> torch.Tensor:
    """Every document's ids without [CLS]/[SEP], documents separated by [SEP]; 1-D."""
    sep = special_id(tokenizer, "[SEP]")
    ids: list[int] = []
    for text in texts:
        if text.strip():
            ids += [*tokenizer.backend.encode(text, add_special_tokens=False).ids, sep]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def masked_accuracy(model: Encoder, dataset: MaskedBlocks, batch_size: int = 16) -> float:
    """Fraction of the chosen (labelled) tokens whose original the model ranks first."""
    model.eval()
    right = total = 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x, y = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
        scored = y != IGNORE
        predicted = model(x, select=scored).argmax(-1)
        right += int((predicted == y[scored]).sum())
        total += int(scored.sum())
    return right / max(total, 1)


def unigram_accuracy(train_stream: torch.Tensor, dataset: MaskedBlocks) -> float:
    """The baseline: always predict the training text's most frequent non-special token."""
    counts = torch.bincount(train_stream, minlength=int(train_stream.max()) + 1)
    counts[dataset.masking.special_ids[dataset.masking.special_ids < len(counts)]] = 0
    top = int(counts.argmax())
    labels = torch.cat([dataset[i][1] for i in range(len(dataset))])
    labels = labels[labels != IGNORE]
    return float((labels == top).float().mean())


# --------------------------------------------------------------------------- training (core.train)
def build_setup(cfg, resumed):
    """`core.train.setup.Setup` for `mode="mlm"`: a fresh (or resumed) encoder, a WordPiece
    tokenizer (given, resumed, or trained on the corpus) and masked train/validation blocks."""
    from core.bert_weights import bert_tokenizer, build_encoder
    from core.encoder import EncoderConfig
    from core.train import data
    from core.train.setup import Setup
    from core.train.state import check_same_architecture

    if not cfg.data:
        raise data.DataError("mlm needs --data: text files, folders or globs.")
    texts = [t for _, t in data.read_texts(cfg.data)]
    if resumed is not None:
        tokenizer = resumed.tokenizer
    elif cfg.tokenizer:
        tokenizer = bert_tokenizer(Path(cfg.tokenizer))
    else:
        tokenizer = train_wordpiece(texts, cfg.vocab_size or 8192)
    shape = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size")}
    shape = {k: v for k, v in shape.items() if v is not None}
    if "n_embd" in shape:
        shape["ffn_hidden"] = 4 * shape["n_embd"]
    pad = special_id(tokenizer, "[PAD]")
    config = EncoderConfig.preset(
        cfg.arch, vocab_size=tokenizer.vocab_size, pad_token_id=pad, **shape
    )
    if resumed is not None:
        check_same_architecture(config, resumed)
        model = build_encoder(config, resumed.state, source=str(resumed.path))
    else:
        model = Encoder(config)
    masking = Masking.for_tokenizer(tokenizer, cfg.mlm_probability, cfg.whole_word)
    train_set, val_set = masked_datasets(texts, tokenizer, config.block_size, masking, cfg)
    return Setup(model.train(), tokenizer, train_set, val_set, pad)


def masked_datasets(texts, tokenizer, block_size, masking, cfg):
    """Train blocks (fresh masks) and validation blocks (the stream's tail, fixed masks)."""
    from core.train.data import DataError

    stream = token_stream(texts, tokenizer)
    n_val = int(len(stream) * cfg.val_fraction)
    cls_sep = (special_id(tokenizer, "[CLS]"), special_id(tokenizer, "[SEP]"))
    train = MaskedBlocks(stream[: len(stream) - n_val], block_size, masking, cls_sep)
    val = MaskedBlocks(stream[len(stream) - n_val :], block_size, masking, cls_sep, cfg.seed)
    if len(train) == 0 or (n_val and len(val) == 0):
        raise DataError(
            f"the corpus gives {len(stream)} tokens: too few for a training and a validation "
            f"block of {block_size}; add text or lower --block-size."
        )
    return train, val if n_val else None


def load_state(path: Path):
    """(config, state, tokenizer) of an MLM training checkpoint, for `core.train.state.load`."""
    from core.bert_weights import load_encoder

    model, tokenizer = load_encoder(path)
    return model.config, model.state_dict(), tokenizer
