"""The "Fill-mask" tab: an encoder's top-k words for each [MASK] with their probabilities, and one
word's contextual vectors across sentences (e.g. "bank" by a river and "bank" of money) as a
cosine-similarity table. Encoders load on first use; the work is in `core.fill_mask`."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from core.bert_weights import load_encoder, minilm_path
from core.fill_mask import fill_mask, similarity_table, word_vectors
from core.mlm import MaskingError
from core.weights import WeightsError

PRIVATE = {"api_visibility": "private"}
MODEL = {"concurrency_id": "model"}  # shares the model's slots with the chat
EXAMPLE_TEXT = "To be or not to [MASK], that is the question."
EXAMPLE_SENTENCES = (
    "He sat on the bank of the river and watched the water.\n"
    "The boat drifted towards the muddy bank.\n"
    "She opened an account at the bank.\n"
    "The bank refused to lend him any money."
)
MAX_SENTENCES = 12
CONTEXT_MODELS = ("all-MiniLM-L6-v2", "demo encoder (mlm-demo)")


class EncoderLab:
    """The encoders behind the tab, each loaded once, and the two views' tables."""

    def __init__(self, demo_dir: str | Path | None = None) -> None:
        models = Path(os.environ.get("SCRATCHGPT_MODELS_DIR", "models"))
        self.demo_dir = Path(demo_dir) if demo_dir else models / "mlm-demo"
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def encoder(self, name: str):
        """(model, tokenizer) for `name`: the demo MLM encoder or the packaged MiniLM."""
        with self._lock:
            if name not in self._loaded:
                path = minilm_path() if name == CONTEXT_MODELS[0] else self.demo_dir
                if not path.is_dir():
                    raise WeightsError(
                        f"no encoder at {path}; train the demo one with `make mlm-demo`."
                    )
                self._loaded[name] = load_encoder(path)
            return self._loaded[name]

    def fill(self, text: str, k: int) -> list[list[Any]]:
        """Rows of (mask number, rank, token, probability) for each [MASK] in `text`."""
        model, tokenizer = self.encoder(CONTEXT_MODELS[1])
        return [
            [n, rank, token, round(p, 4)]
            for n, top in enumerate(fill_mask(model, tokenizer, text, int(k)), start=1)
            for rank, (token, p) in enumerate(top, start=1)
        ]

    def contextual(self, word: str, sentences: str, model_name: str) -> tuple[list, list]:
        """(headers, rows): the cosine similarity of `word`'s vector in each pair of sentences."""
        lines = [line.strip() for line in sentences.splitlines() if line.strip()]
        if not 2 <= len(lines) <= MAX_SENTENCES:
            raise MaskingError(f"give 2 to {MAX_SENTENCES} sentences, one a line.")
        model, tokenizer = self.encoder(model_name)
        table = similarity_table(word_vectors(model, tokenizer, word, lines))
        headers = ["sentence", *[f"#{i}" for i in range(1, len(lines) + 1)]]
        rows = [
            [f"#{i}: {line}", *[round(v, 3) for v in table[i - 1].tolist()]]
            for i, line in enumerate(lines, start=1)
        ]
        return headers, rows


def _shown(call, *args):
    try:
        return call(*args)
    except (MaskingError, WeightsError) as err:
        raise gr.Error(str(err)) from err


def build_fill_mask_tab(lab: EncoderLab | None = None) -> EncoderLab:
    """The tab's layout and events, inside the caller's `gr.Blocks`/`gr.Tabs`."""
    lab = lab or EncoderLab()

    def fill(text: str, k: float):
        return _shown(lab.fill, text, int(k))

    def contextual(word: str, sentences: str, model_name: str):
        headers, rows = _shown(lab.contextual, word, sentences, model_name)
        return gr.Dataframe(value=rows, headers=headers)

    with gr.Tab("Fill-mask", id="fill-mask"):
        gr.Markdown(
            "An **encoder** reads the whole sentence at once and predicts the hidden word. "
            "Write `[MASK]` where a word is missing (the demo encoder from `make mlm-demo`)."
        )
        text = gr.Textbox(EXAMPLE_TEXT, label="Text with [MASK]", elem_id="fill-text")
        k = gr.Slider(1, 20, value=5, step=1, label="Top-k")
        go = gr.Button("Fill in", variant="primary", elem_id="fill-go")
        found = gr.Dataframe(
            headers=["[MASK]", "rank", "token", "probability"], elem_id="fill-table"
        )
        go.click(fill, [text, k], found, **PRIVATE, **MODEL)
        gr.Markdown(
            "**Contextual embeddings**: the same word gets a different vector in each sentence. "
            "The table is the cosine similarity of the word's vectors, sentence by sentence."
        )
        word = gr.Textbox("bank", label="Word", elem_id="context-word")
        sentences = gr.Textbox(
            EXAMPLE_SENTENCES, lines=5, label="Sentences, one a line", elem_id="context-lines"
        )
        model_name = gr.Radio(list(CONTEXT_MODELS), value=CONTEXT_MODELS[0], label="Encoder")
        compare = gr.Button("Compare", elem_id="context-go")
        table = gr.Dataframe(elem_id="context-table")
        compare.click(contextual, [word, sentences, model_name], table, **PRIVATE, **MODEL)
    return lab
