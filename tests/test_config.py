"""Configs: presets equal conf/*.yaml, paper defaults, strict overrides with one-line errors."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from diffwave.config import PRESETS, config_from_dict, config_to_dict, load_config
from diffwave.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("name", list(PRESETS))
def test_yaml_file_equals_builtin_preset(name):
    path = CONF / f"{name}.yaml"
    on_disk = yaml.safe_load(path.read_text())
    assert on_disk == config_to_dict(PRESETS[name]())  # every key written out, none missing or extra
    assert load_config(path) == load_config(name)


def test_defaults_are_the_paper_base_model():
    config = load_config("base")
    assert (config.model.residual_channels, config.model.residual_layers, config.model.dilation_cycle) == (64, 30, 10)
    assert (config.diffusion.num_steps, config.diffusion.beta_start, config.diffusion.beta_end) == (50, 1e-4, 0.05)
    assert config.diffusion.fast_schedule == [1e-4, 1e-3, 1e-2, 5e-2, 0.2, 0.5]
    assert (config.audio.sample_rate, config.audio.hop_length, config.audio.n_mels) == (22050, 256, 80)
    assert config.train.learning_rate == 2e-4
    large = load_config("large")
    assert (large.model.residual_channels, large.diffusion.num_steps, large.diffusion.beta_end) == (128, 200, 0.02)
    uncond = load_config("unconditional")
    assert not uncond.model.conditional and uncond.audio.sample_rate == 16000
    assert (uncond.model.residual_layers, uncond.model.residual_channels, uncond.model.dilation_cycle) == (36, 256, 12)


def test_overrides_are_typed():
    config = load_config("tiny", ["train.batch_size=8", "diffusion.loss=l1", "audio.f_max=null",
                                  "diffusion.fast_schedule=[0.001,0.1,0.5]"])
    assert config.train.batch_size == 8 and config.diffusion.loss == "l1" and config.audio.f_max is None
    assert config.diffusion.fast_schedule == [0.001, 0.1, 0.5]


def test_partial_yaml_is_merged_onto_the_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  residual_channels: 32\n")
    config = load_config(path)
    assert config.model.residual_channels == 32 and config.model.residual_layers == 30


@pytest.mark.parametrize(("spec", "overrides", "message"), [
    ("base", ["train.batch_sz=3"], r"override: Key 'batch_sz' not in 'TrainConfig'.*train\.batch_sz"),
    ("base", ["train.batch_size=abc"], r"'abc'.*could not be converted.*train\.batch_size"),
    ("base", ["nonsense"], "not of the form key=value"),
    ("base", ["diffusion.loss=l3"], "diffusion.loss is 'l3', expected one of: l2, l1"),
    ("base", ["train.precision=fp8"], "train.precision is 'fp8'"),
    ("base", ["audio.f_max=20000"], r"f_max <= 11025"),
    ("base", ["diffusion.beta_end=1.5"], "beta_start <= beta_end < 1"),
    ("base", ["diffusion.fast_schedule=[0.1,2.0]"], "fast_schedule must be"),
    ("nope", [], "neither a preset"),
    ("base", ["diffusion.init=sdedit"], "diffusion.init is 'sdedit', expected one of: noise, griffin-lim"),
    ("base", ["diffusion.init=griffin-lim"], "diffusion.init 'griffin-lim' needs init_start_step >= 1"),
    ("base", ["diffusion.init=griffin-lim-envelope", "diffusion.init_start_step=0"], "needs init_start_step >= 1"),
    ("base", ["diffusion.init_start_step=2"], "init_start_step applies to a Griffin-Lim init only"),
])
def test_bad_configs_give_one_line_errors(spec, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(spec, overrides)
    assert "\n" not in str(info.value)


def test_unreadable_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_dict_round_trip_uses_plain_types():
    config = load_config("large", ["train.grad_clip_norm=1.0"])
    values = config_to_dict(config)
    plain = (int, float, str, bool, type(None), list, dict)
    stack = [values]
    while stack:
        for value in stack.pop().values():
            assert isinstance(value, plain)
            if isinstance(value, dict):
                stack.append(value)
    assert config_from_dict(values) == config
    assert dataclasses.is_dataclass(config_from_dict(values).model)
    with pytest.raises(ConfigError, match="checkpoint"):
        config_from_dict({**values, "extra": 1}, source="checkpoint")


def test_a_saved_config_without_a_default_start_loads_with_noise():
    """Checkpoints written before diffusion.init/init_start_step existed start from noise, as they did."""
    values = config_to_dict(load_config("tiny"))
    del values["diffusion"]["init"], values["diffusion"]["init_start_step"]
    config = config_from_dict(values, source="checkpoint")
    assert (config.diffusion.init, config.diffusion.init_start_step) == ("noise", None)
    chosen = load_config("tiny", ["diffusion.init=griffin-lim-envelope", "diffusion.init_start_step=1"])
    assert config_from_dict(config_to_dict(chosen)) == chosen
