"""Training throughput: our accelerate loop (`core.train`) vs a plain nanoGPT-style loop.

Same `Decoder` config, same token blocks, same batch; the plain loop is what nanoGPT's
train.py does per step (random blocks, autocast, backward, clip, AdamW step), with no
accelerate, no logging and no checkpoints. Both run in this process, alternating, and report
tokens/s over their timed steps (the first step of each run warms up and is not timed). On CUDA
it also prints model FLOPs utilisation against `--peak-tflops` (H100/H200 bf16 dense: 989).

    .venv/bin/python bench/train.py [--steps 30] [--repeats 3] [--threads 1] [--peak-tflops X]
    .venv/bin/python bench/train.py --n-layer 12 --n-embd 768 --block-size 1024 --batch-size 16 \
        --peak-tflops 989   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from core.model import Decoder
from core.tokenizer import Tokenizer
from core.train import data
from core.train.config import TrainConfig
from core.train.loop import train
from core.train.setup import model_config

WORDS = [
    "the",
    "king",
    "queen",
    "castle",
    "horse",
    "rides",
    "night",
    "day",
    "love",
    "war",
    "sword",
    "crown",
    "sings",
    "speaks",
    "of",
    "to",
    "and",
    "my",
    "thy",
    "lord",
    "lady",
    "hath",
    "doth",
    "fair",
    "foul",
    "sweet",
    "good",
    "noble",
    "gentle",
    "heaven",
    "earth",
]


def make_corpus(directory: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(14)) for _ in range(6000)]
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    data.train_tokenizer([corpus.read_text()], vocab_size=1024).save(directory / "tok")
    return corpus, directory / "tok"


def settings(corpus: Path, tok: Path, out: Path, args, precision: str) -> TrainConfig:
    return TrainConfig(
        data=[str(corpus)],
        out=str(out),
        tokenizer=str(tok),
        n_layer=args.n_layer,
        n_head=4,
        n_embd=args.n_embd,
        block_size=args.block_size,
        batch_size=args.batch_size,
        max_steps=args.steps,
        warmup_steps=2,
        lr=1e-3,
        eval_every=10**6,
        save_every=10**6,
        val_fraction=0.0,
        precision=precision,
        seed=1,
    )


def plain_loop(cfg: TrainConfig, device: torch.device) -> float:
    """nanoGPT's loop on the same model and blocks; tokens/s over steps 2..N."""
    tok = Tokenizer.from_dir(cfg.tokenizer)
    blocks, _ = data.pretrain_datasets(data.read_texts(cfg.data), tok, cfg.block_size, 0.0)
    torch.manual_seed(cfg.seed)
    model = Decoder(model_config(cfg, tok)).to(device).train()
    fused = device.type == "cuda"  # nanoGPT's configure_optimizers
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), fused=fused)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else None
    timed, start = 0, 0.0
    for step in range(cfg.max_steps):
        if step == 1:
            start = time.perf_counter()
        ix = torch.randint(len(blocks), (cfg.batch_size,))
        x = torch.stack([blocks[i][0] for i in ix.tolist()]).to(device)  # (B, T)
        y = torch.stack([blocks[i][1] for i in ix.tolist()]).to(device)
        with amp or nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss to log it; this also waits for the GPU
        timed += x.numel() if step else 0
    return timed / (time.perf_counter() - start)


def flops_per_token(cfg: TrainConfig, tok: Path) -> float:
    """6N + 12 L T C (PaLM appendix B): forward + backward, attention included."""
    config = model_config(cfg, Tokenizer.from_dir(tok))
    with torch.device("meta"):
        n = sum(p.numel() for p in Decoder(config).parameters())
    return 6 * n + 12 * config.n_layer * config.block_size * config.n_embd


def measure(label: str, precision: str, args, workdir: Path) -> list[tuple]:
    corpus, tok = workdir / "corpus.txt", workdir / "tok"
    cfg = settings(corpus, tok, workdir / f"out-{precision}", args, precision)
    if precision == "bf16" and not torch.cuda.is_available():
        cfg = dataclasses.replace(cfg, max_steps=args.bf16_steps)  # CPU bf16 is emulated: slow
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = {
        "ours (core.train)": lambda: train(cfg, progress_bar=False).tokens_per_s,
        "plain nanoGPT loop": lambda: plain_loop(cfg, device),
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate, so load on the machine hits both alike
        for name, run in runs.items():
            rates[name].append(run())
    plain = statistics.median(rates["plain nanoGPT loop"])
    flops = flops_per_token(cfg, tok)
    rows = []
    for name, values in rates.items():
        tps = statistics.median(values)
        mfu = tps * flops / (args.peak_tflops * 1e12) if args.peak_tflops else float("nan")
        rows.append((label, name, tps, tps / plain, mfu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--bf16-steps", type=int, default=8, help="bf16 steps on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="1: stable on a shared box")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU; 0: not shown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_corpus(Path(tmp))
        for label, precision in (("fp32", "fp32"), ("bf16", "bf16")):
            rows += measure(label, precision, args, Path(tmp))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"\ntraining, classic {args.n_layer}x{args.n_embd}, block {args.block_size}, batch "
        f"{args.batch_size}, {args.steps} steps ({args.bf16_steps} bf16 on CPU), {device}, "
        f"{args.threads} threads, median of {args.repeats}, torch {torch.__version__}"
    )
    print(f"{'prec':<5} {'loop':<20} {'tokens/s':>10} {'ratio':>7} {'MFU':>6}")
    for prec, name, tps, ratio, mfu in rows:
        shown = "-" if mfu != mfu else f"{mfu:.1%}"  # NaN: no --peak-tflops given
        print(f"{prec:<5} {name:<20} {tps:>10.4g} {ratio:>7.2f} {shown:>6}")


if __name__ == "__main__":
    main()
