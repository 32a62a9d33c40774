"""The "Train" and "Fine-tune" tabs: give text (or JSONL), start a background training job on the
server (`webapp.jobs`), watch its loss curve, samples, tokens/s and ETA, stop and resume it, and
then pick the model in the chat's selector. A page reload reattaches: the browser keeps an owner
key (localStorage) that the job is filed under, and a timer polls the job's state on disk."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from webapp.jobs import JobRunner, runner_from_env
from webapp.train_handlers import EMPTY_CURVE, SHAPE_FIELDS, TrainUI
from webapp.train_inputs import PRESETS, parameters, pretrain_config

POLL_S = 2.0
PRIVATE = {"api_visibility": "private"}
SOURCES = ["Paste", "Upload", "Shipped corpus"]
MINT_KEY = """(key) => key || Array.from(crypto.getRandomValues(new Uint8Array(24)),
    (b) => b.toString(16).padStart(2, "0")).join("")"""


@functools.cache
def preset_sizes() -> dict[str, int]:
    return {name: parameters(pretrain_config(settings)) for name, settings in PRESETS.items()}


def preset_info(runner: JobRunner) -> str:
    """Each preset's size, and the time its default steps take at this server's measured pace."""
    lines = []
    for name, settings in PRESETS.items():
        tokens = settings["max_steps"] * settings["batch_size"] * settings["block_size"]
        rate = runner.speed(name)
        when = f"~{tokens / rate / 60:.1f} min on this server" if rate else "timing it here…"
        steps, n = settings["max_steps"], preset_sizes()[name]
        lines.append(f"**{name}**: {n / 1e6:.2f}M parameters, {steps} steps, {when}")
    return "  \n".join(lines)


def build_train_tabs(demo: gr.Blocks, service: Any, chat_model: gr.Dropdown) -> None:
    """The two tabs, inside the caller's `gr.Tabs()`; `chat_model` is the chat's model selector,
    refreshed as soon as a job's first checkpoint appears."""
    runner = runner_from_env(service.models.models_dir)
    ui = TrainUI(runner, service.models)
    token = gr.BrowserState("", storage_key="scratchgpt-train-owner")
    known = gr.State([])
    with gr.Tab("Train", id="train") as train_tab:
        gr.Markdown(
            "Pre-train a small transformer on your text, on this server. One job runs at a time; "
            "it keeps going if you close or reload the page."
        )
        source = gr.Radio(SOURCES, value="Paste", label="Text from", elem_id="train-source")
        pasted = gr.Textbox(label="Text", lines=6, max_lines=12, elem_id="train-text")
        upload = gr.File(file_types=[".txt", ".md"], label="Text file", elem_id="train-upload")
        corpus = gr.Dropdown(list(ui.corpora), label="Shipped corpus", elem_id="train-corpus")
        preset = gr.Radio([*PRESETS, "custom"], value="tiny", label="Model", elem_id="train-preset")
        presets = gr.Markdown(preset_info(runner), elem_id="train-presets")
        with gr.Accordion("Custom model shape (preset: custom)", open=False):
            tiny = PRESETS["tiny"]
            shape = [
                gr.Number(tiny[name], precision=0, label=name, elem_id=f"train-{name}")
                for name in SHAPE_FIELDS
            ]
        with gr.Row():
            steps = gr.Number(tiny["max_steps"], precision=0, label="Steps", elem_id="train-steps")
            every = gr.Number(50, precision=0, label="Sample every N steps", elem_id="train-every")
        with gr.Row():
            temperature = gr.Slider(
                0.0, 2.0, 0.8, step=0.05, label="Sample temperature", elem_id="train-temperature"
            )
            prompt = gr.Textbox("The", label="Sample prompt", elem_id="train-prompt")
        name = gr.Textbox(label="Model name (blank: automatic)", elem_id="train-name")
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
            stop = gr.Button("Stop", elem_id="train-stop")
            resume = gr.Button("Resume", elem_id="train-resume")
            sample = gr.Button("Generate sample", elem_id="train-sample")
        status = gr.Markdown(elem_id="train-status")
        plot = gr.LinePlot(
            EMPTY_CURVE, x="step", y="loss", color="split", label="Loss", elem_id="train-plot"
        )
        samples = gr.Markdown(elem_id="train-samples")
    with gr.Tab("Fine-tune", id="finetune"):
        gr.Markdown(
            "Fine-tune the default model or one you trained on prompt/completion pairs. Upload "
            "JSONL ({prompt, completion}, Alpaca {instruction, input, output} or "
            "{messages: [...]}) or fill in the table."
        )
        base = gr.Dropdown(service.models.choices(), value="default", label="Base model")
        jsonl_file = gr.File(file_types=[".jsonl"], label="JSONL file", elem_id="ft-upload")
        rows = gr.Dataframe(
            headers=["prompt", "completion"],
            column_count=2,
            type="array",
            label="Or rows",
            interactive=True,
            elem_id="ft-rows",
        )
        with gr.Row():
            held = gr.Number(3, precision=0, label="Held-out rows (compared before/after)")
            blocks = gr.Number(0, precision=0, label="Train only the last N blocks (0 = all)")
        with gr.Row():
            ft_steps = gr.Number(30, precision=0, label="Steps")
            lr = gr.Number(1e-4, label="Learning rate")
            ft_name = gr.Textbox(label="Model name (blank: automatic)", elem_id="ft-name")
        with gr.Row():
            ft_start = gr.Button("Start fine-tuning", variant="primary", elem_id="ft-start")
            ft_stop = gr.Button("Stop", elem_id="ft-stop")
            ft_resume = gr.Button("Resume", elem_id="ft-resume")
        ft_status = gr.Markdown(elem_id="ft-status")
        ft_plot = gr.LinePlot(EMPTY_CURVE, x="step", y="loss", color="split", label="Loss")
        compare = gr.Dataframe(
            headers=["prompt", "expected", "before", "after"],
            label="Held-out rows: the base's answer and the fine-tuned one",
            interactive=False,
            wrap=True,
            elem_id="ft-compare",
        )
    pre = [source, pasted, upload, corpus, preset, *shape, steps, every, temperature, prompt, name]
    start.click(ui.start_pretrain, [token, *pre], status, concurrency_limit=1, **PRIVATE)
    ft_values = [base, jsonl_file, rows, held, blocks, ft_steps, lr, ft_name]
    ft_start.click(
        ui.start_finetune, [token, *ft_values], ft_status, concurrency_limit=1, **PRIVATE
    )
    for button, out in ((stop, status), (ft_stop, ft_status)):
        button.click(ui.stop, token, out, queue=False, **PRIVATE)
    for button, out in ((resume, status), (ft_resume, ft_status)):
        button.click(ui.resume, token, out, concurrency_limit=1, **PRIVATE)
    sample.click(ui.sample_now, [token, temperature], samples, **PRIVATE)
    views = [known, chat_model, base, status, plot, samples, ft_status, ft_plot, compare]
    gr.Timer(POLL_S).tick(ui.poll, [token, known], views, queue=False, **PRIVATE)
    # the owner key is minted in the browser, once: no server round trip can race a click
    demo.load(None, token, token, js=MINT_KEY, queue=False, **PRIVATE)
    # timing the presets costs a minute of CPU: only once somebody opens the tab
    train_tab.select(lambda: runner.calibrate_soon(PRESETS), None, None, queue=False, **PRIVATE)
    gr.Timer(POLL_S * 5).tick(lambda: preset_info(runner), None, presets, queue=False, **PRIVATE)
