"""The run's settings: one definition (RunConfig) behind sacred's config, the saved
config.json and the README's table of options."""
import dataclasses
import json
import types
from pathlib import Path

import pytest

import train
from models.config import ConfigError, ModelConfig
from models.run.processes import Processes
from models.run.settings import (RunConfig, command_settings, keys_of, option_table,
                                 resumed_settings)

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


class CommandLine:
    """What the reconciliation reads of sacred's run: the keys a command line gave (sacred
    also marks the dict above a given ``margs.KEY`` as modified)."""

    def __init__(self, *updates):
        keys = {update.split("=", 1)[0] for update in updates}
        self.meta_info = {"options": {"UPDATE": list(updates)}}
        self.config_modifications = types.SimpleNamespace(
            modified=keys | {k.rsplit(".", 1)[0] for k in keys if "." in k})


def saved_run(folder, *named, **options):
    """A run folder whose config.json holds the config of ``named`` and ``options``, spelled
    as given (as this project saved them before its settings were canonical)."""
    folder.mkdir()
    config = train.resolved_config(*named, seed=1, **options)
    (folder / "config.json").write_text(json.dumps(config))
    return config


def test_spellings_of_one_setting_are_not_a_contradiction(tmp_path):
    readme = {"margs.posterior": "down_iaf2_NL"}  # the original README's spelling
    saved = saved_run(tmp_path / "run", "readme_example", **readme)
    given = (f"load_model_path={tmp_path / 'run'}", "margs.posterior=down_iaf2_NL")
    config = train.resolved_config("readme_example", seed=2, **readme,
                                   load_model_path=str(tmp_path / "run"))
    cfg = command_settings(config, CommandLine(*given), Processes())
    assert cfg.model.posterior == "down_iaf2_nl"
    resumed = resumed_settings(saved, RunConfig.from_options(config),
                               CommandLine("margs.posterior=down_iaf2_NL"), "run")
    assert resumed.model == cfg.model and resumed.resume == "run"


def test_a_given_model_option_is_compared_alone(tmp_path):
    saved_run(tmp_path / "run", "quickstart")
    config = train.resolved_config(seed=2, load_model_path=str(tmp_path / "run"),
                                   **{"margs.kl_min": 0.25})
    given = CommandLine(f"load_model_path={tmp_path / 'run'}", "margs.kl_min=0.25")
    assert command_settings(config, given, Processes()).model.n_h1 == 32  # the run's
    config = train.resolved_config(seed=2, load_model_path=str(tmp_path / "run"),
                                   **{"margs.kl_min": 0.5})
    with pytest.raises(ConfigError, match=r"margs.kl_min: 0.25 -> 0.5$"):
        command_settings(config, CommandLine("margs.kl_min=0.5"), Processes())
