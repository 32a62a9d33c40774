"""The Gradio page: streaming chat, decoding controls, prompt templates with a "show prompt" view,
and per-session document upload with cited answers.

Public API (for `gradio_client`): `/new_session` (a session key), `/upload` (files and that key ->
status) and `/chat` (streams the answer text; RAG over the key's documents). Every other event is
private. The page keeps its session key in the browser (`gr.BrowserState`, out of URLs).
"""

from __future__ import annotations

import gradio as gr

from core.generate.settings import DEFAULTS
from ingest import DEFAULT_MODE
from ingest import MODES as RETRIEVAL_MODES
from webapp.chat import DEFAULT_SYSTEM_PROMPT, TEMPLATES, ChatService
from webapp.fill_mask import build_fill_mask_tab
from webapp.handlers import Handlers, mode_changed
from webapp.history import History
from webapp.history_tab import build_history_sidebar
from webapp.inspect import build_inspect_tab
from webapp.sessions import SessionKeys
from webapp.train_tab import build_train_tabs

MODES = [("Greedy", "greedy"), ("Sampling", "sample"), ("Beam search", "beam")]
TEMPLATE_HELP = (
    "**chat**: the model's own chat template with your system prompt · "
    "**zero-shot**: instruction + "
    "your message as input · **few-shot**: instruction, the example pairs, then your message · "
    "**rag**: your documents' best passages as numbered sources + your question."
)
RETRIEVAL_HELP = (
    "How RAG finds sources: **dense** embeddings, **keyword** (BM25), **hybrid** (both), "
    "**hybrid+rerank** (both, then the passage whose best sentence holds the question's words "
    "wins). Open *Why these sources ranked* under an answer to see each source's scores."
)
PRIVATE = {"api_visibility": "private"}
MODEL = {"concurrency_id": "model"}  # every event that runs the model shares the model's slots
CACHE_CLEANUP = (3600, 3600)  # Gradio deletes uploads left in its cache for an hour, hourly
HISTORY = "data/history"  # chats kept per session (`webapp.history`)


