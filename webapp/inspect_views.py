"""HTML and SVG for the "Inside the model" tab, from traces and attention weights (no Gradio):
tokens coloured by probability or entropy, each stage's top candidates, the branch tree, the beam
tree, attention heatmaps and the prompt coloured by what an answer token attended to. Every
piece of model or user text is escaped."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import torch

from core.generate.trace import Step, Trace

MAX_LABEL = 12  # characters of a token shown on an axis or a tree node


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def _label(text: str, limit: int = MAX_LABEL) -> str:
    shown = text.replace("\n", "⏎").replace(" ", "·")
    return html.escape(shown if len(shown) <= limit else shown[: limit - 1] + "…")


def _heat(x: float) -> str:
    """0 -> white, 1 -> strong blue (attention, confidence)."""
    x = min(max(x, 0.0), 1.0)
    return f"hsl(215, 90%, {int(100 - 55 * x)}%)"


def _risk(p: float) -> str:
    """Probability 1 -> green, 0 -> red: how sure the model was of the token it produced."""
    return f"hsl({int(120 * min(max(p, 0.0), 1.0))}, 75%, 80%)"


def tokens_html(steps: Sequence[Step], tokenizer, color_by: str = "probability") -> str:
    """The reply as coloured tokens; hovering one shows its top candidates, clicking selects it
    (`data-i` is its position)."""
    if not steps:
        return "<p>No tokens.</p>"
    spans = []
    for i, step in enumerate(steps):
        if color_by == "entropy":  # low entropy (sure) green, high red; log(V) is the maximum
            colour = _risk(1 - step.entropy / math.log(max(step.stages[0].support, 2)))
        else:
            colour = _risk(step.prob)
        tip = "\n".join(f"{token_text(tokenizer, t)!r}: {p:.4f}" for t, p in step.stages[-1].top)
        title = html.escape(
            f"#{i} p={step.prob:.4f}, entropy {step.entropy:.2f} nats\n{tip}", quote=True
        )
        text = html.escape(token_text(tokenizer, step.token)).replace("\n", "⏎<br>")
        spans.append(
            f'<span class="tok" data-i="{i}" title="{title}" style="background:{colour};'
            f'cursor:pointer;border-radius:3px;padding:1px 0;white-space:pre-wrap">{text}</span>'
        )
    legend = (
        "<p style='font-size:0.85em'>Colour: "
        + (
            "entropy (green sure, red unsure)"
            if color_by == "entropy"
            else "probability of the token (green high, red low)"
        )
        + ". Hover a token for its top candidates; click it for every stage.</p>"
    )
    return legend + f'<div class="token-view" style="line-height:1.9">{"".join(spans)}</div>'


def stages_table(step: Step, tokenizer) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: per rank, each stage's candidate and probability (✓ marks the pick)."""
    headers = ["#", *(s.name for s in step.stages)]
    depth = max(len(s.top) for s in step.stages)
    rows = []
    for rank in range(depth):
        row = [str(rank + 1)]
        for stage in step.stages:
            if rank >= len(stage.top):
                row.append("")
                continue
            token, p = stage.top[rank]
            mark = " ✓" if token == step.token else ""
            row.append(f"{token_text(tokenizer, token)!r} {p:.4f}{mark}")
        rows.append(row)
    totals = ["kept"] + [f"{s.support} tokens, H={s.entropy:.2f}" for s in step.stages]
    return headers, [*rows, totals]


def branch_tree_html(branches, tokenizer, current: int) -> str:
    """The branches of a reply as a nested list: where each split off and with which token."""
    children: dict[int | None, list] = {}
    for b in branches:
        children.setdefault(b.parent, []).append(b)

    def item(b) -> str:
        head = (
            "the reply"
            if b.parent is None
            else (f"from token #{b.position} with {token_text(tokenizer, b.token)!r}")
        )
        text = tokenizer.decode(b.tokens, skip_special_tokens=True)
        style = "font-weight:bold" if b.id == current else ""
        kids = "".join(item(c) for c in children.get(b.id, []))
        return (
            f'<li style="{style}">branch {b.id}: {html.escape(head)} — '
            f"<i>{html.escape(text[:160])}</i>" + (f"<ul>{kids}</ul>" if kids else "") + "</li>"
        )

    return "<ul class='branch-tree'>" + "".join(item(b) for b in children.get(None, [])) + "</ul>"


STATUS_COLOURS = {"running": "#2b6cb0", "finished": "#2f855a", "pruned": "#c53030"}


