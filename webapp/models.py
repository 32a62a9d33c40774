"""Which models the app offers, and loading them once: the default (`SCRATCHGPT_MODEL`, checked
at start-up, else the packaged SmolLM2), checkpoints under `models/`, and (on a machine with
network) the Hugging Face hub ids the host lists in `SCRATCHGPT_HUB_MODELS`. A client picks among
these only: it cannot make the server download anything else. RAG questions to the default go to
the grounded-QA fine-tune (`make rag-model`, or `SCRATCHGPT_RAG_MODEL`) when there is one."""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.checkpoint import PICKLE_SUFFIXES, is_checkpoint_dir
from core.generate.engine import LLM
from core.load import DEFAULT_MODEL_NAME, ModelLoadError, hub_offline
from core.weights import WeightsError, config_from_hf

DEFAULT = "default"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_VARIABLE = "SCRATCHGPT_MODEL"
HUB_VARIABLE = "SCRATCHGPT_HUB_MODELS"
RAG_VARIABLE = "SCRATCHGPT_RAG_MODEL"
RAG_MODEL_NAME = "smollm2-rag"  # what `make rag-model` writes under models/
WHAT_TO_SET = (
    f"set {MODEL_VARIABLE} to a .gguf file, a checkpoint or Hugging Face model directory, "
    "or a hub id such as 'HuggingFaceTB/SmolLM2-360M-Instruct' (unset: the packaged "
    f"{DEFAULT_MODEL_NAME})."
)


class ModelChoiceError(ValueError):
    """A model name the server will not load; the message says what can be picked instead."""


class ModelConfigError(ValueError):
    """`SCRATCHGPT_MODEL` names nothing the app can serve; the message says what to set."""


def hub_allowed() -> bool:
    return not hub_offline()


@dataclass(frozen=True)
class DefaultModel:
    """The app's default model: what `LLM.load` gets, and the name the selector and status show
    (the name `LLM.load` gives it)."""

    source: str = DEFAULT
    name: str = DEFAULT_MODEL_NAME

    @property
    def label(self) -> str:
        return f"{self.name} (default)"


def default_model(value: str | None) -> DefaultModel:
    """The default model `SCRATCHGPT_MODEL=value` names, checked without reading any weights;
    `ModelConfigError` says what was given, why it cannot be served, and what to set."""
    value = (value or "").strip()
    if value in ("", DEFAULT):
        return DefaultModel()
    path = Path(value).expanduser()
    try:
        if path.exists():
            return _local_model(path.resolve())
        if HUB_ID.match(value) and not value.lower().endswith(".gguf"):
            return _hub_model(value)
        raise ModelConfigError(f"{path} does not exist")
    except ModelConfigError as err:
        raise ModelConfigError(f"{MODEL_VARIABLE}={value!r}: {err}; {WHAT_TO_SET}") from err


def rag_model(value: str | None, models_dir: str | Path, default: DefaultModel) -> str | None:
    """The model the RAG template answers with when the default is picked: `value` (of
    `SCRATCHGPT_RAG_MODEL`: a checkpoint directory or .gguf file, or "off"), else
    `models/smollm2-rag` when `make rag-model` wrote it and the default is the packaged SmolLM2
    it was tuned from; None: the default answers RAG questions too."""
    value = (value or "").strip()
    if value.lower() in ("off", "none", "0"):
        return None
    if value:
        try:
            path = Path(value).expanduser()
            if not path.exists():
                raise ModelConfigError(f"{path} does not exist")
            return _local_model(path.resolve()).source
        except ModelConfigError as err:
            raise ModelConfigError(
                f"{RAG_VARIABLE}={value!r}: {err}; set it to a checkpoint directory or .gguf "
                "file, or to 'off' to answer RAG questions with the default model."
            ) from err
    found = Path(models_dir) / RAG_MODEL_NAME
    if default.source == DEFAULT and is_checkpoint_dir(found):
        try:
            return _local_model(found.resolve()).source
        except ModelConfigError:
            return None  # a run still writing its first checkpoint: the default answers
    return None


def _local_model(path: Path) -> DefaultModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelConfigError(f"{path} is a file but not a .gguf model")
        with path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ModelConfigError(f"{path} does not start like a GGUF file (damaged?)")
        return DefaultModel(str(path), path.stem)
    if is_checkpoint_dir(path):
        _require_files(path, "model.safetensors")
        return DefaultModel(str(path), path.name)
    if (path / "config.json").exists():
        _check_hf_config(path / "config.json")
        _require_files(path, "*.safetensors")
        return DefaultModel(str(path), path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _local_model(ggufs[0])
    what = f"{len(ggufs)} .gguf files" if ggufs else "no config.json or .gguf file"
    raise ModelConfigError(f"{path} is not a model directory ({what} inside)")


def _require_files(directory: Path, weights: str) -> None:
    """The weights (safetensors: pickles are refused) and the tokenizer `load_model` needs."""
    if not any(directory.glob(weights)):
        pickled = [p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        why = f"only pickle files ({', '.join(pickled)}), which we refuse" if pickled else "none"
        raise ModelConfigError(f"{directory} has no {weights} weights ({why})")
    if not (directory / "tokenizer.json").exists():
        raise ModelConfigError(f"{directory} has no tokenizer.json beside its weights")


def _check_hf_config(config_path: Path) -> None:
    """The architecture is one we can run (reads config.json only)."""
    try:
        config_from_hf(json.loads(config_path.read_text()), config_path)
    except (json.JSONDecodeError, OSError) as err:
        raise ModelConfigError(f"{config_path} is not readable JSON ({err})") from err
    except (WeightsError, KeyError, TypeError, ValueError) as err:
        raise ModelConfigError(f"{config_path} describes a model we cannot run ({err})") from err


def _hub_model(repo_id: str) -> DefaultModel:
    """A hub id: refused offline; online, its config.json (a few KB) must exist and be usable."""
    if hub_offline():
        raise ModelConfigError(
            "this looks like a Hugging Face hub id, but HF_HUB_OFFLINE is set, so it cannot be "
            "downloaded (download it elsewhere and point at the local directory, or unset "
            "HF_HUB_OFFLINE on a machine with network)"
        )
    try:
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(repo_id, "config.json"))
    except Exception as err:  # unknown or gated repo, no network: all end the same way
        why = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelConfigError(
            f"the Hugging Face hub has no readable {repo_id}/config.json "
            f"({type(err).__name__}: {why}); check the id, the network and any access token"
        ) from err
    _check_hf_config(config_path)
    return DefaultModel(repo_id, repo_id)


def hub_models(value: str | None) -> tuple[str, ...]:
    """The hub ids `SCRATCHGPT_HUB_MODELS=value` lists (comma-separated), checked by form only;
    `ModelConfigError` names one that is not a hub id."""
    ids = tuple(dict.fromkeys(v.strip() for v in (value or "").split(",") if v.strip()))
    for repo_id in ids:
        if not HUB_ID.match(repo_id):
            raise ModelConfigError(
                f"{HUB_VARIABLE}={value!r}: {repo_id!r} is not a hub id like "
                "'HuggingFaceTB/SmolLM2-360M-Instruct'; list hub ids separated by commas."
            )
    return ids


def _version(source: str) -> tuple[int, int] | None:
    """What changes when a checkpoint directory is saved again (`checkpoint.save` swaps in a new
    directory); None for what is not a directory (a GGUF, a hub id)."""
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns) if Path(source).is_dir() else None


