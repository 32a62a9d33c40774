"""How chat text is shown and read back: message content as plain text, model output as Markdown
without live HTML, the numbered sources beneath a RAG answer, and the history turned back into
the turns the model reads."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ingest import Hit
from webapp.evidence import Evidence

if TYPE_CHECKING:
    from webapp.chat import Reply


def text_of(content: Any) -> str:
    """Gradio message content (a string, or a list of typed parts) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(text_of(part) for part in content)
    return ""


SOURCES_HEADER = "\n\n---\n**Sources**\n\n"


def conversation(history: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """User/assistant turns of a chat history, without the source lists the UI appended."""
    turns = []
    for turn in history:
        if not isinstance(turn, dict) or (turn.get("metadata") or {}).get("title"):
            continue  # not a message, or a UI-only one (notices)
        content = text_of(turn.get("content")).split(SOURCES_HEADER)[0]
        if turn.get("role") == "assistant":  # as the model wrote it, not as `shown`
            content = html.unescape(content.replace("!\\[", "!["))
        if turn.get("role") in ("user", "assistant") and content.strip():
            turns.append({"role": turn["role"], "content": content})
    return turns


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")  # emphasis, code, links, headings, tables


def plain(text: str) -> str:
    """User-supplied text shown as literal text in Markdown: no HTML, links or formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def sources_markdown(
    hits: Sequence[Hit], evidence: Sequence[Evidence] = (), snippet_chars: int = 240
) -> str:
    """The numbered source list shown beneath a RAG answer: file, page, score and a snippet;
    a source that holds evidence shows that sentence, highlighted, as its snippet. Beneath them,
    folded until clicked, why each ranked where it did (`ingest.Why`)."""
    quoted: dict[int, list[str]] = {}
    for e in evidence:
        quoted.setdefault(e.number, []).append(e.sentence)
    lines = []
    for n, hit in enumerate(hits, 1):
        if n in quoted:
            snippet = " … ".join(f"<mark>{plain(sentence)}</mark>" for sentence in quoted[n])
        else:
            text = " ".join(hit.text.split())
            snippet = plain(text[:snippet_chars] + ("…" if len(text) > snippet_chars else ""))
        lines.append(
            f"**\\[{n}\\]** {plain(hit.source)}, page {hit.page} · score {hit.score:.2f}  \n"
            f"{snippet}"
        )
    why = [f"\\[{n}\\] {plain(h.why.describe())}" for n, h in enumerate(hits, 1) if h.why]
    if why:  # on demand: a <details> block the reader opens
        lines.append(
            "<details><summary>Why these sources ranked</summary>\n\n"
            + "  \n".join(why)
            + "\n\n</details>"
        )
    return "\n\n".join(lines)


_IMAGE = re.compile(r"!\[")


def shown(text: str) -> str:
    """Model output (and the document text it quotes) as Markdown with no live HTML: tags are
    shown as text, and an image is not fetched (a reply cannot build a form or call a server)."""
    return _IMAGE.sub(r"!\\[", html.escape(text, quote=False))


def answer_markdown(reply: Reply) -> str:
    """An answer as shown in the chat: the text, then its numbered sources beneath it."""
    if not reply.sources:
        return shown(reply.text)
    return shown(reply.text) + SOURCES_HEADER + sources_markdown(reply.sources, reply.evidence)
