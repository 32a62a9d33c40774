"""Forward-pass throughput: our decoder vs `transformers` on the same dense SmolLM2 weights.

Both models hold the packaged GGUF dequantized to float tensors (transformers turns this
architecture's GGUF into plain `nn.Linear` layers; the script checks that before timing).
Runs interleaved, in one process, and prints tokens/s and the ratio ours / transformers.

    .venv/bin/python bench/forward.py [--tokens 512] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.generate.engine import LLM
from core.load import smollm2_gguf_path

TEXT = (
    "ScratchGPT is a browser chat and retrieval app whose language model is a transformer written "
    "from first principles. It loads open weights, answers questions about uploaded documents with "
    "citations, and can be pre-trained and fine-tuned on the user's own text. "
)


def load_reference(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    path = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype
    ).eval()
    q = model.model.layers[0].self_attn.q_proj
    assert type(q) is torch.nn.Linear and q.weight.dtype == dtype, (
        f"not dense {dtype}: {type(q)} {q.weight.dtype}"
    )
    return model


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(label: str, dtype: torch.dtype, tokens: int, repeats: int) -> list[tuple]:
    ours = LLM.load("default", device="cpu", dtype=dtype)
    theirs = load_reference(dtype)
    ids = ours.tokenizer.encode(TEXT * 40)[:tokens]
    batch = torch.tensor([ids])
    runs = {
        "ours": lambda: ours.model(batch),
        "transformers": lambda: theirs(batch, use_cache=False).logits,
        "ours (last logits only)": lambda: ours.model(batch, last_only=True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(repeats):  # interleaved, so load on the machine hits every contestant alike
            for name, fn in runs.items():
                times[name] += timed(fn, 1)
        diff = (ours.model(batch) - theirs(batch).logits).abs().max().item()
    tps = {name: len(ids) / statistics.median(t) for name, t in times.items()}
    rows = [(label, name, value, value / tps["transformers"]) for name, value in tps.items()]
    return [*rows, (label, "max |logit diff|", diff, float("nan"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for label, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        rows += measure(label, dtype, args.tokens, args.repeats)
    print(
        f"\nforward pass, prompt {args.tokens} tokens, batch 1, {args.threads} threads, "
        f"median of {args.repeats}, torch {torch.__version__}"
    )
    print(f"{'dtype':<6} {'model':<26} {'tokens/s':>10} {'ratio':>7}")
    for dtype, name, value, ratio in rows:
        print(f"{dtype:<6} {name:<26} {value:>10.4g} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
