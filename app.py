"""ScratchGPT entry point, locally (`make run`) and as a Hugging Face Space. Wiring only.

Settings (environment variables, all optional):
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (127.0.0.1:7860)
  SCRATCHGPT_MODEL           the default model: a .gguf, a checkpoint or Hugging Face model dir,
                             or a hub id where the hub is reachable (the packaged SmolLM2-135M)
  SCRATCHGPT_MODELS_DIR      checkpoints offered in the model selector (models)
  SCRATCHGPT_RAG_MODEL       answers RAG questions to the default (models/smollm2-rag when
                             `make rag-model` wrote it; "off": the default itself)
  SCRATCHGPT_DATA            embedded Chroma store (data/chroma)
  CHROMA_HOST / CHROMA_PORT  use a Chroma server instead of the embedded store
  SCRATCHGPT_LIBRARY         a shared read-only collection every session searches (unset: none)
  SCRATCHGPT_SESSION_TTL     seconds before an idle session's documents are removed (3600)
  SCRATCHGPT_MAX_NEW_TOKENS  server cap on reply length (512)
  SCRATCHGPT_MAX_PROMPT_TOKENS  server cap on prompt length (4096)
  SCRATCHGPT_MAX_UPLOAD_MB   largest accepted file (20)
  SCRATCHGPT_CONCURRENCY     replies generated at once (1)
  SCRATCHGPT_QUEUE_SIZE      requests allowed to wait; more get "Queue is full" (32)
"""

from __future__ import annotations

import os
import sys

import offline

offline.apply()  # before any library reads them

import ingest
from webapp.chat import ChatLimits, ChatService
from webapp.documents import Library, start_sweeper
from webapp.models import ModelConfigError, ModelRegistry, default_model
from webapp.ui import build_demo


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def main() -> None:
    try:  # checked before anything starts: a bad value stops the app with one line
        default = default_model(os.environ.get("SCRATCHGPT_MODEL"))
        models = ModelRegistry(
            os.environ.get("SCRATCHGPT_MODELS_DIR", "models"),
            default=default,
            rag=os.environ.get("SCRATCHGPT_RAG_MODEL"),
        )
    except ModelConfigError as err:
        sys.exit(f"app.py: {err}")
    print(f"Default model: {default.name} ({default.source})", flush=True)
    if models.rag:
        print(f"RAG answers: {models.rag} (SCRATCHGPT_RAG_MODEL=off to disable)", flush=True)
    upload_mb = env_int("SCRATCHGPT_MAX_UPLOAD_MB", 20)
    library = Library(
        path=os.environ.get("SCRATCHGPT_DATA") or None,
        shared=os.environ.get("SCRATCHGPT_LIBRARY") or None,
        ttl_s=float(env_int("SCRATCHGPT_SESSION_TTL", 3600)),
        limits=ingest.FileLimits(max_bytes=upload_mb * 1024 * 1024),
    )
    start_sweeper(library, every_s=min(60.0, library.ttl_s / 4))
    service = ChatService(
        models,
        library,
        limits=ChatLimits(
            max_new_tokens=env_int("SCRATCHGPT_MAX_NEW_TOKENS", 512),
            max_prompt_tokens=env_int("SCRATCHGPT_MAX_PROMPT_TOKENS", 4096),
        ),
    )
    demo = build_demo(service)
    demo.queue(
        default_concurrency_limit=env_int("SCRATCHGPT_CONCURRENCY", 1),
        max_size=env_int("SCRATCHGPT_QUEUE_SIZE", 32),
    )
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=env_int("GRADIO_SERVER_PORT", 7860),
        # a little headroom: our own size check gives the clearer message
        max_file_size=f"{upload_mb + 1}mb",
        share=False,
    )


if __name__ == "__main__":
    main()
