"""Training jobs for the web app: one at a time per server, each `python -m core.train` in its
own niced, thread-capped subprocess, so chats stay responsive while it runs.

A job's state lives on disk under the jobs folder (`current.json` names the latest job; each job
has its own folder with its data, settings, live events, logs and exit code), so a browser reload
or a server restart reattaches to it. Stop touches the run's stop file (the trainer saves a
checkpoint and exits); Resume is the CLI's exact `--resume`. The server caps the run time, the
text size, the JSONL rows and the model size. No Gradio here: the UI is `webapp.train_tab`.

Settings (environment variables; `runner_from_env`, `train_inputs.JobLimits.from_env`):
  SCRATCHGPT_JOBS_DIR          where job state is kept (models/.jobs)
  SCRATCHGPT_TRAIN_MINUTES     longest run of a job, per start or resume (30)
  SCRATCHGPT_TRAIN_MAX_MB      largest training text or JSONL (20)
  SCRATCHGPT_TRAIN_MAX_ROWS    most fine-tuning rows (20000)
  SCRATCHGPT_TRAIN_MAX_PARAMS  largest model to train, in parameters (200000000)
  SCRATCHGPT_TRAIN_THREADS     torch threads of a job (1: leaves the other core to chats)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.checkpoint import is_checkpoint_dir
from webapp.train_inputs import JobError, JobLimits

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,63}$")
GRACE_S = 120  # past the time cap, a job that ignores its stop file is killed
ACTIVE = ("starting", "running", "stopping")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def yield_cpu(nice: int) -> None:
    """In a job's child, before it runs: the CPU goes to the server first. Linux's autogroups
    share the CPU equally between sessions whatever their tasks' nice values, so a niced job in
    its own session still took half of it (a chat beside one fell from ~50 to 0.7 tok/s, its
    OpenMP threads waiting on the one the job displaced); the session's nice and SCHED_IDLE
    leave the job what the server does not use."""
    os.nice(nice)
    with contextlib.suppress(OSError):  # no autogroups here: the process nice is enough
        Path("/proc/self/autogroup").write_text(str(nice))
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


@dataclass
class Job:
    """One training job as stored in its folder's job.json."""

    id: str
    owner: str  # a hash of the browser's owner token
    mode: str  # pretrain | finetune
    name: str  # the model's folder name under models/
    out: str
    folder: str
    status: str = "starting"  # starting running stopping done stopped failed killed
    pid: int | None = None
    started: float = 0.0
    deadline: float = 0.0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # the UI's own settings (samples, base)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def path(self, name: str) -> Path:
        return Path(self.folder) / name

    def events(self) -> list[dict[str, Any]]:
        """Every step's and evaluation's record so far (the trainer appends them live)."""
        try:
            lines = self.path("events.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
        return out

    def checkpoint_step(self) -> int | None:
        """The step of the last checkpoint written, None before the first."""
        try:
            trainer = json.loads(
                (Path(self.out) / "training_state" / "trainer.json").read_text(encoding="utf-8")
            )
        except (OSError, json.JSONDecodeError):
            return None
        return int(trainer["step"])


def owner_hash(token: str) -> str:
    if not token:
        raise JobError("This page has no owner key yet; wait a second and try again.")
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"core.train" in cmdline and stat.split(") ")[-1][:1] != "Z"


class JobRunner:
    """Starts, watches, stops and resumes the server's one training job."""

    def __init__(
        self, models_dir: str | Path, jobs_dir: str | Path, limits: JobLimits | None = None
    ) -> None:
        self.models_dir, self.jobs_dir = Path(models_dir), Path(jobs_dir)
        self.limits = limits or JobLimits()
        self._lock = threading.RLock()  # current() may run inside start() and the watcher
        self._watched: set[int] = set()  # pids whose exit a thread of this server records
        self._calibrating = False

    # -- state
    def _save(self, job: Job) -> None:
        """job.json, then current.json, each replaced in one rename."""
        for path, payload in (
            (job.path("job.json"), dataclasses.asdict(job)),
            (self.jobs_dir / "current.json", {"id": job.id}),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(payload), encoding="utf-8")
            os.replace(tmp, path)

    def current(self) -> Job | None:
        """The latest job, its status brought up to date (a dead process is a finished job)."""
        try:
            pointer = json.loads((self.jobs_dir / "current.json").read_text(encoding="utf-8"))
            stored = json.loads(
                (self.jobs_dir / pointer["id"] / "job.json").read_text(encoding="utf-8")
            )
        except (OSError, json.JSONDecodeError, KeyError):
            return None
        job = Job(**stored)
        with self._lock:
            if job.active and job.pid not in self._watched and not _alive(job.pid):
                self._finish(job)
        return job

    def _finish(self, job: Job) -> None:
        """Record how an exited job ended, from its exit code and metrics."""
        try:
            code = int(job.path("exit_code").read_text())
        except (OSError, ValueError):
            code = None  # it ended while no server watched it
        try:
            metrics = json.loads((Path(job.out) / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            metrics = {}
        stopped, step = metrics.get("stopped"), job.checkpoint_step()
        if job.mode == "pretrain" and job.extra.get("preset") and metrics.get("tokens_per_s"):
            self._record_speed(job.extra["preset"], metrics["tokens_per_s"])
        if code == 0 and stopped == "max_steps":
            job.status, job.message = "done", f"finished at step {step}"
        elif code == 0:
            job.status = "stopped"
            job.message = f"stopped at step {step} ({stopped}); Resume continues it exactly"
        else:
            errors = job.path("stderr.log").read_text(encoding="utf-8", errors="replace")
            said = [line for line in errors.splitlines() if line.startswith("error: ")]
            job.status = "failed" if said else "killed"
            why = said[-1][7:] if said else f"the process ended (exit code {code})"
            if code is None:
                why = "the process ended while the server was down"
            kept = f"; the checkpoint of step {step} is kept" if step else ""
            job.message = why + kept
        self._save(job)

    # -- starting
    def refuse_if_busy(self, owner: str) -> None:
        job = self.current()
        if job is None or not job.active:
            return
        if job.owner == owner:
            raise JobError("Your training job is still running; stop it before starting another.")
        left = max(0, round((job.deadline - time.time()) / 60))
        raise JobError(
            f"Another user's training job ({job.mode} of {job.name!r}) is running; this server "
            f"trains one job at a time. Try again when it ends (at most {left} min)."
        )

    def new_name(self, name: str) -> Path:
        """The output folder for a new model named `name`; never another model's folder."""
        name = name.strip()
        if not NAME.match(name):
            raise JobError(
                f"{name!r} is not a usable model name: use letters, digits, '.', '-' and '_' "
                "(up to 64), starting with a letter or digit."
            )
        out = self.models_dir / name
        if out.exists():
            raise JobError(f"A model named {name!r} exists already; choose another name.")
        return out

    def start(
        self,
        owner: str,
        mode: str,
        name: str,
        settings: dict[str, Any],
        files: dict[str, str],
        extra: dict[str, Any] | None = None,
    ) -> Job:
        """Write the job's data files and settings, then start the trainer on them.

        `files` maps a file name in the job folder to its text; settings name them by that
        name (`data`, `val`), and get the job's out, events and stop file added here."""
        with self._lock:
            self.refuse_if_busy(owner)
            out = self.new_name(name)
            job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            folder = self.jobs_dir / job_id
            folder.mkdir(parents=True)
            for file_name, text in files.items():
                (folder / file_name).write_text(text, encoding="utf-8")
            job = Job(job_id, owner, mode, out.name, str(out), str(folder), extra=extra or {})
            config = {
                **settings,
                "mode": mode,
                "out": str(out),
                "data": [str(folder / f) for f in settings["data"]],
                "events": str(job.path("events.jsonl")),
                "stop_file": str(job.path("STOP")),
                "max_minutes": self.limits.max_minutes,
            }
            if settings.get("val"):
                config["val"] = str(folder / settings["val"])
            from core.train.config import TrainConfig, TrainError

            try:
                TrainConfig.from_dict(config)
            except TrainError as err:
                raise JobError(str(err)) from err
            job.path("config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
            self.models_dir.mkdir(parents=True, exist_ok=True)
            self._launch(job, ["--config", job.path("config.json")])
            return job

    def _launch(self, job: Job, args: list[Any]) -> None:
        command = [sys.executable, "-m", "core.train", job.mode, "--no-progress", *map(str, args)]
        job.path("STOP").unlink(missing_ok=True)
        job.path("exit_code").unlink(missing_ok=True)
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=job.path("stdout.log").open("a"),
            stderr=job.path("stderr.log").open("w"),
            preexec_fn=lambda: yield_cpu(self.limits.nice),
            start_new_session=True,  # a Ctrl-C of the server does not kill it mid-save
        )
        job.pid, job.status, job.message = proc.pid, "running", ""
        job.started = time.time()
        job.deadline = job.started + 60 * self.limits.max_minutes
        self._save(job)
        self._watched.add(proc.pid)
        threading.Thread(target=self._watch, args=(job, proc), daemon=True).start()

    def _env(self) -> dict[str, str]:
        """The server's environment with the job's thread cap."""
        threads = dict.fromkeys(THREAD_VARIABLES, str(self.limits.threads))
        return {**os.environ, **threads, "TOKENIZERS_PARALLELISM": "false"}

    def _watch(self, job: Job, proc: subprocess.Popen) -> None:
        """Reap the process, record its exit code; kill it when it outlives the cap by GRACE_S."""
        while True:
            try:
                code = proc.wait(timeout=2)
                break
            except subprocess.TimeoutExpired:
                if time.time() > job.deadline + GRACE_S:
                    proc.kill()
        with self._lock:
            job.path("exit_code").write_text(str(code))
            self._watched.discard(proc.pid)
            latest = self.current()
            if latest is not None and latest.id == job.id and latest.active:
                self._finish(latest)

    # -- stopping and resuming
    def _owned(self, owner: str) -> Job:
        job = self.current()
        if job is None:
            raise JobError("There is no training job yet; start one first.")
        if job.owner != owner:
            raise JobError("The latest training job is another user's; you cannot change it.")
        return job

    def stop(self, owner: str) -> Job:
        """Ask the trainer to save a checkpoint and exit (at the end of its current step)."""
        job = self._owned(owner)
        if not job.active:
            raise JobError(f"The job is not running ({job.status}); nothing to stop.")
        job.path("STOP").touch()
        job.status, job.message = "stopping", "saving a checkpoint, then stopping"
        self._save(job)
        return job

    def resume(self, owner: str) -> Job:
        """Continue a stopped or killed job from its last checkpoint, exactly (`--resume`)."""
        with self._lock:
            self.refuse_if_busy(owner)
            job = self._owned(owner)
            if job.status == "done":
                raise JobError("The job finished all its steps; start a new one to train more.")
            step = job.checkpoint_step()
            if step is None:
                raise JobError("The job saved no checkpoint before it ended; start it again.")
            # the live log keeps only what the checkpoint holds: later steps are redone
            kept = [e for e in job.events() if e.get("step", 0) <= step]
            job.path("events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
            job.extra["launch_step"] = step  # the ETA counts this run's pace only
            minutes = ["--max-minutes", self.limits.max_minutes]
            self._launch(job, ["--resume", job.out, *minutes])
            return job

    # -- the pace of this machine
    def speed(self, preset: str) -> float | None:
        """Tokens/s of a preset's model here: its last job's pace, else the calibration's."""
        try:
            return json.loads((self.jobs_dir / "speeds.json").read_text())[preset]
        except (OSError, json.JSONDecodeError, KeyError):
            return None

    def _record_speed(self, preset: str, tokens_per_s: float) -> None:
        path = self.jobs_dir / "speeds.json"
        try:
            speeds = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            speeds = {}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**speeds, preset: tokens_per_s}))
        os.replace(tmp, path)

    def calibrate_soon(self, presets: dict[str, dict[str, Any]]) -> None:
        """`calibrate` in a thread, once per server."""
        with self._lock:
            if not self._calibrating:
                self._calibrating = True
                threading.Thread(target=self.calibrate, args=(presets,), daemon=True).start()

    def calibrate(self, presets: dict[str, dict[str, Any]]) -> None:
        """Time a few steps of each preset not yet measured, as a job runs (niced, thread-capped)
        on generated text; never while a job trains, which would skew both."""
        rng = random.Random(0)
        words = ["".join(rng.choices("etaoinshrdlu", k=rng.randint(2, 8))) for _ in range(2000)]
        text = " ".join(rng.choices(words, k=40_000))
        for preset, settings in presets.items():
            while (job := self.current()) is not None and job.active:
                time.sleep(15)
            if self.speed(preset) is not None:
                continue
            folder = self.jobs_dir / "calibration" / preset
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            (folder / "corpus.txt").write_text(text, encoding="utf-8")
            config = {**settings, "data": [str(folder / "corpus.txt")], "out": str(folder / "m")}
            config.update(max_steps=6, warmup_steps=1, eval_every=100, eval_steps=1, save_every=100)
            (folder / "config.json").write_text(json.dumps(config))
            command = [sys.executable, "-m", "core.train", "pretrain", "--no-progress"]
            done = subprocess.run(
                [*command, "--config", str(folder / "config.json")],
                cwd=ROOT,
                env=self._env(),
                capture_output=True,
                preexec_fn=lambda: yield_cpu(self.limits.nice),
            )
            metrics = folder / "m" / "metrics.json"
            if done.returncode == 0 and metrics.exists():
                self._record_speed(preset, json.loads(metrics.read_text())["tokens_per_s"])
            shutil.rmtree(folder, ignore_errors=True)

    def kill(self, job: Job) -> None:
        """End the job's process at once (tests, and a server shutting down)."""
        if _alive(job.pid):
            os.kill(job.pid, signal.SIGKILL)


def model_ready(job: Job) -> bool:
    return is_checkpoint_dir(Path(job.out))


def runner_from_env(models_dir: str | Path) -> JobRunner:
    """The server's runner: jobs under SCRATCHGPT_JOBS_DIR (models/.jobs, beside the models it
    writes, which the selector does not list), caps from the environment."""
    jobs_dir = os.environ.get("SCRATCHGPT_JOBS_DIR") or Path(models_dir) / ".jobs"
    return JobRunner(models_dir, jobs_dir, JobLimits.from_env())
