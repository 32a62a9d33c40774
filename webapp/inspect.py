"""The "Inside the model" tab: the last reply token by token (probabilities before and after each
processor; click a token, pick another candidate and continue from there), the beam tree of a
beam reply, attention maps of prompt + reply, and a decoding lab running several strategies side
by side. The work is in `webapp.inspect_runs`, the drawing in `webapp.inspect_views`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr

from core.attention_maps import WINDOW, AttentionWindowError, attention_maps, attention_to_context
from webapp.handlers import Handlers, shown_to_user
from webapp.inspect_runs import (
    MAX_COLUMNS,
    NOTES_PRESET,
    STRATEGIES,
    Inspection,
    add_branch,
    inspect_reply,
    lab,
    last_reply,
)
from webapp.inspect_views import (
    beam_svg,
    branch_tree_html,
    context_html,
    heatmap_svg,
    lab_html,
    stages_table,
    token_text,
    tokens_html,
)

PRIVATE = {"api_visibility": "private"}
MODEL = {"concurrency_id": "model"}  # shares the model's slots with the chat, one slot per event
# The lab's long runs have a slot of their own: its forward passes take turns with the chats'
# (`Decoder.turns`), so a chat meanwhile streams at about half speed instead of queueing.
LAB = {"concurrency_id": "lab", "concurrency_limit": 1}
# clicking a token sends its position (`data-i`) with the HTML component's click event
CLICK_JS = (
    "element.addEventListener('click', (e) => { const t = e.target.closest('[data-i]'); "
    "if (t) trigger('click', {position: Number(t.dataset.i)}); });"
)
NOTHING_YET = "Inspect a reply first: press “Inspect the last reply” under Token view."


def _need(found: Inspection | None) -> Inspection:
    if found is None:
        raise gr.Error(NOTHING_YET)
    return found


class InspectUI:
    """The tab's event functions, bound to the chat's handlers and form (sessions, requests)."""

    def __init__(self, h: Handlers, form: dict[str, Any]) -> None:
        self.h, self.form = h, form
        self.lab_inputs: dict[str, Any] = {}  # set by the layout: lab field -> component

    def _llm(self, found: Inspection):
        with shown_to_user():
            llm, _ = self.h.service.models.for_template(found.model, found.template)
        return llm

    def look(self, data: dict[Any, Any]) -> tuple[Any, ...]:
        """Inspect the chat's last reply: tokens, the first token's stages, branches, beam tree."""
        key = self.h.session(data.get(self.form["session"]))
        chat = self.h.last_turn(self.h.request(data, message=""))
        with shown_to_user():
            reply = last_reply(data.get(self.form["history"]) or [])
            found = inspect_reply(self.h.service, chat, reply, key)
        llm = self._llm(found)
        beam = beam_svg(found.beam, llm.tokenizer) if found.beam else "<p>Not a beam reply.</p>"
        c = llm.config
        return (
            found,
            *self._branch_view(found, 0, 0, data.get(self.lab_inputs["color_by"])),
            beam,
            gr.update(choices=["average", *map(str, range(c.n_layer))], value="average"),
            gr.update(choices=["average", *map(str, range(c.n_head))], value="average"),
        )

    def _branch_view(
        self, found: Inspection, branch_id: int, position: int, color_by: str
    ) -> tuple[Any, ...]:
        tok = self._llm(found).tokenizer
        steps = found.branches[branch_id].trace.steps
        choices = [(f"branch {b.id}", b.id) for b in found.branches]
        return (
            tokens_html(steps, tok, color_by),
            gr.update(choices=choices, value=branch_id),
            branch_tree_html(found.branches, tok, branch_id),
            *self._position_view(found, branch_id, position),
        )

    def _position_view(self, found: Inspection, branch_id: int, position: int) -> tuple[Any, ...]:
        tok = self._llm(found).tokenizer
        steps = found.branches[branch_id].trace.steps
        position = min(max(position, 0), len(steps) - 1)
        step = steps[position]
        headers, rows = stages_table(step, tok)
        others = [(t, p) for t, p in step.stages[0].top if t != step.token]
        candidates = [(f"{token_text(tok, t)!r} ({p:.3f})", t) for t, p in others]
        return (
            gr.update(value=rows, headers=headers),
            gr.update(value=position, maximum=max(len(steps) - 1, 1)),
            gr.update(choices=candidates, value=candidates[0][1] if candidates else None),
        )

    def recolour(self, found: Inspection | None, branch_id: int, color_by: str) -> str:
        if found is None:
            return ""
        steps = found.branches[int(branch_id)].trace.steps
        return tokens_html(steps, self._llm(found).tokenizer, color_by)

    def click(self, found: Inspection | None, branch_id: int, evt: gr.EventData) -> tuple:
        position = int(evt._data.get("position", 0)) if isinstance(evt._data, dict) else 0
        return self._position_view(_need(found), int(branch_id), position)

    def pick(self, found: Inspection | None, branch_id: int, position: float) -> tuple:
        return self._position_view(_need(found), int(branch_id), int(position))

    def show_branch(self, found: Inspection | None, branch_id: int, color_by: str) -> tuple:
        return self._branch_view(_need(found), int(branch_id), 0, color_by)

    def branch(
        self,
        found: Inspection | None,
        branch_id: int,
        position: float,
        token: int | None,
        color_by: str,
    ) -> tuple[Any, ...]:
        """Continue the shown branch from the picked token with the picked candidate."""
        found = _need(found)
        if token is None:
            raise gr.Error("Pick a candidate token to continue with.")
        with shown_to_user():
            new = add_branch(self._llm(found), found, int(branch_id), int(position), int(token))
        return (found, *self._branch_view(found, new.id, int(position), color_by))

    def attention(
        self,
        found: Inspection | None,
        branch_id: int,
        layer: str,
        head: str,
        window: float,
        position: float,
    ) -> tuple[str, str]:
        """Heatmap of the window ending at the picked answer token, and that token's attention
        over the whole prompt (layer and head average): the sources it drew on."""
        found = _need(found)
        llm = self._llm(found)
        ids = found.ids(int(branch_id))
        at = len(found.prompt_ids) + int(position)
        try:
            maps = attention_maps(llm.model, ids, end=at + 1, window=int(window))
            row = attention_to_context(llm.model, ids, [at])[0]
        except AttentionWindowError as err:
            raise gr.Error(str(err)) from err
        w = maps.weights  # (L, H, Q, K)
        w = w.mean(0) if layer == "average" else w[int(layer)]
        w = w.mean(0) if head == "average" else w[int(head)]
        labels = [token_text(llm.tokenizer, t) for t in ids]
        shown = labels[maps.keys.start : maps.keys.stop]
        title = (
            f"Layer {layer}, head {head}: each row's attention over the columns "
            f"(tokens {maps.keys.start}–{maps.keys.stop - 1} of {len(ids)})"
        )
        n_prompt = len(found.prompt_ids)
        return heatmap_svg(w, shown, shown, title), context_html(labels[:n_prompt], row[:n_prompt])

    def run_lab(self, data: dict[Any, Any]):
        """Stream every strategy's column at once (round robin, in the lab's own slot)."""
        field = {name: data.get(c) for name, c in self.lab_inputs.items()}
        prompt = str(field["prompt"] or "").strip()
        if not prompt:
            raise gr.Error("Type a prompt for the lab first.")
        service = self.h.service
        with shown_to_user():
            llm, _ = service.models.for_template(data.get(self.form["model"]) or "default", "chat")
            base = service.settings(self.h.request(data, message=prompt, template="chat"))
            budget = max(1, min(int(field["max_new"] or 1), service.limits.max_new_tokens))
            base = replace(base, seed=int(field["seed"] or 0), max_new_tokens=budget)
            ids = llm.fit_prompt([{"role": "user", "content": prompt}], budget).ids
            for columns in lab(llm, ids, field["names"] or [], base):
                yield lab_html(columns, llm.tokenizer)


def build_inspect_tab(h: Handlers, form: dict[str, Any]) -> None:
    """The tab; `form` (field name -> component) is the chat's, whose last reply it inspects."""
    ui = InspectUI(h, form)
    cap = h.service.limits.max_new_tokens
    found = gr.State(None)
    with gr.Tab("Inside the model", id="inside"), gr.Tabs():
        with gr.Tab("Token view", id="inside-tokens"):
            with gr.Row():
                look = gr.Button(
                    "Inspect the last reply", variant="primary", elem_id="inspect-last"
                )
                color_by = gr.Radio(
                    ["probability", "entropy"], value="probability", label="Colour by"
                )
            tokens = gr.HTML(elem_id="token-view", js_on_load=CLICK_JS)
            with gr.Row():
                position = gr.Slider(0, 1, 0, step=1, label="Token #", elem_id="token-pos")
                branch_pick = gr.Dropdown([], label="Branch shown", elem_id="branch-pick")
            stages = gr.Dataframe(
                headers=["#"],
                interactive=False,
                label="Top candidates at each stage: the model, then after each processor",
                elem_id="token-stages",
            )
            with gr.Row():
                candidate = gr.Dropdown([], label="Another candidate", elem_id="branch-candidate")
                go = gr.Button("Continue from this token with it", elem_id="branch-go")
            tree = gr.HTML(elem_id="branch-tree")
        with gr.Tab("Beam tree", id="inside-beam"):
            beam = gr.HTML("<p>Inspect a beam-search reply to see its tree.</p>", elem_id="beam")
        with gr.Tab("Attention", id="inside-attention"):
            with gr.Row():
                layer = gr.Dropdown(["average"], value="average", label="Layer", elem_id="layer")
                head = gr.Dropdown(["average"], value="average", label="Head", elem_id="head")
                window = gr.Slider(4, WINDOW, 32, step=1, label="Window (tokens)")
                draw = gr.Button("Draw for the picked token", elem_id="attn-draw")
            heatmap = gr.HTML(elem_id="attn-heatmap")
            gr.Markdown(
                "**The prompt, shaded by the picked answer token's attention** (all layers and "
                "heads; in a RAG prompt, the source passages it drew on)."
            )
            context = gr.HTML(elem_id="attn-context")
        with gr.Tab("Decoding lab", id="inside-lab"):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="lab-prompt")
            names = gr.CheckboxGroup(
                list(STRATEGIES),
                value=NOTES_PRESET[:3],
                label=f"Strategies (up to {MAX_COLUMNS}; the chat's repetition settings apply)",
                elem_id="lab-strategies",
            )
            with gr.Row():
                preset = gr.Button("The notes' examples", elem_id="lab-preset")
                seed = gr.Number(0, precision=0, label="Seed (sampling)", elem_id="lab-seed")
                max_new = gr.Slider(
                    1, cap, min(48, cap), step=1, label="Max new tokens", elem_id="lab-max-new"
                )
                run = gr.Button("Run side by side", variant="primary", elem_id="lab-run")
            columns = gr.HTML(elem_id="lab-columns")

    ui.lab_inputs = dict(prompt=prompt, names=names, seed=seed, max_new=max_new, color_by=color_by)
    inputs = {*form.values(), *ui.lab_inputs.values()}
    view = [tokens, branch_pick, tree, stages, position, candidate]
    look.click(ui.look, inputs, [found, *view, beam, layer, head], **PRIVATE, **MODEL)
    color_by.change(ui.recolour, [found, branch_pick, color_by], tokens, **PRIVATE)
    tokens.click(ui.click, [found, branch_pick], [stages, position, candidate], **PRIVATE)
    position.release(
        ui.pick, [found, branch_pick, position], [stages, position, candidate], **PRIVATE
    )
    branch_pick.input(ui.show_branch, [found, branch_pick, color_by], view, **PRIVATE)
    go.click(
        ui.branch,
        [found, branch_pick, position, candidate, color_by],
        [found, *view],
        **PRIVATE,
        **MODEL,
    )
    draw.click(
        ui.attention,
        [found, branch_pick, layer, head, window, position],
        [heatmap, context],
        **PRIVATE,
        **MODEL,
    )
    preset.click(lambda: NOTES_PRESET, None, names, queue=False, **PRIVATE)
    run.click(ui.run_lab, inputs, columns, **PRIVATE, **LAB)
