"""ScratchGPT entry point, locally (`make run`) and as a Hugging Face Space. Wiring only.

Settings (environment variables, all optional; a value that is not usable stops the app with one
line naming it, before anything starts; counts and sizes are whole numbers of at least 1):
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (127.0.0.1:7860)
  SCRATCHGPT_MODEL           the default model: a .gguf, a checkpoint or Hugging Face model dir,
                             or a hub id where the hub is reachable (the packaged SmolLM2-135M)
  SCRATCHGPT_MODELS_DIR      checkpoints offered in the model selector (models)
  SCRATCHGPT_HUB_MODELS      hub ids offered in the selector too, comma-separated, where the hub is
                             reachable (none: a client can never make the server download a model)
  SCRATCHGPT_RAG_MODEL       answers RAG questions to the default (models/smollm2-rag when
                             `make rag-model` wrote it; "off": the default itself)
  SCRATCHGPT_DATA            embedded Chroma store (data/chroma); session collections an earlier
                             run left in it are removed at start-up
  CHROMA_HOST / CHROMA_PORT  use a Chroma server instead of the embedded store
  SCRATCHGPT_EMBEDDER        library (sentence-transformers) or ours (core.sentence, same weights)
  SCRATCHGPT_LIBRARY         a shared read-only collection every session searches (unset: none)
  SCRATCHGPT_SECRET          signs session keys, at least 32 characters (unset: a random one per
                             process, so a restart asks every page to reload)
  SCRATCHGPT_SESSION_TTL     seconds before an idle session's documents are removed (3600)
  SCRATCHGPT_MAX_NEW_TOKENS  server cap on reply length (512)
  SCRATCHGPT_MAX_PROMPT_TOKENS  server cap on prompt length (4096)
  SCRATCHGPT_MAX_UPLOAD_MB   largest accepted file (20)
  SCRATCHGPT_MAX_UPLOAD_FILES   files in one upload (10)
  SCRATCHGPT_MAX_REQUEST_MB  the files of one upload together (50)
  SCRATCHGPT_MAX_SESSION_DOCS   documents one session may hold (50)
  SCRATCHGPT_MAX_SESSION_CHUNKS chunks one session may hold (5000)
  SCRATCHGPT_CONCURRENCY     replies generated at once (1)
  SCRATCHGPT_QUEUE_SIZE      requests allowed to wait; more get "Queue is full" (32)
"""

from __future__ import annotations

import os
import sys

import offline

offline.apply()  # before any library reads them

from starlette.middleware import Middleware

import ingest
from webapp.chat import ChatLimits, ChatService
from webapp.documents import MB, Library, UploadLimits, start_sweeper, sweep_orphans
from webapp.models import ModelConfigError, ModelRegistry, default_model, hub_models
from webapp.sessions import SessionKeys
from webapp.streams import BoundSessions
from webapp.ui import build_demo


