"""``load_pool``: every kind of pool a command takes, read into one StimulusPool."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from closedloop.errors import ClosedLoopError
from closedloop.stimuli import generate_pool
from closedloop.stimuli.load import load_pool


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_shipped_set_by_name_renders_at_the_size_asked():
    pool, what = load_pool("pasupathy-connor", 16)
    assert len(pool) == 366 and pool.images.shape[1:] == (16, 16, 3)
    assert set(pool.families) == {"contour"} and what == "pasupathy-connor (366 images, 16 px)"


def test_a_saved_pool_keeps_its_size_families_and_params(tmp_path):
    saved = generate_pool({"dot": 5, "grating": 5}, 24, seed=1)
    saved.save(tmp_path / "pool.npz")
    pool, what = load_pool(tmp_path / "pool.npz", 112)
    assert pool.ids == saved.ids and pool.families == saved.families and pool.params == saved.params
    assert "pool.npz (10 images, 24 px)" == what


def test_any_npz_with_images_is_a_pool(tmp_path):
    images = np.random.default_rng(2).uniform(0, 255, (4, 8, 8, 3))
    np.savez(tmp_path / "raw.npz", images=images)
    pool, _ = load_pool(tmp_path / "raw.npz")
    assert np.array_equal(pool.images, np.rint(images).astype(np.uint8))
    assert pool.families == ["image"] * 4 and pool.params[3] == {"index": 3}


def test_a_folder_or_zip_of_images_are_natural_stimuli(photos, tmp_path):
    pool, _ = load_pool(photos, 20)
    assert len(pool) == 3 and pool.images.shape == (3, 20, 20, 3)
    assert pool.families == ["natural"] * 3 and [p["file"] for p in pool.params] == ["0.png", "1.png", "2.png"]
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        for path in sorted(photos.iterdir()):
            archive.write(path, path.name)
    zipped, _ = load_pool(tmp_path / "photos.zip", 20)
    assert zipped.ids == pool.ids


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "absent.toml", "not found"),
    (lambda p: (p / "pool.csv").write_text("1,2") and p / "pool.csv", "not a stimulus set (.toml)"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "empty pool"),
    (lambda p: np.savez(p / "x.npz", pixels=np.zeros(3)) or p / "x.npz", "no 'images' array"),
    (lambda p: np.savez(p / "x.npz", images=np.zeros((2, 8, 8))) or p / "x.npz", "expected (K, H, W, 3)"),
    (lambda p: np.savez(p / "x.npz", images=np.zeros((0, 8, 8, 3))) or p / "x.npz", "empty pool (0 images)"),
    (lambda p: (p / "x.npz").write_bytes(b"garbage") and p / "x.npz", "unreadable"),
])
def test_bad_pools_are_one_line_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ClosedLoopError) as error:
        load_pool(path, 16)
    assert str(path) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)
