"""Train in the browser (Chromium): paste ~200 KB of text, pre-train the tiny preset (the server's
time cap, set to one minute here, ends it), reload mid-training and reattach, see the loss fall,
generate a sample, pick the new model in the selector and chat with it; a second user is refused."""

from __future__ import annotations

import re
import time

import pytest

from tests.webapp.conftest import ARTIFACTS, start_app, stop_app
from tests.webapp.test_browser import Session

NAME = "browser-tiny"
TRAIN_MINUTES = 1
LOSS = re.compile(r"step (\d+)/\d+, train loss ([\d.]+)")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    running = start_app(
        tmp_path_factory.mktemp("train-app"), SCRATCHGPT_TRAIN_MINUTES=str(TRAIN_MINUTES)
    )
    yield running
    stop_app(running)


def two_hundred_kb() -> str:
    from recipes.corpora import play_keys, play_path

    plays = "\n\n".join(play_path(k).read_text("utf-8", "replace") for k in play_keys()[:2])
    return plays[: 200 * 1024]


def status(s: Session) -> str:
    return s.page.locator("#train-status").inner_text()


def wait_status(s: Session, predicate, timeout: float = 240.0) -> str:
    deadline, text = time.time() + timeout, ""
    while time.time() < deadline:
        text = status(s)
        if predicate(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"the train status never matched; last: {text!r}")


def paste(s: Session, elem_id: str, text: str) -> None:
    """Put `text` in a textbox as a paste does: one input event (playwright's `fill` types
    large texts far too slowly)."""
    s.page.evaluate(
        """([id, text]) => {
            const box = document.querySelector(`#${id} textarea`);
            box.value = text;
            box.dispatchEvent(new Event("input", {bubbles: true}));
        }""",
        [elem_id, text],
    )


def toast(s: Session) -> str:
    box = s.page.locator(".toast-body").last
    box.wait_for()
    return box.inner_text()


@pytest.mark.slow
def test_train_reload_reattach_sample_then_chat_with_the_model(browser, app):
    s = Session(browser, app.url)
    s.page.wait_for_function("localStorage.getItem('scratchgpt-train-owner')")  # key minted
    s.tab("Train")
    paste(s, "train-text", two_hundred_kb())
    s.set_number("train-every", 25)
    s.page.locator("#train-name textarea").fill(NAME)
    s.page.locator("#train-start").click()
    text = wait_status(s, lambda t: LOSS.search(t) is not None)
    first_step, first_loss = (float(x) for x in LOSS.search(text).groups())
    assert f"pretrain {NAME}: running" in text and "tokens/s" in text and "ETA" in text

    s.page.reload()  # the page forgets everything; the owner key in localStorage does not
    s.page.wait_for_selector("#message textarea")
    s.tab("Train")
    text = wait_status(s, lambda t: (m := LOSS.search(t)) is not None and int(m[1]) > first_step)
    assert f"pretrain {NAME}: running" in text  # reattached to the same job

    other = Session(browser, app.url)  # another user, while the job runs
    other.page.wait_for_function("localStorage.getItem('scratchgpt-train-owner')")
    other.tab("Train")
    wait_status(other, lambda t: "Another user's pretrain job is running" in t, timeout=30)
    other.page.locator("#train-text textarea").fill("some text " * 500)
    other.page.locator("#train-start").click()
    assert "one job at a time" in toast(other)
    other.close()

    text = wait_status(s, lambda t: "stopped" in t or "done" in t, timeout=TRAIN_MINUTES * 60 + 120)
    last_step, last_loss = (float(x) for x in LOSS.search(text).groups())
    assert "time budget" in text and last_step > first_step
    assert last_loss < first_loss - 1.0, (first_loss, last_loss)  # the loss fell
    assert s.page.locator("#train-plot canvas, #train-plot svg").count() > 0  # the curve drawn
    s.set_number("train-temperature", 0.3)  # the automatic samples were at 0.8
    s.page.locator("#train-sample").click()
    s.page.wait_for_function(
        "n => document.querySelector('#train-samples').innerText.includes(n)",
        arg=f"step {int(last_step)} (temperature 0.3)",
    )
    s.page.screenshot(path=str(ARTIFACTS / "train-tab.png"), full_page=True)

    s.tab("Decoding")
    s.pick_model(NAME)
    answer, _ = s.ask("What say you, good my lord?")
    notice = s.page.locator("#notice").inner_text()
    assert f"from {NAME}" in notice and answer.strip()
    s.close()