def build_demo(
    service: ChatService, keys: SessionKeys | None = None, history: History | None = None
) -> gr.Blocks:
    """The whole page; nothing is loaded until the first request needs it. `keys`: the session
    keys' signer (one per process by default); `history`: where chats are kept (data/history)."""
    h = Handlers(service, keys)
    history = history or History(HISTORY)
    cap = service.limits.max_new_tokens
    with gr.Blocks(title="ScratchGPT", delete_cache=CACHE_CLEANUP) as demo:
        # the key lives in the browser's localStorage (a reload keeps it); sent with each event
        session = gr.BrowserState("", storage_key="scratchgpt-session")
        gr.Markdown(
            "# ScratchGPT\nChat with a transformer written from first principles, running on this "
            "machine. Upload documents to get answers with cited sources (RAG template)."
        )
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Chat",
                    height=520,
                    elem_id="chatbot",
                    sanitize_html=True,
                    buttons=["copy"],
                    feedback_options=None,
                )
                with gr.Row():
                    box = gr.Textbox(
                        placeholder="Ask something…",
                        show_label=False,
                        interactive=False,  # enabled once the page has its session key (`keyed`)
                        scale=5,
                        elem_id="message",
                        max_lines=8,
                    )
                    send = gr.Button(
                        "Send", variant="primary", scale=1, elem_id="send", interactive=False
                    )
                with gr.Row():
                    stop = gr.Button("Stop", elem_id="stop")
                    regen = gr.Button("Regenerate", elem_id="regenerate", interactive=False)
                    clear = gr.Button("Clear", elem_id="clear")
                notice = gr.Markdown(elem_id="notice")
            with gr.Column(scale=2), gr.Tabs():
                with gr.Tab("Decoding", id="decoding"):
                    model = gr.Dropdown(
                        [(label, value) for label, value in service.models.choices()],
                        value="default",
                        label="Model",
                        info="The default, a checkpoint under models/, or a hub model the host "
                        "lists",
                        elem_id="model",
                    )
                    mode = gr.Radio(MODES, value=DEFAULTS.mode, label="Decoding", elem_id="mode")
                    temperature = gr.Slider(
                        0.0,
                        2.0,
                        DEFAULTS.temperature,
                        step=0.05,
                        label="Temperature",
                        info="sampling only; 0 = greedy",
                        interactive=False,
                        elem_id="temperature",
                    )
                    top_k = gr.Slider(
                        0,
                        200,
                        DEFAULTS.top_k,
                        step=1,
                        label="Top-k",
                        info="sampling only; 0 = off",
                        interactive=False,
                        elem_id="top-k",
                    )
                    top_p = gr.Slider(
                        0.05,
                        1.0,
                        DEFAULTS.top_p,
                        step=0.01,
                        label="Top-p (nucleus)",
                        info="sampling only; 1 = off",
                        interactive=False,
                        elem_id="top-p",
                    )
                    num_beams = gr.Slider(
                        1,
                        service.limits.max_beams,
                        DEFAULTS.num_beams,
                        step=1,
                        label="Beam width",
                        info="beam search only",
                        interactive=False,
                        elem_id="beams",
                    )
                    max_new = gr.Slider(
                        1,
                        cap,
                        min(DEFAULTS.max_new_tokens, cap),
                        step=1,
                        label="Max new tokens",
                        info=f"the server allows at most {cap}",
                        elem_id="max-new",
                    )
                    repetition = gr.Slider(
                        1.0,
                        2.0,
                        DEFAULTS.repetition_penalty,
                        step=0.05,
                        label="Repetition penalty",
                        info="1 = off",
                        elem_id="repetition",
                    )
                    no_repeat = gr.Slider(
                        0,
                        10,
                        DEFAULTS.no_repeat_ngram_size,
                        step=1,
                        label="No-repeat n-gram",
                        info="never repeat a run of this many tokens; 0 = off",
                        elem_id="no-repeat",
                    )
                    seed = gr.Number(
                        -1,
                        precision=0,
                        label="Seed",
                        info="sampling only; -1 = random",
                        interactive=False,
                        elem_id="seed",
                    )
                with gr.Tab("Prompt", id="prompt"):
                    template = gr.Radio(
                        list(TEMPLATES),
                        value="chat",
                        label="Template",
                        info=TEMPLATE_HELP,
                        elem_id="template",
                    )
                    system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2)
                    instruction = gr.Textbox(
                        label="Instruction (zero-shot and few-shot)",
                        lines=2,
                        interactive=False,
                        elem_id="instruction",
                    )
                    examples = gr.Dataframe(
                        value=[["", ""]],
                        headers=["input", "output"],
                        column_count=2,
                        type="array",
                        label="Few-shot examples",
                        interactive=False,
                        elem_id="examples",
                    )
                    show = gr.Button("Show prompt", elem_id="show-prompt", interactive=False)
                    prompt_info = gr.Markdown(elem_id="prompt-info")
                    prompt_view = gr.Code(
                        label="Exact text sent to the model",
                        lines=8,
                        elem_id="prompt-view",
                        interactive=False,
                    )
                with gr.Tab("Documents", id="documents"):
                    files = gr.File(
                        file_count="multiple",
                        interactive=False,
                        file_types=[".pdf", ".txt", ".md"],
                        label="Upload PDF, TXT or MD",
                        elem_id="upload",
                    )
                    upload_status = gr.Markdown(elem_id="upload-status")
                    docs = gr.Dataframe(
                        headers=["document", "pages", "chunks", "owner"],
                        interactive=False,
                        label="Your documents",
                        elem_id="documents",
                        value=[],
                    )
                    with gr.Row():
                        doc_pick = gr.Dropdown([], label="Document", scale=3, elem_id="doc-pick")
                        delete = gr.Button("Delete", scale=1, elem_id="delete", interactive=False)
                    retrieval = gr.Radio(
                        list(RETRIEVAL_MODES),
                        value=DEFAULT_MODE,
                        label="Retrieval (RAG template)",
                        info=RETRIEVAL_HELP,
                        elem_id="retrieval",
                    )
                build_train_tabs(demo, service, model)
                build_fill_mask_tab()  # encoders load on first use

        form = {
            "message": box,
            "history": chatbot,
            "model": model,
            "mode": mode,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "num_beams": num_beams,
            "max_new_tokens": max_new,
            "repetition_penalty": repetition,
            "no_repeat_ngram_size": no_repeat,
            "seed": seed,
            "template": template,
            "system_prompt": system,
            "instruction": instruction,
            "examples": examples,
            "retrieval": retrieval,
            "session": session,
        }
        h.fields = {component: name for name, component in form.items()}
        inputs = set(form.values())  # Gradio then passes one {component: value} dict
        build_inspect_tab(h, form)  # "Inside the model": under the chat, full width
        chats = build_history_sidebar(h, history, session, chatbot, notice, MODEL)
        knobs = [temperature, top_k, top_p, num_beams, seed, repetition]
        mode.change(mode_changed, mode, knobs, queue=False, **PRIVATE)
        template.change(
            h.template_changed,
            template,
            [instruction, examples, max_new, repetition, no_repeat],
            queue=False,
            **PRIVATE,
        )

        outputs = [box, chatbot, notice]
        answering = []
        for trigger, answer in (
            (send.click, h.respond),
            (box.submit, h.respond),
            (regen.click, h.regenerate),
        ):
            # a RAG question waits for its uploads here, outside the model's slots
            waiting = trigger(
                h.await_indexing,
                [template, session],
                notice,
                concurrency_limit=None,
                show_progress="hidden",
                **PRIVATE,
            )
            answered = waiting.success(answer, inputs, outputs, **PRIVATE, **MODEL)
            answered.success(chats.record, chats.inputs, chats.outputs, queue=False, **PRIVATE)
            answering += [waiting, answered]
        stop.click(None, None, None, cancels=answering, queue=False, **PRIVATE)
        clear.click(lambda: ([], "", ""), None, [chatbot, notice, box], queue=False, **PRIVATE)
        clear.click(lambda: None, None, chats.current, queue=False, **PRIVATE)  # a new chat next
        show.click(h.show_prompt, inputs, [prompt_view, prompt_info], **PRIVATE)

        files.upload(
            h.upload,
            [files, session],
            [upload_status, docs, doc_pick, files],
            api_name="upload",
            concurrency_id="ingest",
            concurrency_limit=1,
        )
        delete.click(h.delete, [doc_pick, session], [upload_status, docs, doc_pick], **PRIVATE)
        # not queued: the key comes back in this request's own response, not on the event stream
        # (which anyone holding the page's Gradio session hash could read)
        loaded = demo.load(
            h.on_load, session, [session, docs, doc_pick, model], queue=False, **PRIVATE
        )
        loaded.then(chats.refresh, chats.inputs, chats.outputs[0], queue=False, **PRIVATE)
        keyed = [box, send, regen, show, files, delete]  # what sends the key: usable once it is set
        loaded.then(
            lambda: [gr.update(interactive=True)] * len(keyed), None, keyed, queue=False, **PRIVATE
        )
        gr.api(h.new_session, api_name="new_session", queue=False)
        gr.api(h.chat_api, api_name="chat", **MODEL)
    return demo
