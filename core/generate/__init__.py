"""Generation: logits processors (`logits`), decoding settings (`settings`), greedy / sampling /
beam search (`decode`), prompt templates (`prompts`), the `LLM` / `Generation` engine (`engine`)."""
