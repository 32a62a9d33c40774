"""Generation speed: our decoder vs `transformers.generate` on the same SmolLM2 GGUF.

Greedy, sampling (top-k 50, top-p 0.9, T 0.7) and beam search (4 beams); a ~100-token prompt and
exactly N new tokens (EOS ignored by both, so both do the same work); one process. Paths: "fp32"
and "bf16" (both dense, against transformers in the same dtype), "auto" (what the app loads:
`LLM.load("default")`, the GGUF's Q4_1/Q8_0 blocks on our kernels where they run, against
transformers fp32 and bf16). Prints tokens/s, time to first token and peak extra memory, with
the ratio ours / transformers; with --llama-cpp, llama.cpp (llama-cpp-python, built by
`sh bench/setup_llama_cpp.sh`) greedy on the same file against ours, interleaved, or the reason it
cannot run.

    .venv/bin/python bench/decode.py [--new-tokens 128] [--threads 2] [--dtypes fp32,bf16,auto]

`--profile` adds, per dtype, where one greedy step's time goes (the weight matmuls through
`core.kernels.linear`, against everything else, with the top torch ops of the rest) and how far
the step is from the memory-bandwidth limit: weight bytes / (bytes per second a sum over 1 GiB
reads).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import torch

from bench.forward import load_reference
from bench.quantized import decode_rate
from core import kernels
from core.generate.decode import beam_search, stream_tokens
from core.generate.engine import LLM

PROMPT = (
    "Summarise the following notes for a colleague. ScratchGPT is a chat and retrieval app whose "
    "language model is written from first principles in PyTorch. It loads open weights from GGUF "
    "files and Hugging Face checkpoints, decodes greedily, by sampling and by beam search, and "
    "answers questions about uploaded PDFs with citations to the page. It can also pre-train a "
    "small model from scratch and fine-tune it on instructions."
)
SAMPLING = dict(temperature=0.7, top_k=50, top_p=0.9)


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.proc, self.base, self.peak, self.stop = psutil.Process(), 0, 0, threading.Event()
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.extra_mb = (self.peak - self.base) / 2**20


class FirstToken:
    """A transformers streamer that notes when the first new token arrives."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self):
        pass


def run_ours(llm: LLM, ids: list[int], mode: str, n: int, seed: int = 0):
    torch.manual_seed(seed)
    start, first = time.perf_counter(), None
    if mode == "beam":
        stream = beam_search(llm.model, ids, num_beams=4, max_new_tokens=n)
    else:
        kwargs = SAMPLING if mode == "sample" else {}
        stream = stream_tokens(llm.model, ids, max_new_tokens=n, **kwargs)
    with kernels.batched(llm.model) if mode == "beam" else nullcontext():  # timed too
        for _ in stream:
            first = first or time.perf_counter()
    return time.perf_counter() - start, first - start


