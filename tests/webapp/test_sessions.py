"""Sessions a client cannot borrow: keys the server signs, checked on every document and RAG
request, through the real app (`gradio_client`) and in Chromium."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from gradio_client import Client, handle_file

from webapp.sessions import SessionKeys

CANARY = "OSPREY-CANARY-4417"
QUESTION = "What is the canary word of the first client?"
RELOAD = "reload the page"


def test_keys_verify_only_when_this_server_signed_them():
    keys = SessionKeys()
    key = keys.issue()
    assert keys.verify(key) and keys.verify(key) == keys.verify(key)
    assert keys.issue() != key  # random each time
    body, signature = key.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    for forged in (
        f"{body}.{flipped}",  # the signature altered
        f"{body[:-2]}xx.{signature}",  # the random part altered
        SessionKeys().issue(),  # signed under another secret (another process)
        body,
        "",
        "a.b",
        "not base64!.at all?",
        key + "x" * 100,
        None,
        ["a list"],
    ):
        assert keys.verify(forged) is None, forged
    shared = "s" * 32  # SCRATCHGPT_SECRET: keys survive a restart
    assert SessionKeys(shared).verify(SessionKeys(shared).issue())
    with pytest.raises(ValueError, match="at least 32 characters"):
        SessionKeys("short")


def test_a_copied_session_hash_or_a_forged_key_reaches_none_of_another_clients_documents(
    app, tmp_path
):
    secret = tmp_path / "first-client.txt"
    secret.write_text(f"The canary word of the first client is {CANARY}.")
    first = Client(app.url, verbose=False)
    key = first.predict(api_name="/new_session")
    status, table, *_ = first.predict([handle_file(secret)], session=key, api_name="/upload")
    assert status.startswith("✅") and table["data"][0][0] == "first-client.txt"
    assert CANARY in first.predict(QUESTION, template="rag", session=key, api_name="/chat")

    thief = Client(app.url, verbose=False)
    thief.session_hash = first.session_hash  # what used to name the first client's documents
    with pytest.raises(Exception, match="none are indexed yet"):  # no key: no documents
        thief.predict(QUESTION, template="rag", api_name="/chat")
    body, signature = key.split(".")
    for forged in (f"{body}.{signature[::-1]}", SessionKeys().issue(), "guess"):
        with pytest.raises(Exception, match=RELOAD):
            thief.predict(QUESTION, template="rag", session=forged, api_name="/chat")
        with pytest.raises(Exception, match=RELOAD):
            thief.predict([handle_file(secret)], session=forged, api_name="/upload")
    with pytest.raises(Exception, match=RELOAD):  # an upload must name a session
        thief.predict([handle_file(secret)], session="", api_name="/upload")

    own = tmp_path / "thief.txt"
    own.write_text("The thief's notes are about gardening and tomatoes.")
    thief_key = thief.predict(api_name="/new_session")
    _, table, *_ = thief.predict([handle_file(own)], session=thief_key, api_name="/upload")
    assert [row[0] for row in table["data"]] == ["thief.txt"]
    answer = thief.predict(QUESTION, template="rag", session=thief_key, api_name="/chat")
    assert CANARY not in answer and "first-client.txt" not in answer
    # the owner still has it
    assert CANARY in first.predict(QUESTION, template="rag", session=key, api_name="/chat")


def test_a_copied_session_hash_neither_reads_nor_stalls_another_clients_answers(app):
    owner = Client(app.url, verbose=False)
    owner.predict("Hello.", max_new_tokens=2, api_name="/chat")  # the model is loaded
    job = owner.submit("Write a poem about the sea.", max_new_tokens=24, api_name="/chat")
    seen: list[str] = []

    def snoop() -> None:  # Gradio's event stream of that hash, read straight over HTTP
        try:
            with httpx.stream(
                "GET",
                f"{app.url}/gradio_api/queue/data",
                params={"session_hash": owner.session_hash},
                timeout=15,
            ) as stream:
                seen.extend(stream.iter_lines())
        except httpx.HTTPError:
            pass

    snooper = threading.Thread(target=snoop)
    snooper.start()
    thief = Client(app.url, verbose=False)
    thief.session_hash = owner.session_hash  # its own requests on the owner's hash
    assert thief.predict("Say hi.", max_new_tokens=4, api_name="/chat").strip()
    answer = job.result(timeout=300)  # the owner's answer still arrives, whole
    snooper.join()
    assert answer.strip()
    assert not any(answer[:12] in line for line in seen), seen


def test_a_page_keeps_its_key_and_documents_across_reloads_and_a_forged_one_is_replaced(
    app, browser, tmp_path
):
    notes = tmp_path / "reload-notes.txt"
    notes.write_text("The lighthouse keeper's cat is called Marmalade.")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(app.url)
        page.wait_for_selector("#message textarea")
        page.get_by_role("tab", name="Documents").click()
        page.locator("#upload input[type=file]").set_input_files([str(notes)])
        page.wait_for_function(
            "document.querySelector('#upload-status').innerText.includes('Added')"
        )
        stored = page.evaluate("localStorage.getItem('scratchgpt-session')")
        assert stored and "." not in stored  # kept encrypted by Gradio, never in the URL
        assert "session" not in page.url
        for _ in range(2):
            page.reload()
            page.wait_for_selector("#message textarea")
            page.get_by_role("tab", name="Documents").click()
            page.wait_for_function(
                "document.querySelector('#documents').innerText.includes('reload-notes.txt')"
            )
        # a value planted in the browser is not a key this server signed: a fresh, empty session
        page.evaluate("localStorage.setItem('scratchgpt-session', 'planted')")
        page.reload()
        page.wait_for_selector("#message textarea")
        page.get_by_role("tab", name="Documents").click()
        time.sleep(2.0)
        assert "reload-notes.txt" not in page.locator("#documents").inner_text()
        assert page.evaluate("localStorage.getItem('scratchgpt-session')") != "planted"
    finally:
        context.close()
