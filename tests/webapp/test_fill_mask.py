"""The Fill-mask tab (webapp/fill_mask.py): top-k tables from an encoder checkpoint, the "bank"
similarity table from MiniLM, errors a user can cause, and the tab itself in Chromium."""

from __future__ import annotations

import socket

import gradio as gr
import pytest
import torch

from core import checkpoint
from core.encoder import Encoder, EncoderConfig
from core.mlm import MaskingError, train_wordpiece
from core.weights import WeightsError
from tests.webapp.conftest import CHROMIUM
from webapp.fill_mask import CONTEXT_MODELS, EXAMPLE_SENTENCES, EncoderLab, build_fill_mask_tab

MINILM, DEMO = CONTEXT_MODELS


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> EncoderLab:
    """The lab over a small random MLM encoder saved as `make mlm-demo` saves one."""
    directory = tmp_path_factory.mktemp("models") / "mlm-demo"
    tokenizer = train_wordpiece(["to be or not to be that is the question " * 40], 200)
    torch.manual_seed(0)
    config = EncoderConfig.preset(
        "bert_preln", vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64
    )
    checkpoint.save(Encoder(config), directory, tokenizer)
    return EncoderLab(directory)


def test_fill_gives_k_ranked_rows_per_mask(lab):
    rows = lab.fill("to be or not to [MASK], that is the [MASK]", 4)
    assert [r[:2] for r in rows] == [[m, k] for m in (1, 2) for k in (1, 2, 3, 4)]
    first = [r[3] for r in rows[:4]]
    assert first == sorted(first, reverse=True) and 0 < sum(first) <= 1


def test_bank_by_the_river_is_nearer_bank_by_the_river(lab):
    headers, rows = lab.contextual("bank", EXAMPLE_SENTENCES, MINILM)
    assert headers == ["sentence", "#1", "#2", "#3", "#4"]
    table = [row[1:] for row in rows]
    assert [table[i][i] for i in range(4)] == pytest.approx([1.0] * 4, abs=1e-3)
    assert table[0][1] > max(table[0][2], table[0][3])  # two river banks
    assert table[2][3] > max(table[2][0], table[2][1])  # two money banks


def test_user_errors_say_what_to_do(lab, tmp_path):
    with pytest.raises(MaskingError, match=r"write \[MASK\]"):
        lab.fill("no blank here", 5)
    with pytest.raises(MaskingError, match="2 to 12 sentences"):
        lab.contextual("bank", "only one bank sentence", MINILM)
    with pytest.raises(MaskingError, match="does not contain the word"):
        lab.contextual("bank", "a river bank\na muddy shore", DEMO)
    with pytest.raises(WeightsError, match="make mlm-demo"):
        EncoderLab(tmp_path / "missing").fill("to be [MASK]", 5)


TABLE_TEXT = "(id) => document.querySelector(id).innerText"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_tab_in_chromium(lab):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with gr.Blocks() as demo, gr.Tabs():
        build_fill_mask_tab(lab)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, show_error=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}")
            page.click("#fill-go")
            page.wait_for_function(f"({TABLE_TEXT})('#fill-table').includes('0.0')")
            body = page.locator("#fill-table").inner_text().split()[4:]  # after the header
            assert body[0::4] == ["1"] * 5 and body[1::4] == ["1", "2", "3", "4", "5"]  # top-5
            page.fill("#context-word textarea, #context-word input", "bank")
            page.click("#context-go")
            page.wait_for_function(f"({TABLE_TEXT})('#context-table').includes('#4: The bank')")
            page.fill("#fill-text textarea, #fill-text input", "nothing to fill")
            page.click("#fill-go")
            page.wait_for_selector("text=where the missing word goes")
            browser.close()
    finally:
        demo.close()