def beam_svg(trace: Trace, tokenizer, max_steps: int = 40) -> str:
    """The beam tree: one column per step, each hypothesis a node with its token and summed
    score, coloured by what happened to it; the answer's path drawn thick."""
    nodes = [n for n in trace.nodes if n.step < max_steps]
    if not nodes:
        return "<p>No beam search to show: pick beam search and inspect a reply.</p>"
    best = {n.id for n in trace.path(trace.best)} if trace.best is not None else set()
    rows: dict[int, int] = {}
    place: dict[int, tuple[int, int]] = {0: (10, 20)}
    for n in nodes[1:]:
        rows[n.step] = rows.get(n.step, 0) + 1
        place[n.id] = (110 + n.step * 120, 20 + (rows[n.step] - 1) * 34)
    width = 110 + (max(rows) + 1) * 120 + 20
    height = 34 * max(rows.values(), default=1) + 30
    parts = []
    for n in nodes[1:]:
        x, y = place[n.id]
        px, py = place[n.parent]
        thick = 3 if n.id in best else 1
        parts.append(
            f'<line x1="{px + 100}" y1="{py}" x2="{x}" y2="{y}" stroke="#888" '
            f'stroke-width="{thick}"/>'
        )
    parts.append('<text x="10" y="24" font-size="12">prompt</text>')
    for n in nodes[1:]:
        x, y = place[n.id]
        colour = STATUS_COLOURS[n.status]
        label = _label(token_text(tokenizer, n.token))
        weight = "bold" if n.id in best else "normal"
        parts.append(
            f'<g class="beam-node {n.status}"><title>{html.escape(n.status)}, step {n.step}, '
            f'score {n.score:.3f}</title><rect x="{x}" y="{y - 13}" width="100" height="26" '
            f'rx="4" fill="white" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{x + 4}" y="{y - 1}" font-size="11" font-weight="{weight}">{label}</text>'
            f'<text x="{x + 4}" y="{y + 10}" font-size="9" fill="{colour}">{n.score:.2f} '
            f"{n.status}</text></g>"
        )
    legend = " · ".join(f'<span style="color:{c}">{s}</span>' for s, c in STATUS_COLOURS.items())
    return (
        f"<p style='font-size:0.85em'>{legend} · thick: the returned answer · numbers: summed "
        f"log-probability</p><div style='overflow:auto;max-height:600px'><svg id='beam-svg' "
        f"xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        + "".join(parts)
        + "</svg></div>"
    )


def heatmap_svg(
    weights: torch.Tensor, rows: Sequence[str], cols: Sequence[str], title: str, cell: int = 14
) -> str:
    """A (Q, K) attention matrix: row i's cells show how much token i attends to each column."""
    Q, K = weights.shape
    left, top = 90, 90
    scale = float(weights.max()) or 1.0
    parts = [f'<text x="4" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>']
    for j, label in enumerate(cols):
        x = left + j * cell + cell // 2
        parts.append(
            f'<text transform="translate({x},{top - 4}) rotate(-60)" font-size="9">'
            f"{_label(label)}</text>"
        )
    for i, label in enumerate(rows):
        y = top + i * cell
        parts.append(
            f'<text x="{left - 4}" y="{y + cell - 3}" font-size="9" text-anchor="end">'
            f"{_label(label)}</text>"
        )
        for j in range(K):
            w = float(weights[i, j])
            if w <= 0:
                continue
            parts.append(
                f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                f'fill="{_heat(w / scale)}"><title>{w:.4f}</title></rect>'
            )
    width, height = left + K * cell + 10, top + Q * cell + 10
    return (
        f"<div style='overflow:auto;max-height:700px'><svg class='heatmap' "
        f"xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        f"<rect x='{left}' y='{top}' width='{K * cell}' height='{Q * cell}' fill='#fafafa'/>"
        + "".join(parts)
        + "</svg></div>"
    )


def context_html(labels: Sequence[str], weights: torch.Tensor, start: int = 0) -> str:
    """The prompt's tokens shaded by the attention one answer token paid them (layer and head
    average). The first token collects attention whatever it says (an "attention sink"), so the
    scale is set by the others."""
    scale = float(weights[1:].max()) if len(weights) > 1 else float(weights.max())
    spans = [
        f'<span title="{float(w):.4f}" style="background:{_heat(float(w) / (scale or 1.0))};'
        f'white-space:pre-wrap">{html.escape(text)}</span>'
        for text, w in zip(labels[start:], weights[start:].tolist(), strict=True)
    ]
    return f'<div class="context-view" style="line-height:1.7">{"".join(spans)}</div>'


def lab_html(columns, tokenizer) -> str:
    """The lab's columns side by side: each strategy's text so far and its figures."""
    cells = []
    for c in columns:
        run = c.run
        state = "done" if c.done else "writing…"
        stats = (
            f"{len(run.tokens)} tokens · {run.tokens_per_second:.1f} tok/s · log-prob "
            f"{run.logprob:.2f} · repetition {c.repetition:.0%} · {state}"
        )
        cells.append(
            f'<div class="lab-column" style="flex:1;min-width:180px;border:1px solid #ccc;'
            f'border-radius:6px;padding:8px"><b>{html.escape(c.name)}</b>'
            f'<div class="lab-stats" style="font-size:0.8em;color:#555">{stats}</div>'
            f'<div style="white-space:pre-wrap">{html.escape(run.text)}</div></div>'
        )
    return f'<div class="lab" style="display:flex;gap:8px;flex-wrap:wrap">{"".join(cells)}</div>'
