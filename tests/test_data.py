"""Tests for the data package: CIFAR-10 loading (incl. hostile files), toy data, atomic
file writing and PNG image grids."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from cifar_files import write_cifar10_batch, write_fake_cifar10
from data import DataError, load_dataset
from data.cifar10 import TEST_FILE, TRAIN_FILES, URL, load_cifar10
from layers.runtime.files import atomic_write
from models.run.pictures import image_grid, save_image_grid
from data.toy import toy_images

N_PER_BATCH = 6


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A fake CIFAR-10 folder named by CIFAR10_PATH; yields (folder, train_x, test_x)."""
    folder = tmp_path / "cifar-10-batches-py"
    train_x, test_x = write_fake_cifar10(str(folder), N_PER_BATCH, seed=3)
    monkeypatch.setenv("CIFAR10_PATH", str(folder))
    return folder, train_x, test_x


def write_pickle(path, obj, protocol=4):
    """Write `obj` with the stock pickler (protocol 4 stores bytes without extra globals)."""
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


# ---------------------------------------------------------------- CIFAR-10: valid data


def test_fake_cifar_round_trips_pixels_and_batch_order(tmp_path, monkeypatch):
    batches = [np.full((2, 3072), 10 * i, np.uint8) for i in range(6)]
    batches[0][1, :] = np.arange(3072) % 256  # distinct values within one image
    for name, data in zip(TRAIN_FILES + (TEST_FILE,), batches):
        write_cifar10_batch(str(tmp_path / name), data, [0, 1])
    monkeypatch.setenv("CIFAR10_PATH", str(tmp_path))

    train_x, test_x = load_cifar10()

    assert train_x.dtype == np.uint8 and train_x.shape == (10, 3, 32, 32)
    assert test_x.dtype == np.uint8 and test_x.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(train_x[:, 0, 0, 0], [0, 0, 10, 10, 20, 20, 30, 30, 40, 40])
    np.testing.assert_array_equal(test_x, 50)
    # official layout: 1024 red values, then green, then blue, each plane row-major
    flat = np.arange(3072) % 256
    assert train_x[1, 1, 0, 0] == flat[1024] and train_x[1, 0, 0, 31] == flat[31]
    assert train_x[1, 2, 31, 31] == flat[3071] and train_x[1, 0, 1, 0] == flat[32]


def test_written_batch_has_official_structure(tmp_path):
    path = tmp_path / "data_batch_1"
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    write_cifar10_batch(str(path), data, [3, 7])
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80\x02"  # protocol 2
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"labels"] == [3, 7] and len(batch[b"filenames"]) == 2
    np.testing.assert_array_equal(batch[b"data"], data)


@pytest.mark.parametrize("form", ["folder", "folder/", "parent", "parent/", "home"])
def test_cifar10_path_may_name_folder_or_parent(fake_cifar, monkeypatch, form):
    folder, train_x, test_x = fake_cifar
    monkeypatch.setenv("HOME", str(folder.parent))
    value = {
        "folder": str(folder),
        "folder/": str(folder) + "/",
        "parent": str(folder.parent),
        "parent/": str(folder.parent) + "/",
        "home": "~",
    }[form]
    monkeypatch.setenv("CIFAR10_PATH", value)
    got_train, got_test = load_cifar10()
    np.testing.assert_array_equal(got_train, train_x)
    np.testing.assert_array_equal(got_test, test_x)


def test_shuffle_uses_seeded_permutations_train_then_test(fake_cifar):
    _, train_x, test_x = fake_cifar
    rng = np.random.RandomState(42)
    train_perm, test_perm = rng.permutation(len(train_x)), rng.permutation(len(test_x))

    got_train, got_test = load_dataset("cifar10", seed=42)

    np.testing.assert_array_equal(got_train, train_x[train_perm])
    np.testing.assert_array_equal(got_test, test_x[test_perm])


def test_shuffle_is_deterministic_in_seed(fake_cifar):
    first, again, other = (load_dataset("cifar10", seed=s)[0] for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_n_train_truncates_train_and_test(fake_cifar):
    full_train, full_test = load_dataset("cifar10", seed=5)
    train_x, test_x = load_dataset("cifar10", n_train=4, seed=5)
    assert len(full_train) == 5 * N_PER_BATCH and len(full_test) == N_PER_BATCH
    np.testing.assert_array_equal(train_x, full_train[:4])
    np.testing.assert_array_equal(test_x, full_test[:4])


# ---------------------------------------------------------------- CIFAR-10: bad setups


def test_unset_path_names_variable_and_url(monkeypatch):
    monkeypatch.delenv("CIFAR10_PATH", raising=False)
    with pytest.raises(DataError, match="CIFAR10_PATH is not set") as info:
        load_dataset("cifar10")
    assert URL in str(info.value)


def test_nonexistent_folder_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="not an existing folder") as info:
        load_dataset("cifar10")
    assert URL in str(info.value) and "nowhere" in str(info.value)


