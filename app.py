"""ScratchGPT entry point, locally (`make run`) and as a Hugging Face Space. Wiring only."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from webapp.chat import ChatService, Limits
from webapp.ui import build_demo


def main() -> None:
    service = ChatService(
        os.environ.get("SCRATCHGPT_MODEL", "default"),
        limits=Limits(max_new_tokens=int(os.environ.get("SCRATCHGPT_MAX_NEW_TOKENS", "512"))),
    )
    demo = build_demo(service)
    demo.queue(
        default_concurrency_limit=1, max_size=int(os.environ.get("SCRATCHGPT_QUEUE_SIZE", "32"))
    )
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        share=False,
    )


if __name__ == "__main__":
    main()
