"""What a run trains on: the model, tokenizer and datasets for pre-training or fine-tuning.

Pre-training builds a fresh `Decoder` from an architecture preset (shape flags override it) and a
tokenizer trained on the corpus unless one is given. Fine-tuning starts from anything
`core.load.read_source` accepts. On `--resume` the weights and tokenizer come from the
checkpoint, after checking it describes the same architecture as the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core import checkpoint
from core.config import ModelConfig
from core.model import Decoder
from core.tokenizer import Tokenizer
from core.train import data
from core.train.config import TrainConfig, TrainError
from core.train.state import Resumed, check_same_architecture


@dataclass
class Setup:
    """A model ready to train, its tokenizer, and train/validation datasets."""

    model: Decoder
    tokenizer: Tokenizer
    train_set: Any  # BlockDataset or list[Example]
    val_set: Any  # same, or None
    pad_id: int


def build(cfg: TrainConfig, resumed: Resumed | None) -> Setup:
    if cfg.mode == "mlm":
        from core.mlm import build_setup  # the encoder's side stays out of decoder runs

        setup = build_setup(cfg, resumed)
    elif cfg.mode == "finetune":
        setup = build_finetune(cfg, resumed)
    else:
        setup = build_pretrain(cfg, resumed)
    setup.model.dropout = cfg.dropout
    return setup


def model_config(cfg: TrainConfig, tokenizer: Tokenizer) -> ModelConfig:
    """The preset with the run's shape; grouped-query heads follow a changed head count."""
    preset = ModelConfig.preset(cfg.arch)
    shape = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size")}
    shape = {k: v for k, v in shape.items() if v is not None}
    if "n_head" in shape and shape["n_head"] % preset.n_kv_head:
        shape["n_kv_head"] = shape["n_head"]
    if "n_embd" in shape and preset.ffn_hidden != 4 * preset.n_embd:  # keep the preset's ratio
        shape["ffn_hidden"] = round(preset.ffn_hidden * shape["n_embd"] / preset.n_embd)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return ModelConfig.preset(cfg.arch, vocab_size=tokenizer.vocab_size, **ids, **shape)


def build_pretrain(cfg: TrainConfig, resumed: Resumed | None) -> Setup:
    if not cfg.data:
        raise TrainError("pretrain needs --data: text files, folders or globs.")
    texts = data.read_texts(cfg.data)
    if resumed is not None:
        tokenizer = _tokenizer_of(resumed)
    elif cfg.tokenizer:
        tokenizer = Tokenizer.from_dir(cfg.tokenizer)
    else:
        vocab = cfg.vocab_size or ModelConfig.preset(cfg.arch).vocab_size
        tokenizer = data.train_tokenizer([t for _, t in texts], vocab)
    config = model_config(cfg, tokenizer)
    if resumed is not None:
        check_same_architecture(config, resumed)
        model = checkpoint.build_model(config, resumed.state, source=str(resumed.path))
    else:
        model = Decoder(config)
    train_set, val_set = data.pretrain_datasets(
        texts, tokenizer, config.block_size, cfg.val_fraction
    )
    return Setup(model.train(), tokenizer, train_set, val_set, tokenizer.eos_token_id or 0)


def build_finetune(cfg: TrainConfig, resumed: Resumed | None) -> Setup:
    from core.load import read_source

    if not cfg.data:
        raise TrainError("finetune needs --data: one or more JSONL files.")
    config, state, tokenizer, _ = read_source(cfg.init)
    if resumed is not None:
        check_same_architecture(config, resumed)
        state, tokenizer = resumed.state, _tokenizer_of(resumed)
    if tokenizer is None:
        raise TrainError(f"{cfg.init}: no tokenizer beside the weights; fine-tuning needs one.")
    model = checkpoint.build_model(config, state, source=str(cfg.init))
    block = cfg.block_size or config.block_size
    if block > config.block_size:
        raise TrainError(
            f"--block-size {block} exceeds the model's context of {config.block_size} tokens."
        )
    examples = [ex for path in cfg.data for ex in data.finetune_examples(path, tokenizer, block)]
    if cfg.val:
        val_set = data.finetune_examples(cfg.val, tokenizer, block)
    elif cfg.val_fraction and len(examples) > 1:
        n_val = max(1, int(len(examples) * cfg.val_fraction))
        examples, val_set = examples[:-n_val], examples[-n_val:]
    else:
        val_set = None
    pad = tokenizer.eos_token_id or 0
    return Setup(model.train(), tokenizer, examples, val_set, pad)


def _tokenizer_of(resumed: Resumed) -> Tokenizer:
    if resumed.tokenizer is None:
        raise TrainError(f"{resumed.path}: no tokenizer.json; cannot resume without it.")
    return resumed.tokenizer


def freeze_all_but(model: Decoder, n: int | None) -> list[str]:
    """Train only the last `n` blocks, the final norm and the LM head; return trainable names.

    With tied embeddings the LM head *is* the token embedding matrix, so it trains too (and with
    it the input embeddings); an untied model trains its separate `lm_head` only. The frozen
    blocks are a fixed feature extractor: the input lookup passes no gradient back through them
    (`Decoder.embed_grad`), so backward runs through the last `n` blocks only, not all of them.
    """
    if n is None:
        return [name for name, _ in model.named_parameters()]
    n_layer = model.config.n_layer
    if not 0 <= n <= n_layer:
        raise TrainError(f"--freeze-all-but must be between 0 and n_layer ({n_layer}), got {n}.")
    model.requires_grad_(False)
    model.embed_grad = n == n_layer
    keep = [*model.blocks[n_layer - n :], model.ln_f]
    keep.append(model.wte if model.lm_head is None else model.lm_head)
    for module in keep:
        module.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def make_optimizer(model: Decoder, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = torch.cuda.is_available()  # one kernel per step on GPU, as nanoGPT does
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)