def test_missing_files_are_listed(fake_cifar):
    folder, _, _ = fake_cifar
    (folder / "data_batch_3").unlink()
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="data_batch_3, test_batch are missing") as info:
        load_dataset("cifar10")
    assert URL in str(info.value)


@pytest.mark.parametrize("keep_bytes", [0, 1, 100, 5000])
def test_truncated_batch_names_the_file(fake_cifar, keep_bytes):
    folder, _, _ = fake_cifar
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:keep_bytes])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_dataset("cifar10")
    assert str(path) in str(info.value)


def test_garbage_batch_is_corrupt(fake_cifar):
    folder, _, _ = fake_cifar
    path = folder / "test_batch"
    path.write_bytes(np.random.RandomState(0).bytes(4000))
    with pytest.raises(DataError, match="truncated or corrupt|refusing to load"):
        load_dataset("cifar10")


@pytest.mark.parametrize(
    "content",
    [
        {b"data": np.zeros((2, 100), np.uint8)},
        {b"data": np.zeros((2, 3072), np.float32)},
        {b"data": np.zeros((0, 3072), np.uint8)},
        {b"data": np.zeros((2, 3, 1024), np.uint8)},
        {b"labels": [1, 2]},
        [np.zeros((2, 3072), np.uint8)],
    ],
    ids=["short-rows", "float32", "empty", "3d", "no-data", "not-a-dict"],
)
def test_wrong_content_is_rejected(fake_cifar, content):
    folder, _, _ = fake_cifar
    path = folder / "data_batch_4"
    write_pickle(path, content)
    with pytest.raises(DataError, match="is not a CIFAR-10 batch") as info:
        load_dataset("cifar10")
    assert str(path) in str(info.value)


def test_str_data_key_is_accepted(fake_cifar):
    folder, train_x, _ = fake_cifar
    replacement = np.full((N_PER_BATCH, 3072), 9, np.uint8)
    write_pickle(folder / "data_batch_1", {"data": replacement})
    got_train, _ = load_cifar10()
    np.testing.assert_array_equal(got_train[:N_PER_BATCH], 9)
    np.testing.assert_array_equal(got_train[N_PER_BATCH:], train_x[N_PER_BATCH:])


# ---------------------------------------------------------------- CIFAR-10: hostile pickles


class ShellPayload:
    """Unpickling this would run a shell command creating the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class OpenPayload:
    """Unpickling this would create the marker file via builtins.open."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload, forbidden", [(ShellPayload, ".system"), (OpenPayload, ".open")])
@pytest.mark.parametrize("protocol", [2, 4])
def test_code_executing_pickle_is_refused(fake_cifar, tmp_path, payload, forbidden, protocol):
    folder, _, _ = fake_cifar
    marker = tmp_path / "pwned"
    path = folder / "data_batch_5"
    # str keys and payload first, so that the payload is the first global the loader meets
    write_pickle(path, {"labels": payload(marker), "data": np.zeros((1, 3072), np.uint8)}, protocol)
    with pytest.raises(DataError, match="refusing to load") as info:
        load_dataset("cifar10")
    assert str(path) in str(info.value) and forbidden in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", [b"numpy\nload", b"numpy.core.multiarray\nscalar", b"builtins\neval"])
def test_only_exact_numpy_globals_are_allowed(fake_cifar, global_name):
    folder, _, _ = fake_cifar
    (folder / "test_batch").write_bytes(b"\x80\x02c" + global_name + b"\n.")
    with pytest.raises(DataError, match="refusing to load") as info:
        load_dataset("cifar10")
    assert global_name.decode().replace("\n", ".") in str(info.value)


# ---------------------------------------------------------------- load_dataset arguments


def test_unknown_problem_lists_valid_problems():
    with pytest.raises(DataError, match="unknown problem 'mnist'; choose one of 'cifar10', 'toy'"):
        load_dataset("mnist")


def test_negative_n_train_is_rejected():
    with pytest.raises(DataError, match="n_train must be a non-negative integer"):
        load_dataset("toy", n_train=-1)


# ---------------------------------------------------------------- toy problem


