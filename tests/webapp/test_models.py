"""`SCRATCHGPT_MODEL`: the app's default model from a Hugging Face dir (tiny random Llama and
Qwen2), our checkpoint or a GGUF, and the one-line start-up error for a value it cannot serve."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from threading import Event, Thread

import pytest
import torch

from core import checkpoint
from core.generate.engine import LLM
from core.load import DEFAULT_MODEL_NAME
from core.model import Decoder
from core.tokenizer import Tokenizer
from tests.webapp.conftest import ROOT, start_app, stop_app, tiny_checkpoint
from webapp.chat import ChatRequest, ChatService
from webapp.models import (
    DefaultModel,
    ModelChoiceError,
    ModelConfigError,
    ModelRegistry,
    default_model,
)

transformers = pytest.importorskip("transformers")

# distinct head counts per family, so the test sees which model was loaded, not just that one was
FAMILIES = {
    "llama": dict(heads=4, kv_heads=2, bias=False),
    "qwen2": dict(heads=4, kv_heads=1, bias=True),
}


def tiny_hf_dir(directory: Path, family: str) -> Path:
    """A random Llama or Qwen2 saved by `save_pretrained`, with a tiny ChatML BPE tokenizer."""
    tokenizer = Tokenizer.train(
        ["the quick brown fox jumps over the lazy dog " * 40],
        300,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    )
    shape = FAMILIES[family]
    common = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=False,  # tied, a random model repeats its last token (a newline)
        eos_token_id=0,
    )
    torch.manual_seed(0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("hf")
    return {family: tiny_hf_dir(tmp / f"tiny-{family}", family) for family in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_default_is_the_configured_hf_model_and_replies_come_from_it(family, hf_dirs, tmp_path):
    folder = hf_dirs[family]
    default = default_model(str(folder))
    assert default == DefaultModel(str(folder.resolve()), f"tiny-{family}")
    registry = ModelRegistry(tmp_path / "no-models", default=default)
    assert registry.choices()[0] == (f"tiny-{family} (default)", "default")

    llm = registry.get("default")
    shape = FAMILIES[family]
    assert llm.name == f"tiny-{family}"
    assert (llm.config.n_head, llm.config.n_kv_head) == (shape["heads"], shape["kv_heads"])
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert llm.config.attn_bias == shape["bias"]
    assert llm.config.vocab_size == reference.config.vocab_size == llm.tokenizer.vocab_size < 400
    embedding = reference.get_input_embeddings().weight
    assert torch.equal(llm.model.wte.weight.float().cpu(), embedding)  # its weights, not others
    assert registry.get(f"tiny-{family} (default)") is llm  # the selector's label: the same one

    replies = list(ChatService(registry).reply(ChatRequest("the quick fox", max_new_tokens=4)))
    assert replies[-1].done and replies[-1].model == f"tiny-{family}"


def test_our_checkpoint_dir_is_a_default(tmp_path):
    folder = tiny_checkpoint(tmp_path / "my-run")
    registry = ModelRegistry(tmp_path / "no-models", default=default_model(str(folder)))
    llm = registry.get("default")
    assert (llm.name, llm.config.n_embd, llm.config.n_layer) == ("my-run", 32, 1)
    reply = list(ChatService(registry).reply(ChatRequest("the lazy dog", max_new_tokens=3)))[-1]
    assert reply.model == "my-run"


def test_a_checkpoint_saved_again_is_reloaded_not_served_stale(tmp_path):
    """A training run saves its checkpoint again and again; a chat that loaded an early one gets
    the latest on its next answer (the old one stays with any reply still using it)."""
    folder = tiny_checkpoint(tmp_path / "models" / "run")
    registry = ModelRegistry(tmp_path / "models")
    early = registry.get(str(folder))
    assert registry.get(str(folder)) is early  # unchanged: served from memory
    later = early.model.state_dict()
    later = {k: v + 1.0 if v.is_floating_point() else v for k, v in later.items()}
    changed = Decoder(early.config)
    changed.load_state_dict(later, strict=False)
    checkpoint.save(changed, folder, early.tokenizer)  # as the trainer's next save does
    fresh = registry.get(str(folder))
    assert fresh is not early
    assert torch.equal(fresh.model.wte.weight, changed.wte.weight)
    assert not torch.equal(fresh.model.wte.weight, early.model.wte.weight)


def test_a_gguf_path_is_a_default_loaded_from_that_file(smollm2_gguf, smollm2, tmp_path):
    default = default_model(str(smollm2_gguf))
    assert default == DefaultModel(str(smollm2_gguf.resolve()), smollm2_gguf.stem)
    assert default_model(str(smollm2_gguf.parent)).source == str(smollm2_gguf.resolve())
    loaded = []

    def loader(source: str) -> LLM:  # the packaged weights are loaded once per session already
        loaded.append(source)
        return LLM(smollm2.model, smollm2.tokenizer, Path(source).stem)

    registry = ModelRegistry(tmp_path, default=default, loader=loader)
    reply = list(ChatService(registry).reply(ChatRequest("Hi", max_new_tokens=2)))[-1]
    assert loaded == [str(smollm2_gguf.resolve())] and reply.model == smollm2_gguf.stem


def test_unset_is_the_packaged_smollm2():
    for value in (None, "", "  ", "default"):
        assert default_model(value) == DefaultModel("default", DEFAULT_MODEL_NAME)
    assert ModelRegistry("none").choices()[0] == (f"{DEFAULT_MODEL_NAME} (default)", "default")


def bad_values(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """value -> (why, in the message) for values that must stop the app at start-up."""
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    (tmp_path / "empty").mkdir()
    mamba = tmp_path / "mamba"
    mamba.mkdir()
    (mamba / "config.json").write_text('{"model_type": "mamba"}')
    return {
        str(tmp_path / "missing" / "model.gguf"): "does not exist",
        "./no/such/dir": "does not exist",
        str(tmp_path / "notes.txt"): "not a .gguf model",
        str(tmp_path / "fake.gguf"): "does not start like a GGUF file",
        str(tmp_path / "empty"): "not a model directory",
        str(mamba): "model_type 'mamba' is not supported",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct": "HF_HUB_OFFLINE is set",
    }


def test_bad_values_name_the_value_the_reason_and_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for value, why in bad_values(tmp_path).items():
        with pytest.raises(ModelConfigError) as caught:
            default_model(value)
        message = str(caught.value)
        assert message.startswith(f"SCRATCHGPT_MODEL={value!r}: ") and why in message, message
        assert "set SCRATCHGPT_MODEL to a .gguf file" in message and "\n" not in message


def test_hf_dir_without_tokenizer_or_safetensors_is_refused_up_front(hf_dirs, tmp_path):
    import shutil

    folder = shutil.copytree(hf_dirs["llama"], tmp_path / "llama")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelConfigError, match="has no tokenizer.json"):
        default_model(str(folder))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelConfigError, match=r"only pickle files \(pytorch_model.bin\)"):
        default_model(str(folder))


def test_hub_id_online_is_checked_by_its_config_only(hf_dirs, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    asked = []

    def fake_download(repo_id: str, filename: str) -> str:
        asked.append((repo_id, filename))
        if repo_id.startswith("nobody/"):
            raise OSError("404 Client Error.\nRepository Not Found for url: ...")
        return str(hf_dirs["qwen2"] / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    hub_id = "Qwen/Qwen2.5-0.5B-Instruct"
    assert default_model(hub_id) == DefaultModel(hub_id, hub_id)
    with pytest.raises(ModelConfigError, match=r"\(OSError: 404 Client Error\.\); check the id"):
        default_model("nobody/no-such-model")
    assert asked == [(hub_id, "config.json"), ("nobody/no-such-model", "config.json")]


@pytest.mark.parametrize("value", ["/no/such/model.gguf", "HuggingFaceTB/SmolLM2-360M-Instruct"])
def test_app_refuses_to_start_with_one_line(value, tmp_path):
    env = {
        **os.environ,
        "SCRATCHGPT_MODEL": value,
        "HF_HUB_OFFLINE": "1",
        "SCRATCHGPT_DATA": str(tmp_path / "chroma"),
        "GRADIO_SERVER_PORT": "1",  # it must stop before it listens anywhere
    }
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.startswith(f"app.py: SCRATCHGPT_MODEL={value!r}: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "chroma").exists()  # nothing was set up before the check


def test_app_serves_the_configured_model_over_chat(hf_dirs, tmp_path):
    from gradio_client import Client

    folder = hf_dirs["qwen2"]
    registry = ModelRegistry(tmp_path / "none", default=default_model(str(folder)))
    local = list(ChatService(registry).reply(ChatRequest("the quick fox", max_new_tokens=6)))
    assert local[-1].new_tokens == 6 and "without any text" not in local[-1].text
    app = start_app(tmp_path, SCRATCHGPT_MODEL=str(folder))
    try:
        answer = Client(app.url, verbose=False).predict(
            "the quick fox", max_new_tokens=6, api_name="/chat"
        )
    finally:
        stop_app(app)
    assert answer == local[-1].text  # greedy: exactly what the tiny Qwen2 writes
    assert f"Default model: tiny-qwen2 ({folder.resolve()})" in app.log.read_text()


# -- the grounded-QA model for RAG (`make rag-model` -> models/smollm2-rag) ------------------------


def test_rag_questions_to_the_default_go_to_models_smollm2_rag_and_say_so(smollm2, tmp_path):
    models = tmp_path / "models"
    tiny_checkpoint(models / "smollm2-rag")
    loaded = []

    def loader(source: str) -> LLM:
        loaded.append(source)
        return smollm2 if source == "default" else LLM.load(source)

    registry = ModelRegistry(models, loader=loader)
    assert registry.rag == str((models / "smollm2-rag").resolve())
    llm, notice = registry.for_template("default", "rag")
    assert llm.name == "smollm2-rag" and llm.config.n_layer == 1
    assert "Answered by smollm2-rag" in notice and "SCRATCHGPT_RAG_MODEL=off" in notice
    for template in ("chat", "zero-shot"):
        assert registry.for_template("default", template) == (smollm2, "")
    tiny = str(models / "smollm2-rag")
    assert registry.for_template(tiny, "rag")[1] == ""  # picked by name: no notice

    reply = list(
        ChatService(registry).reply(ChatRequest("the lazy dog", template="chat", max_new_tokens=2))
    )[-1]
    assert reply.model == smollm2.name

    off = ModelRegistry(models, loader=loader, rag="off")
    assert off.rag is None and off.for_template("default", "rag") == (smollm2, "")


def test_a_rag_model_is_used_only_for_the_packaged_default_or_when_set(tmp_path):
    models = tmp_path / "models"
    tiny_checkpoint(models / "smollm2-rag")
    other = tiny_checkpoint(tmp_path / "my-run")
    # tuned from SmolLM2: another default answers RAG questions itself ...
    assert ModelRegistry(models, default=default_model(str(other))).rag is None
    # ... unless SCRATCHGPT_RAG_MODEL names one
    chosen = ModelRegistry(models, default=default_model(str(other)), rag=str(other))
    assert chosen.rag == str(other.resolve())
    assert ModelRegistry(tmp_path / "empty").rag is None
    for value, why in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "not a model dir")):
        with pytest.raises(ModelConfigError) as err:
            ModelRegistry(models, rag=str(value))
        message = str(err.value)
        assert message.startswith(f"SCRATCHGPT_RAG_MODEL={str(value)!r}: ") and why in message
        assert "or to 'off'" in message


# -- hub models: only those the host lists, and no registry lock held while one loads ------------


def test_only_listed_hub_models_load_and_a_slow_load_blocks_nobody_else(smollm2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    listed, started, release, loaded = "org/listed-model", Event(), Event(), []

    def loader(source: str) -> LLM:  # a download that takes as long as the test says
        loaded.append(source)
        if source == listed:
            started.set()
            assert release.wait(30)
        return smollm2

    registry = ModelRegistry("no-models-here", loader=loader, hub=(listed,))
    assert registry.choices()[-1] == (listed, listed)
    with pytest.raises(ModelChoiceError, match="not one of this server's models") as refused:
        registry.get("someone/a-huge-model")
    assert "SCRATCHGPT_HUB_MODELS" in str(refused.value) and loaded == []
    assert registry.get("default") is smollm2
    first, second = (Thread(target=registry.get, args=(listed,)) for _ in range(2))
    first.start()
    assert started.wait(30)
    second.start()
    began = time.monotonic()
    assert registry.get("default") is smollm2  # not queued behind the download
    assert time.monotonic() - began < 1.0
    release.set()
    first.join(30)
    second.join(30)
    assert loaded == ["default", listed]  # two callers, one download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelChoiceError, match="this server is offline"):
        registry.resolve(listed)
