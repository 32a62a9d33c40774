"""The "Inside the model" tab in Chromium: token view, click a token, branch, attention maps,
beam tree, and the decoding lab's three columns while another user's chat is answered.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import time

import pytest

from tests.webapp.conftest import ARTIFACTS, start_app, stop_app
from tests.webapp.test_browser import TIMEOUT_MS, Session

pytestmark = pytest.mark.slow


def wait_text(s: Session, selector: str, text: str) -> str:
    """The element's text once it contains `text`."""
    deadline = time.time() + TIMEOUT_MS / 1000
    while time.time() < deadline:
        node = s.page.locator(selector)
        if node.count() and text in (content := node.first.inner_text()):
            return content
        time.sleep(0.2)
    raise AssertionError(f"{selector} never showed {text!r}")


def opened(browser, app) -> Session:
    """A page whose session key has arrived (the first event needs it)."""
    s = Session(browser, app.url)
    s.page.wait_for_function("(localStorage.getItem('scratchgpt-session') || '').length > 2")
    return s


def shot(s: Session, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    s.page.screenshot(path=str(ARTIFACTS / f"inspect-{name}.png"), full_page=True)


def test_token_view_branch_attention_and_beam_tree(browser, app):
    s = opened(browser, app)
    answer, _ = s.ask("What is the capital of France?")
    s.tab("Inside the model")
    s.page.locator("#inspect-last").click()
    s.page.wait_for_selector("#token-view .tok")
    tokens = s.page.locator("#token-view .tok")
    shown = "".join(tokens.nth(i).inner_text() for i in range(tokens.count()))
    assert shown.replace("⏎", "").split() == answer.split()  # the reply, token by token
    assert "p=" in tokens.first.get_attribute("title")  # hover: probability and candidates
    shot(s, "tokens")

    tokens.nth(2).click()  # its stages, the pick marked; the position set to it
    s.page.wait_for_function(
        "document.querySelector('#token-pos input[type=number]').value === '2'"
    )
    picked = tokens.nth(2).inner_text().strip()
    assert f"{picked}" in wait_text(s, "#token-stages", "✓")
    s.page.locator("#branch-go").click()
    tree = wait_text(s, "#branch-tree", "branch 1")
    assert "from token #2" in tree
    shot(s, "branch")

    s.tab("Attention")
    s.page.locator("#attn-draw").click()
    s.page.wait_for_selector("#attn-heatmap svg rect")
    s.page.wait_for_selector("#attn-context span")
    assert s.page.locator("#attn-context span").count() > 10  # the prompt's tokens, shaded
    shot(s, "attention")

    s.tab("Token view")
    s.tab("Decoding")
    s.choose("mode", "Beam search")
    s.ask("Name a colour.")
    s.tab("Inside the model")
    s.page.locator("#inspect-last").click()
    s.tab("Beam tree")
    s.page.wait_for_selector("#beam svg g.beam-node.finished")
    assert s.page.locator("#beam svg g.beam-node").count() > 3
    shot(s, "beam-tree")
    s.close()


@pytest.fixture
def long_replies_app(tmp_path):
    """An app whose replies may run to 400 tokens: a lab run long enough to chat beside."""
    running = start_app(tmp_path, SCRATCHGPT_MAX_NEW_TOKENS="400")
    yield running
    stop_app(running)


def test_the_lab_runs_three_columns_while_another_user_chats(browser, long_replies_app):
    app = long_replies_app
    s, other = opened(browser, app), opened(browser, app)
    s.tab("Inside the model")
    s.tab("Decoding lab")
    s.page.locator("#lab-prompt textarea").fill("Write a long story about the sea, in ten parts.")
    s.set_number("lab-max-new", 400)
    s.page.locator("#lab-run").click()
    s.page.wait_for_selector("#lab-columns .lab-column")
    assert s.page.locator("#lab-columns .lab-column").count() == 3  # all three are streaming
    answer, _ = other.ask("Say hello.")  # meanwhile another user: answered while the lab runs
    assert answer.strip()
    stats = s.page.locator("#lab-columns .lab-stats").all_inner_texts()
    assert not all("done" in x for x in stats), stats  # the chat did not queue behind the lab
    deadline = time.time() + TIMEOUT_MS / 1000
    while time.time() < deadline:
        stats = s.page.locator("#lab-columns .lab-stats").all_inner_texts()
        if len(stats) == 3 and all("done" in x for x in stats):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the lab did not finish: {stats}")
    assert all("tok/s" in x and "log-prob" in x for x in stats)
    shot(s, "lab")
    s.close()
    other.close()
