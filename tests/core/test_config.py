"""`ModelConfig`: presets, JSON round trip, validation messages."""

from __future__ import annotations

import pytest

from core.config import PRESETS, ConfigError, ModelConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name, tmp_path):
    config = ModelConfig.preset(name)
    assert ModelConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == config


def test_classic_is_the_seed_transformer():
    c = ModelConfig.preset("classic")
    assert (c.position, c.norm, c.activation, c.n_kv_head) == (
        "sinusoidal",
        "layernorm",
        "relu",
        c.n_head,
    )


def test_defaults_are_derived():
    c = ModelConfig(n_embd=64, n_head=4)
    assert (c.n_kv_head, c.head_dim, c.ffn_hidden) == (4, 16, 256)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(position="alibi"), "position must be one of"),
        (dict(activation="tanh"), "activation must be one of"),
        (dict(n_head=8, n_kv_head=3), "must be a multiple of n_kv_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(vocab_size=-5), "vocab_size must be a positive integer"),
    ],
)
def test_invalid_configs_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**overrides)


def test_unknown_field_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="unknown config field"):
        ModelConfig.from_dict({"n_layers": 3})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: config is not valid JSON"):
        ModelConfig.load(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        ModelConfig.preset("gpt5")
