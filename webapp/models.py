"""Which models the app offers, and loading them once: the default, checkpoints under `models/`,
and (on a machine with network) a Hugging Face hub id typed by the user."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from core.checkpoint import is_checkpoint_dir
from core.generate.engine import LLM
from core.load import ModelLoadError, hub_offline

DEFAULT = "default"
DEFAULT_LABEL = "SmolLM2-135M-Instruct (default)"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelChoiceError(ValueError):
    """A model name the server will not load; the message says what can be picked instead."""


def hub_allowed() -> bool:
    return not hub_offline()


class ModelRegistry:
    """The model choices, and an LRU of loaded models (`capacity` of them stay in memory)."""

    def __init__(
        self,
        models_dir: str | Path = "models",
        *,
        capacity: int = 2,
        loader: Callable[[str], LLM] = LLM.load,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.capacity = max(1, capacity)
        self._loader = loader
        self._loaded: OrderedDict[str, LLM] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs: the default, then every checkpoint directory under `models/`."""
        found = []
        if self.models_dir.is_dir():
            found = sorted(
                p for p in self.models_dir.iterdir() if p.is_dir() and is_checkpoint_dir(p)
            )
        return [(DEFAULT_LABEL, DEFAULT)] + [(p.name, str(p)) for p in found]

    def resolve(self, name: str) -> str:
        """The source `LLM.load` gets for a user's choice; anything else is refused."""
        name = (name or DEFAULT).strip()
        if name in {value for _, value in self.choices()}:
            return name
        if name == DEFAULT_LABEL:
            return DEFAULT
        if HUB_ID.match(name) and not Path(name).exists():
            if not hub_allowed():
                raise ModelChoiceError(
                    f"{name!r} would come from the Hugging Face hub, but this server is offline; "
                    "pick the default or a checkpoint under models/."
                )
            return name
        raise ModelChoiceError(
            f"{name!r} is not one of this server's models; pick one from the list"
            + (
                " or type a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'."
                if hub_allowed()
                else "."
            )
        )

    def get(self, name: str) -> LLM:
        """The loaded model for `name` (loads it on first use; evicts the least recently used)."""
        source = self.resolve(name)
        with self._lock:  # two first requests must not load the same model twice
            if source in self._loaded:
                self._loaded.move_to_end(source)
                return self._loaded[source]
            try:
                llm = self._loader(source)
            except (ModelLoadError, OSError, ValueError) as err:
                raise ModelChoiceError(f"could not load {name!r}: {err}") from err
            self._loaded[source] = llm
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return llm