def test_toy_images_are_deterministic_and_seed_dependent():
    a, b, c = toy_images(50, 0), toy_images(50, 0), toy_images(50, 1)
    assert a.dtype == np.uint8 and a.shape == (50, 3, 32, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_toy_images_have_varied_structure():
    images = toy_images(200, 7).astype(float)
    assert images.std(axis=(2, 3)).min() > 0  # no flat channel: gradient or shapes everywhere
    assert images.mean(axis=(1, 2, 3)).std() > 10  # images differ from each other
    assert images.min() < 20 and images.max() > 235  # full colour range is used


def test_toy_dataset_sizes_and_distinct_splits():
    train_x, test_x = load_dataset("toy")
    assert train_x.shape == (2000, 3, 32, 32) and test_x.shape == (500, 3, 32, 32)
    assert train_x.dtype == np.uint8 and test_x.dtype == np.uint8
    assert not np.array_equal(np.sort(train_x[:500], axis=0), np.sort(test_x, axis=0))


# ---------------------------------------------------------------- atomic_write


def test_atomic_write_creates_and_replaces_without_leftovers(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(str(path), lambda f: f.write(b"first"))
    atomic_write(str(path), lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_keeps_old_file_and_removes_temp_file(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old content")

    def write(f):
        f.write(b"half of the new")
        raise error("disk on fire")

    with pytest.raises(error, match="disk on fire"):
        atomic_write(str(path), write)
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.fixture(params=[0o022, 0o077, 0o002, 0o027])
def umask(request):
    """Run the test under the given umask, restoring the previous one afterwards."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_file_mode_follows_umask_like_open(tmp_path, umask):
    reference = tmp_path / "reference"
    with open(reference, "wb"):
        pass
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    path.chmod(0o600)  # the new file does not inherit the replaced file's mode

    atomic_write(str(path), lambda f: f.write(b"new"))

    mode = path.stat().st_mode & 0o777
    assert mode == reference.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.umask(umask) == umask  # the process umask is unchanged


# ---------------------------------------------------------------- image grids and PNG files


def read_png(path):
    """The pixels of a PNG file as a uint8 array, read with Pillow."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_image_grid_writes_a_png_of_the_grid(tmp_path, channels):
    images = np.random.RandomState(0).randint(0, 256, size=(12, channels, 4, 5)).astype(np.uint8)
    path = tmp_path / "grid.png"
    save_image_grid(str(path), images, n_cols=5)

    pixels = read_png(path)
    assert pixels.shape == (12, 25, 3) and pixels.dtype == np.uint8  # 3 rows of 5 cells, RGB
    np.testing.assert_array_equal(pixels, image_grid(images, n_cols=5))
    seventh = images[7].transpose(1, 2, 0).repeat(3 // channels, axis=2)  # grey -> RGB
    np.testing.assert_array_equal(pixels[4:8, 10:15], seventh)  # row 1, column 2, lossless
    assert os.listdir(tmp_path) == ["grid.png"]  # no temp file left behind


def test_save_image_grid_replaces_existing_file(tmp_path):
    path = tmp_path / "grid.png"
    save_image_grid(str(path), np.zeros((3, 3, 2, 2), np.uint8))
    images = np.full((4, 3, 3, 3), 200, np.uint8)
    save_image_grid(str(path), images, n_cols=2)
    np.testing.assert_array_equal(read_png(path), np.full((6, 6, 3), 200, np.uint8))
    assert os.listdir(tmp_path) == ["grid.png"]


def test_image_grid_places_image_k_at_row_k_div_10_col_k_mod_10():
    images = np.random.RandomState(1).randint(0, 256, size=(100, 3, 4, 5)).astype(np.uint8)
    grid = image_grid(images)
    assert grid.shape == (40, 50, 3) and grid.dtype == np.uint8
    for k in range(100):
        row, col = k // 10, k % 10
        block = grid[row * 4:(row + 1) * 4, col * 5:(col + 1) * 5]
        np.testing.assert_array_equal(block, images[k].transpose(1, 2, 0))


def test_image_grid_repeats_grey_and_pads_last_row():
    images = np.arange(1, 13, dtype=np.uint8).reshape(12, 1, 1, 1)
    grid = image_grid(images)
    assert grid.shape == (2, 10, 3)
    np.testing.assert_array_equal(grid[..., 0], grid[..., 2])
    np.testing.assert_array_equal(grid[0, :, 1], np.arange(1, 11))
    np.testing.assert_array_equal(grid[1, :, 1], [11, 12] + [0] * 8)


@pytest.mark.parametrize(
    "images",
    [np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 2, 4, 4), np.uint8), np.zeros((3, 4, 4), np.uint8)],
    ids=["float", "two-channels", "3d"],
)
def test_image_grid_rejects_bad_input(tmp_path, images):
    with pytest.raises(ValueError, match="expected uint8 NCHW images"):
        image_grid(images)
    with pytest.raises(ValueError, match="expected uint8 NCHW images"):
        save_image_grid(str(tmp_path / "grid.png"), images)
    assert os.listdir(tmp_path) == []