def setting(name: str, default: int, *, most: int | None = None) -> int:
    """A whole-number setting of at least 1 (and at most `most`); any other value stops the app
    with one line naming the variable."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or (most is not None and value > most):
        span = f"from 1 to {most}" if most is not None else "of at least 1"
        sys.exit(f"app.py: {name}={raw!r}: must be a whole number {span}.")
    return value


def settings() -> dict[str, int]:
    """Every numeric setting, checked before anything starts."""
    setting("CHROMA_PORT", 8000, most=65535)  # read by ingest.Store itself
    return {
        "port": setting("GRADIO_SERVER_PORT", 7860, most=65535),
        "ttl_s": setting("SCRATCHGPT_SESSION_TTL", 3600),
        "max_new_tokens": setting("SCRATCHGPT_MAX_NEW_TOKENS", 512),
        "max_prompt_tokens": setting("SCRATCHGPT_MAX_PROMPT_TOKENS", 4096),
        "upload_mb": setting("SCRATCHGPT_MAX_UPLOAD_MB", 20),
        "max_files": setting("SCRATCHGPT_MAX_UPLOAD_FILES", 10),
        "request_mb": setting("SCRATCHGPT_MAX_REQUEST_MB", 50),
        "max_documents": setting("SCRATCHGPT_MAX_SESSION_DOCS", 50),
        "max_chunks": setting("SCRATCHGPT_MAX_SESSION_CHUNKS", 5000),
        "concurrency": setting("SCRATCHGPT_CONCURRENCY", 1),
        "queue_size": setting("SCRATCHGPT_QUEUE_SIZE", 32),
    }


def session_keys() -> SessionKeys:
    try:
        return SessionKeys(os.environ.get("SCRATCHGPT_SECRET") or None)
    except ValueError as err:
        sys.exit(f"app.py: SCRATCHGPT_SECRET {err}.")


def embedder_setting() -> str:
    """Our own encoder joins the embedders (`SCRATCHGPT_EMBEDDER=ours`: `core.sentence`, the
    same MiniLM weights); any other unknown value stops the app with one line."""
    from core.sentence import SentenceEncoder
    from ingest import embeddings

    embeddings.EMBEDDERS["ours"] = SentenceEncoder
    try:
        return embeddings.embedder_name()
    except ValueError as err:
        sys.exit(f"app.py: {err}")


def library(config: dict[str, int]) -> Library:
    """The document library. First, the session collections an earlier run left are removed (the
    embedded store only: on a Chroma server other replicas' sessions are alive); that also finds
    a store another process holds before the embedder loads."""
    path = os.environ.get("SCRATCHGPT_DATA") or None
    shared = os.environ.get("SCRATCHGPT_LIBRARY") or None
    if not (os.environ.get("CHROMA_HOST") or os.environ.get("CHROMA_PORT")):
        swept = sweep_orphans(path, keep=[shared] if shared else [])
        if swept:
            print(f"Removed {len(swept)} session collections an earlier run left.", flush=True)
    return Library(
        path=path,
        shared=shared,
        ttl_s=float(config["ttl_s"]),
        limits=ingest.FileLimits(max_bytes=config["upload_mb"] * MB),
        uploads=UploadLimits(
            max_files=config["max_files"],
            max_request_bytes=config["request_mb"] * MB,
            max_documents=config["max_documents"],
            max_chunks=config["max_chunks"],
        ),
    )


def main() -> None:
    config = settings()
    keys = session_keys()
    try:  # checked before anything starts: a bad value stops the app with one line
        default = default_model(os.environ.get("SCRATCHGPT_MODEL"))
        models = ModelRegistry(
            os.environ.get("SCRATCHGPT_MODELS_DIR", "models"),
            default=default,
            rag=os.environ.get("SCRATCHGPT_RAG_MODEL"),
            hub=hub_models(os.environ.get("SCRATCHGPT_HUB_MODELS")),
        )
    except ModelConfigError as err:
        sys.exit(f"app.py: {err}")
    print(f"Default model: {default.name} ({default.source})", flush=True)
    if models.rag:
        print(f"RAG answers: {models.rag} (SCRATCHGPT_RAG_MODEL=off to disable)", flush=True)
    if embedder_setting() != "library":
        print("Documents are embedded with our own encoder (core.sentence).", flush=True)
    try:
        documents = library(config)
    except ingest.IngestError as err:  # a store another process holds, or one out of reach
        sys.exit(f"app.py: {err}")
    start_sweeper(documents, every_s=min(60.0, config["ttl_s"] / 4))
    service = ChatService(
        models,
        documents,
        limits=ChatLimits(
            max_new_tokens=config["max_new_tokens"],
            max_prompt_tokens=config["max_prompt_tokens"],
        ),
    )
    demo = build_demo(service, keys)
    demo.queue(
        default_concurrency_limit=config["concurrency"],
        max_size=config["queue_size"],
    )
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=config["port"],
        # a little headroom: our own size check gives the clearer message
        max_file_size=f"{config['upload_mb'] + 1}mb",
        share=False,
        # a page's queue answers only the client that opened it (webapp/streams.py)
        app_kwargs={"middleware": [Middleware(BoundSessions)]},
    )


if __name__ == "__main__":
    main()