class ModelRegistry:
    """The model choices, and an LRU of loaded models (`capacity` of them stay in memory)."""

    def __init__(
        self,
        models_dir: str | Path = "models",
        *,
        default: DefaultModel | None = None,
        capacity: int = 2,
        loader: Callable[[str], LLM] = LLM.load,
        rag: str | None = None,
        hub: tuple[str, ...] = (),
    ) -> None:
        """`rag`: a value for `rag_model` ("off" for none); unset, `models/smollm2-rag` is used
        for RAG questions to the default when it exists. `hub`: the hub ids offered (online)."""
        self.models_dir = Path(models_dir)
        self.default = default or DefaultModel()
        self.rag = rag_model(rag, self.models_dir, self.default)
        self.hub = tuple(hub)
        self.capacity = max(1, capacity)
        self._loader = loader
        self._loaded: OrderedDict[str, LLM] = OrderedDict()
        self._versions: dict[str, tuple[int, int] | None] = {}  # source -> `_version` at load
        self._loading: dict[str, threading.Lock] = {}  # one per source being loaded
        self._lock = threading.Lock()  # guards the two dicts; never held while loading

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs: the default, every checkpoint directory under `models/`, then
        the listed hub ids where the hub is reachable."""
        found = []
        if self.models_dir.is_dir():
            found = sorted(
                p for p in self.models_dir.iterdir() if p.is_dir() and is_checkpoint_dir(p)
            )
        hub = [(repo_id, repo_id) for repo_id in self.hub] if hub_allowed() else []
        return [(self.default.label, DEFAULT)] + [(p.name, str(p)) for p in found] + hub

    def resolve(self, name: str) -> str:
        """The source `LLM.load` gets for a user's choice; anything else is refused."""
        name = (name or DEFAULT).strip()
        if name in (DEFAULT, self.default.label, self.default.source):
            return self.default.source
        if name == self.rag:
            return name
        if name in {value for _, value in self.choices()}:
            return name
        if name in self.hub:
            raise ModelChoiceError(
                f"{name!r} would come from the Hugging Face hub, but this server is offline; "
                "pick the default or a checkpoint under models/."
            )
        raise ModelChoiceError(
            f"{name!r} is not one of this server's models; pick one from its list (the server "
            f"downloads only the hub models its host lists in {HUB_VARIABLE})."
        )

    def for_template(self, name: str, template: str) -> tuple[LLM, str]:
        """The model that answers `name`'s request with `template`, and a notice when that is
        not the model picked: RAG questions to the default go to the grounded-QA model."""
        if template != "rag" or self.rag is None or self.resolve(name) != self.default.source:
            return self.get(name), ""
        llm = self.get(self.rag)
        return llm, (
            f"Answered by {llm.name}: {self.default.name} fine-tuned to answer from sources "
            f"(`make rag-model`); set {RAG_VARIABLE}=off to answer with the default itself."
        )

    def get(self, name: str) -> LLM:
        """The loaded model for `name` (loads it on first use; evicts the least recently used).
        Two first requests for one model load it once; nobody else waits for that load."""
        source = self.resolve(name)
        while True:
            with self._lock:
                if source in self._loaded and self._versions.get(source) != _version(source):
                    del self._loaded[source]  # saved again since (a training run's later step)
                if source in self._loaded:
                    self._loaded.move_to_end(source)
                    return self._loaded[source]
                loading = self._loading.setdefault(source, threading.Lock())
            with loading:
                if self._loading.get(source) is not loading:
                    continue  # loaded (or failed) meanwhile: look again
                version = _version(source)  # before: a save during the load reloads next time
                try:
                    llm = self._loader(source)
                except (ModelLoadError, OSError, ValueError) as err:
                    with self._lock:
                        del self._loading[source]
                    raise ModelChoiceError(f"could not load {name!r}: {err}") from err
                with self._lock:
                    del self._loading[source]
                    self._loaded[source] = llm
                    self._versions[source] = version
                    while len(self._loaded) > self.capacity:
                        self._loaded.popitem(last=False)
                    return llm
