"""The run's settings: one definition (RunConfig) behind sacred's config, the saved
config.json and the README's table of options."""
import dataclasses
from pathlib import Path

import pytest

import train
from models.config import ConfigError, ModelConfig
from models.run.settings import RunConfig, keys_of, option_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readme_lists_every_option_as_runconfig_defines_it():
    assert option_table() in README
    model_table = README[README.index("Model keys (`margs.key=value`"):]
    for field in dataclasses.fields(ModelConfig):
        assert f"`{field.name}`" in model_table, field.name


@pytest.mark.parametrize("named", ["table3", "quickstart", "readme_example"])
def test_a_saved_config_gives_back_the_same_settings(named):
    resolved = train.resolved_config(named, seed=3)
    cfg = RunConfig.from_options(resolved)
    assert set(cfg.as_dict()) == set(resolved)  # config.json holds what sacred resolves
    assert RunConfig.from_options(cfg.as_dict()) == cfg


def test_the_shortcuts_follow_n_h_unless_given():
    cfg = RunConfig.from_options(train.resolved_config(n_h=12, n_z=4, **{"margs.n_h2": 7}))
    assert (cfg.n_h1, cfg.n_h2, cfg.model.n_h1, cfg.model.n_h2, cfg.model.n_z) == \
        (12, 12, 12, 7, 4)


def test_what_a_saved_run_decides_is_the_model_its_data_and_precision():
    assert set(keys_of("model")) == {"model_type", "n_h", "n_h1", "n_h2", "n_z", "depths",
                                     "shape_x", "px", "pad_x", "margs"}
    assert set(keys_of("data")) == {"problem", "n_train", "n_batch", "seed"}
    assert set(keys_of("may change")) == {"n_epochs", "skip_nonfinite", "checkpoint_minutes"}


def test_an_option_of_another_version_is_refused_in_one_sentence():
    options = {**train.resolved_config(seed=1), "n_batches": 3}
    with pytest.raises(ConfigError, match="unknown config key 'n_batches'; did you mean n_batch?"):
        RunConfig.from_options(options)


def test_one_command_line_does_not_leak_into_the_next():
    train.resolved_config("quickstart", n_h=12, pad_x=2)
    margs = train.resolved_config("quickstart")["margs"]
    assert (margs["n_h1"], margs["pad_x"]) == (32, 0)
