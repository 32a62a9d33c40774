"""The Gradio interface: a streaming chat over `webapp.chat.ChatService`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from webapp.chat import DEFAULT_SYSTEM_PROMPT, ChatInputError, ChatService


def build_demo(service: ChatService) -> gr.Blocks:
    """A chat page with a system prompt, temperature and reply-length controls."""

    def respond(message: str, history: list[dict[str, Any]], system_prompt: str,
                temperature: float, max_new_tokens: float) -> Iterator[str]:  # fmt: skip
        try:
            yield from service.reply(message, history, system_prompt=system_prompt,
                                     temperature=float(temperature), max_new_tokens=int(max_new_tokens))  # fmt: skip
        except ChatInputError as err:
            raise gr.Error(str(err)) from err

    with gr.Blocks(title="ScratchGPT") as demo:
        gr.Markdown(
            "# ScratchGPT\nA chat with a transformer written from first principles, running "
            f"**{service.source if service.source != 'default' else 'SmolLM2-135M-Instruct'}** on this machine."
        )
        gr.ChatInterface(
            respond,
            additional_inputs=[
                gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt"),
                gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)"),
                gr.Slider(
                    1, service.limits.max_new_tokens, value=256, step=1, label="Max new tokens"
                ),
            ],
            api_name="chat",
        )
    return demo
