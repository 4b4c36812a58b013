"""Compiled functions cached on disk: a loaded function computes what a compiled one does,
with the loading model's own parameters; entries that may be foreign or damaged are
compiled afresh with one line saying why; IAF_FUNCTION_CACHE=0 writes nothing."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from layers.runtime import function_cache
from models import trainer as trainer_module
from models.config import ModelConfig
from models.resnet_vae import ResNetVAE
from models.trainer import GRAPH_SOURCES, Trainer

TINY = ModelConfig(shape_x=(3, 8, 8), depths=[1, 1], n_h1=8, n_h2=8, n_z=4,
                   posterior="down_iaf2_nl")


def cache_in(folder, monkeypatch):
    """Models built from now on cache their functions in ``folder``."""
    original = function_cache.FunctionCache.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.folder = str(folder)
    monkeypatch.setattr(function_cache.FunctionCache, "__init__", init)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A cache folder holding the evaluation function of TINY, and what it computed."""
    folder = tmp_path_factory.mktemp("cache") / "functions"
    with pytest.MonkeyPatch.context() as monkeypatch:
        cache_in(folder, monkeypatch)
        first, _ = model_and_log(seed=1)
        return folder, first, evaluation(first)


@pytest.fixture
def cache_folder(tmp_path, monkeypatch, filled):
    """A copy of the filled cache folder that the test's models use."""
    folder = tmp_path / "functions"
    shutil.copytree(filled[0], folder)
    cache_in(folder, monkeypatch)
    return folder


def model_and_log(seed):
    messages = []
    model = Trainer(ResNetVAE(TINY, seed=seed))
    model._cache.log = messages.append
    return model, messages


def evaluation(model):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (3, 3, 8, 8)).astype(np.uint8)
    eps = [rng.randn(3, *shape).astype(np.float32) for shape in model.model.latent_shapes()]
    return model.evaluate(x, eps)["cost"]


def test_a_loaded_function_computes_with_the_loading_models_parameters(cache_folder, filled,
                                                                         monkeypatch):
    _, first, compiled = filled
    (entry,) = cache_folder.iterdir()
    assert oct(entry.stat().st_mode & 0o777) == "0o600"
    assert first.state.avg_params.buffer[100:120].tobytes() not in entry.read_bytes()  # no weights
    second, messages = model_and_log(seed=2)  # other initial weights
    monkeypatch.setattr(trainer_module.theano, "function",
                        lambda *a, **k: pytest.fail("compiled"))
    loaded = evaluation(second)
    monkeypatch.undo()
    assert messages == []
    assert not np.allclose(loaded, compiled)  # its own weights, not the first model's
    second.state.set_weights(first.state.weights())
    np.testing.assert_array_equal(evaluation(second), compiled)


def replace_with_link(path):
    """Moves the entry aside (intact) and leaves a symbolic link to it in its place."""
    target = path.with_suffix(".elsewhere")
    path.rename(target)
    path.symlink_to(target)


@pytest.mark.parametrize("damage,reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "does not match its digest"),
    (lambda p: p.write_bytes(b"not a pickle"), "does not match its digest"),
    (lambda p: p.chmod(0o666), "is writable by other users"),
    (lambda p: os.chown(p, 65534, -1), "belongs to another user"),
    (lambda p: replace_with_link(p), "Too many levels of symbolic links"),
])
def test_a_damaged_or_foreign_entry_is_compiled_afresh_saying_why(cache_folder, filled,
                                                                  damage, reason):
    if reason == "belongs to another user" and os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    expected = filled[2]
    (entry,) = cache_folder.iterdir()
    damage(entry)
    second, messages = model_and_log(seed=1)
    np.testing.assert_array_equal(evaluation(second), expected)
    assert len(messages) == 1 and reason in messages[0] and "Compiling the eval" in messages[0]


def test_a_foreign_folder_is_not_trusted(cache_folder):
    cache_folder.chmod(0o777)
    second, messages = model_and_log(seed=1)
    evaluation(second)
    assert len(messages) == 1 and "is writable by other users" in messages[0]


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    cache_in(tmp_path / "functions", monkeypatch)
    monkeypatch.setattr(function_cache, "ENABLED", False)
    model, _ = model_and_log(seed=1)
    evaluation(model)
    assert not (tmp_path / "functions").exists()


def test_the_key_covers_the_source_and_the_model(tmp_path):
    (tmp_path / "ops").mkdir()
    for path in (tmp_path / "a.py", tmp_path / "ops" / "b.cpp", tmp_path / "run.py"):
        path.write_text("x = 1\n")
    sources = [tmp_path / "a.py", tmp_path / "ops"]
    before = function_cache._source_digest(sources)
    (tmp_path / "run.py").write_text("x = 2\n")  # not a source
    assert function_cache._source_digest(sources) == before
    for path in sources[0], tmp_path / "ops" / "b.cpp":
        path.write_text(path.read_text() + "x = 2\n")
        assert function_cache._source_digest(sources) != before
        before = function_cache._source_digest(sources)
    models = Path(trainer_module.__file__).parent
    graph_files = {path for _, path in function_cache._source_files(GRAPH_SOURCES)}
    assert {models / "resnet_vae.py", models.parent / "layers" / "ops" / "onednn_conv.cpp"} \
        < graph_files
    assert not any(models / "run" in path.parents for path in graph_files)
    paths = {Trainer(ResNetVAE(ModelConfig(**{**TINY.as_dict(), **change})))._cache._path("eval")
             for change in ({}, {"n_z": 8}, {"kl_min": 0.5})}
    assert len(paths) == 3


def test_a_loaded_function_sees_parameters_replaced_after_it_was_loaded(cache_folder, filled):
    _, first, compiled = filled
    second, _ = model_and_log(seed=2)
    assert not np.allclose(evaluation(second), compiled)  # loaded, with its own weights
    second.state.avg_params.set_buffer(first.state.avg_params.buffer)  # a new array in their place
    np.testing.assert_array_equal(evaluation(second), compiled)