def run_theirs(model, ids: list[int], mode: str, n: int, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = dict(max_new_tokens=n, min_new_tokens=0, eos_token_id=None, pad_token_id=0)
    if mode == "sample":
        kwargs |= dict(do_sample=True, **SAMPLING)
    elif mode == "beam":
        kwargs |= dict(do_sample=False, num_beams=4, early_stopping=False)
    else:
        kwargs |= dict(do_sample=False)
    streamer = None if mode == "beam" else FirstToken()  # transformers cannot stream beams
    start = time.perf_counter()
    out = model.generate(torch.tensor([ids]), streamer=streamer, **kwargs)
    total = time.perf_counter() - start
    assert out.shape[1] == len(ids) + n, "transformers stopped early: not the same work"
    return total, (streamer.first - start) if streamer else float("nan")


def read_bandwidth(gib: float = 1.0) -> float:
    """Bytes per second a sum over a `gib` GiB fp32 tensor reads (best of 5)."""
    big = torch.ones(int(gib * 2**30) // 4)
    best = 1e9
    for _ in range(5):
        start = time.perf_counter()
        big.sum()
        best = min(best, time.perf_counter() - start)
    return big.numel() * 4 / best


def profile(llm: LLM, ids: list[int], label: str, steps: int = 24) -> None:
    """Where a greedy step's time goes, and how far it is from the bandwidth limit."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = llm.model
    mats = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.wte.weight if model.lm_head is None else model.lm_head.weight
    mats.append(head)
    weight_bytes = sum(w.numel() * w.element_size() for w in mats)
    xs = [torch.randn(1, 1, w.shape[1], dtype=model.activation_dtype()) for w in mats]
    with torch.inference_mode():
        stream = stream_tokens(model, ids, max_new_tokens=2 * steps + 1)
        next(stream)  # prefill
        start = time.perf_counter()
        for _ in range(steps):
            next(stream)
        step = (time.perf_counter() - start) / steps
        best = 1e9
        for _ in range(5):
            start = time.perf_counter()
            for w, x in zip(mats, xs, strict=True):
                kernels.linear(x, w)
            best = min(best, time.perf_counter() - start)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                next(stream)
    bandwidth = read_bandwidth()
    limit = bandwidth / weight_bytes
    print(
        f"\n{label}: one greedy step {step * 1e3:.1f} ms = {1 / step:.1f} tok/s; weights "
        f"{weight_bytes / 2**20:.0f} MiB; kernel {kernels.status()}"
    )
    print(
        f"  weight matmuls alone {best * 1e3:.1f} ms ({best / step:.0%} of the step), "
        f"{weight_bytes / best / 1e9:.1f} GB/s; everything else {(step - best) * 1e3:.1f} ms"
    )
    print(
        f"  read bandwidth {bandwidth / 1e9:.1f} GB/s -> limit {limit:.1f} tok/s; this step is "
        f"{(1 / step) / limit:.0%} of it"
    )
    print("  top torch ops (self CPU, per step):")
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
        print(
            f"    {event.key:<28} {event.self_cpu_time_total / steps / 1e3:6.2f} ms"
            f"  {event.count / steps:5.0f} calls"
        )


def against_llama_cpp(ids: list[int], n: int, threads: int, repeats: int):
    """[(name, tok/s, TTFT)] of llama.cpp and of ours ("auto") greedy on the same GGUF and ids,
    interleaved, best of `repeats`; or why llama.cpp cannot run here."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return "llama-cpp-python is not installed; build it first: sh bench/setup_llama_cpp.sh"
    from core.load import smollm2_gguf_path

    theirs = Llama(
        str(smollm2_gguf_path()), n_ctx=len(ids) + n + 8, n_threads=threads, verbose=False
    )
    ours = LLM.load("default", device="cpu")

    def llama_cpp_stream():
        theirs.reset()  # else generate() reuses the cached prompt: no prefill, no TTFT
        return theirs.generate(ids, top_k=1, temp=0.0, reset=True)

    runs = {
        "llama.cpp": llama_cpp_stream,
        f"ours ({ours.description})": lambda: stream_tokens(ours.model, ids, max_new_tokens=n),
    }
    best = {name: (0.0, 1e9) for name in runs}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, start in runs.items():
                rate, ttft = decode_rate(start(), n)
                best[name] = (max(best[name][0], rate), min(best[name][1], ttft))
    return [(name, *best[name]) for name in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="fp32,bf16,auto")
    parser.add_argument("--modes", default="greedy,sample,beam")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="add the per-step profile")
    parser.add_argument("--llama-cpp", action="store_true", help="add llama.cpp, greedy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, rows = args.new_tokens, []
    pairs = []  # (label, our load arguments, transformers dtype)
    for label in args.dtypes.split(","):
        if label == "auto":
            pairs += [("auto/fp32", {}, torch.float32), ("auto/bf16", {}, torch.bfloat16)]
        else:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[label]
            pairs.append((label, dict(dtype=dtype, quantize="none"), dtype))
    for label, load_args, dtype in pairs:
        ours = LLM.load("default", device="cpu", **load_args)
        print(f"{label}: {ours.description}", flush=True)
        theirs = load_reference(dtype)
        theirs.generation_config.eos_token_id = None
        ids = ours.tokenizer.encode(ours.render([{"role": "user", "content": PROMPT}]))
        with torch.inference_mode():
            run_ours(ours, ids, "greedy", 4)  # warm-up both
            run_theirs(theirs, ids, "greedy", 4)
            for mode in args.modes.split(","):
                best = {"ours": (1e9, 1e9), "theirs": (1e9, 1e9)}
                for _ in range(args.repeats):  # interleaved; the best run of each counts
                    with PeakRSS() as mem_theirs:
                        best["theirs"] = min(best["theirs"], run_theirs(theirs, ids, mode, n))
                    with PeakRSS() as mem_ours:
                        best["ours"] = min(best["ours"], run_ours(ours, ids, mode, n))
                (t_ours, ttft_ours), (t_theirs, ttft_theirs) = best["ours"], best["theirs"]
                rows.append(
                    (
                        label,
                        mode,
                        n / t_ours,
                        n / t_theirs,
                        ttft_ours,
                        ttft_theirs,
                        mem_ours.extra_mb,
                        mem_theirs.extra_mb,
                    )
                )
        if args.profile and ours.model.wte.weight.is_floating_point():  # dense matrices only
            profile(ours, ids, label)
        del ours, theirs
    llama = against_llama_cpp(ids, n, args.threads, args.repeats) if args.llama_cpp else None
    print(
        f"\ngeneration, prompt {len(ids)} tokens, {n} new tokens, {args.threads} threads, "
        f"best of {args.repeats}, torch {torch.__version__}, kernels {kernels.status()}"
    )
    print(
        f"{'ours/hf':<9} {'mode':<7} {'ours tok/s':>10} {'hf tok/s':>9} {'ratio':>6} "
        f"{'ours TTFT':>9} {'hf TTFT':>8} {'ours +MB':>8} {'hf +MB':>7}"
    )
    for label, mode, ours_tps, hf_tps, ttft_o, ttft_h, mem_o, mem_h in rows:
        print(
            f"{label:<9} {mode:<7} {ours_tps:>10.1f} {hf_tps:>9.1f} {ours_tps / hf_tps:>6.2f} "
            f"{ttft_o:>8.3f}s {ttft_h:>7.3f}s {mem_o:>8.0f} {mem_h:>7.0f}"
        )
    if isinstance(llama, str):
        print(f"llama.cpp: skipped: {llama}")
    elif llama is not None:
        print("\ngreedy on the same GGUF and prompt ids, tok/s after the first token:")
        for name, rate, ttft in llama:
            ratio = rate / llama[0][1]
            print(f"  {rate:6.1f} tok/s  TTFT {ttft:.3f}s  {ratio:.2f}x llama.cpp  {name}")


if __name__ == "__main__":
    main()
