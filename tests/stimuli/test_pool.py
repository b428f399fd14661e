"""The stimulus pool: generated reproducibly, addressed by content hash, saved and loaded."""

from __future__ import annotations

import numpy as np
import pytest

from closedloop.errors import ClosedLoopError
from closedloop.stimuli import StimulusPool, generate_pool, stimulus_id


def test_generate_pool_is_reproducible_and_hashed():
    a = generate_pool({"contour": 10, "dot": 5, "grating": 5, "texture": 5}, 32, seed=7)
    b = generate_pool({"contour": 10, "dot": 5, "grating": 5, "texture": 5}, 32, seed=7)
    c = generate_pool({"contour": 10, "dot": 5, "grating": 5, "texture": 5}, 32, seed=8)
    assert a.ids == b.ids and a.ids != c.ids
    assert len(set(a.ids)) == len(a) == 25
    assert a.families.count("contour") == 10
    for i in (0, 12, 24):
        assert a.index(a.ids[i]) == i
        assert a[i].id == a.ids[i] == stimulus_id(a.images[i])


def test_stimulus_id_is_a_content_hash():
    image = np.zeros((8, 8, 3), np.uint8)
    changed = image.copy()
    changed[3, 3, 1] = 1
    assert stimulus_id(image) == stimulus_id(image.copy())
    assert stimulus_id(image) != stimulus_id(changed)
    assert stimulus_id(image) != stimulus_id(np.zeros((4, 16, 3), np.uint8))  # same bytes, other shape


def test_save_load_round_trip(tmp_path):
    pool = generate_pool({"dot": 4, "grating": 3}, 24, seed=1)
    pool.save(tmp_path / "pool.npz")
    back = StimulusPool.load(tmp_path / "pool.npz")
    assert back.ids == pool.ids and back.params == pool.params and back.families == pool.families


def test_bad_pools(tmp_path):
    with pytest.raises(ClosedLoopError, match="unknown stimulus family 'faces'"):
        generate_pool({"faces": 3}, 24, seed=0)
    with pytest.raises(ClosedLoopError, match="empty"):
        generate_pool({"dot": 0}, 24, seed=0)
    with pytest.raises(ClosedLoopError, match="missing.npz: not found"):
        StimulusPool.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ClosedLoopError, match="junk.npz: unreadable"):
        StimulusPool.load(tmp_path / "junk.npz")


def test_gallery_is_a_captioned_grid():
    from closedloop.stimuli.pool import GALLERY_LABEL, GALLERY_PAD, GALLERY_TITLE

    pool = generate_pool({"dot": 6, "grating": 5}, 20, seed=0)
    sheet = pool.gallery(columns=4)
    assert sheet.size == (GALLERY_PAD + 4 * (20 + GALLERY_PAD), GALLERY_TITLE + 3 * (20 + GALLERY_LABEL + GALLERY_PAD))
    pixels = np.asarray(sheet)
    for i in (0, 5, 10):  # each image is pasted in its cell
        row, column = divmod(i, 4)
        x, y = GALLERY_PAD + column * (20 + GALLERY_PAD), GALLERY_TITLE + row * (20 + GALLERY_LABEL + GALLERY_PAD)
        assert np.array_equal(pixels[y:y + 20, x:x + 20], pool.images[i])
        caption = pixels[y + 20:y + 20 + GALLERY_LABEL, x:x + 20]
        assert caption.max() > 200  # a caption is written under it
    assert pool.gallery(columns=4, limit=3).size == (GALLERY_PAD + 3 * 24,
                                                     GALLERY_TITLE + 20 + GALLERY_LABEL + GALLERY_PAD)
    assert pool.label(0) == "0 dot"
