"""Stimulus sets: set files load validated, render reproducibly, and name the set and entry when wrong."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from closedloop.errors import ClosedLoopError
from closedloop.stimuli import (
    NATURAL, StimulusSet, generate_pool, load_stimulus_set, render_stimulus, stimulus_id,
)
from closedloop.stimuli.natural import image_names, load_images

ROOT = Path(__file__).resolve().parents[2]
SETS = ROOT / "stimuli"


def write_set(path: Path, body: str, name: str = "test", seed: int = 0) -> Path:
    path.write_text(f'[set]\nname = "{name}"\nseed = {seed}\n\n{body}')
    return path


# ---------------------------------------------------------------- natural --
@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of real image files: PNG (RGB, RGBA), JPEG (greyscale), and files that are not images."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    thirds = np.zeros((10, 30, 3), np.uint8)  # wide: red | green | blue; the centre crop is green
    thirds[:, :10, 0] = thirds[:, 10:20, 1] = thirds[:, 20:, 2] = 255
    Image.fromarray(thirds).save(folder / "b_thirds.png")
    tall = np.zeros((40, 20), np.uint8)
    tall[10:30, :10], tall[10:30, 10:] = 200, 100  # tall: the centre crop is the bright band, split
    Image.fromarray(tall).save(folder / "a_tall.jpg", quality=95)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :8, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba).save(folder / "sub" / "c_alpha.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"ignored")
    return folder


def zipped(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(folder).as_posix())
    return path


def test_natural_folder_and_zip_round_trip(images, tmp_path):
    assert image_names(images) == ["a_tall.jpg", "b_thirds.png", "sub/c_alpha.png"]
    loaded = dict(load_images(images, 8, background=0.5))
    assert all(im.shape == (8, 8, 3) and im.dtype == np.uint8 for im in loaded.values())
    assert np.all(loaded["b_thirds.png"] == [0, 255, 0])  # centre-cropped to the green third
    tall = loaded["a_tall.jpg"].astype(int)  # the bright band, greyscale -> RGB
    assert np.all(np.abs(tall[:, 0] - 200) <= 3) and np.all(np.abs(tall[:, -1] - 100) <= 3) and tall.min() > 90
    alpha = loaded["sub/c_alpha.png"]
    assert np.all(alpha[:, 0] == [255, 0, 0]) and np.all(alpha[:, -1] == 128)  # transparency on the grey

    zipped(images, tmp_path / "images.zip")
    from_zip = dict(load_images(tmp_path / "images.zip", 8))
    assert list(from_zip) == list(loaded) and all(np.array_equal(from_zip[n], loaded[n]) for n in loaded)

    set_path = write_set(tmp_path / "natural.toml", '[[entry]]\nnatural = "images"\n\n'
                                                    '[[entry]]\nnatural = "images.zip"\ngaudy = true\n')
    pool = load_stimulus_set(set_path).render(8)
    assert pool.families == [NATURAL] * 5
    # the gaudy thirds (each channel constant) equal the thirds, so that one is kept once
    assert [p["file"] for p in pool.params] == ["a_tall.jpg", "b_thirds.png", "sub/c_alpha.png",
                                                "a_tall.jpg", "sub/c_alpha.png"]
    assert pool.params[0] == {"source": "images", "file": "a_tall.jpg"}
    assert pool.params[3] == {"source": "images.zip", "file": "a_tall.jpg", "gaudy": True}
    for name, image in zip(["a_tall.jpg", "b_thirds.png", "sub/c_alpha.png"], pool.images[:3]):
        assert np.array_equal(image, loaded[name])
    assert set(np.unique(pool.images[3:])) == {0, 255}
    for i in range(len(pool)):  # every member renders again from its recorded parameters
        again = render_stimulus(pool.families[i], pool.params[i], 8, base=tmp_path)
        assert stimulus_id(again) == pool.ids[i]


def test_natural_count_draws_reproducibly(images, tmp_path):
    set_path = write_set(tmp_path / "n.toml", '[[entry]]\nnatural = "images"\ncount = 2\n', seed=4)
    a, b = (load_stimulus_set(set_path).render(8) for _ in range(2))
    assert a.ids == b.ids and len(a) == 2
    files = [p["file"] for p in a.params]
    assert files == sorted(files)
    write_set(set_path, '[[entry]]\nnatural = "images"\ncount = 4\n')
    with pytest.raises(ClosedLoopError, match=r"entry 1 \(natural images\): count 4, but images holds 3 images"):
        load_stimulus_set(set_path)


@pytest.mark.parametrize("as_zip", [False, True])
def test_unreadable_image_names_set_entry_and_file(images, tmp_path, as_zip):
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    source = zipped(images, tmp_path / "images.zip").name if as_zip else "images"
    set_path = write_set(tmp_path / "bad.toml", f'[[entry]]\nfamily = "dot"\ncount = 3\n\n'
                                                f'[[entry]]\nnatural = "{source}"\n')
    stimulus_set = load_stimulus_set(set_path)  # listing the files works; reading them does not
    with pytest.raises(ClosedLoopError) as error:
        stimulus_set.render(8)
    message = str(error.value)
    assert message.startswith(f"stimulus set {set_path} entry 2 (natural {source}): ")
    assert "corrupt.png" in message and "unreadable image" in message and "\n" not in message


# ------------------------------------------------------------------ sets --
def test_a_set_renders_reproducibly_with_every_kind_of_entry(tmp_path):
    set_path = write_set(tmp_path / "mixed.toml", """
[[entry]]
family = "dot"
count = 12
fixed = {polarity = "dark"}

[[entry]]
family = "grating"
params = [{orientation = 0, frequency = 4}, {orientation = 90, frequency = 4}, {orientation = 0, frequency = 4}]
fixed = {contrast = 0.5}
gaudy = "both"

[[entry]]
family = "texture"
params = {seed = 5}
""", seed=3)
    stimulus_set = load_stimulus_set(set_path)
    assert stimulus_set.path == set_path and stimulus_set.info.seed == 3
    pool = stimulus_set.render(24, background=0.4)
    assert pool.ids == stimulus_set.render(24, background=0.4).ids
    assert pool.families.count("dot") == 12 and all(p["polarity"] == "dark" for p in pool.params[:12])
    gratings = [p for f, p in zip(pool.families, pool.params) if f == "grating"]
    assert len(gratings) == 4  # the repeated grating is kept once, each with and without gaudy
    assert [g["orientation"] for g in gratings] == [0, 0, 90, 90] and all(g["contrast"] == 0.5 for g in gratings)
    assert [g.get("gaudy", False) for g in gratings] == [False, True, False, True]
    assert pool.families[-1] == "texture" and pool.params[-1]["seed"] == 5
    plain = [i for i, p in enumerate(pool.params) if not p.get("gaudy")]
    assert np.all(pool.images[plain, 0, 0] == 102)  # the background, 0.4
    for i in range(len(pool)):
        assert stimulus_id(render_stimulus(pool.families[i], pool.params[i], 24, 0.4)) == pool.ids[i]
    # JSON-able, and back
    again = StimulusSet.model_validate(json.loads(stimulus_set.model_dump_json(by_alias=True)))
    assert again == stimulus_set
    # another seed draws other random members; the fixed ones stay
    other = StimulusSet.model_validate({**stimulus_set.model_dump(by_alias=True), "set": {"name": "t", "seed": 4}})
    assert other.render(24, 0.4).ids[:12] != pool.ids[:12] and other.render(24, 0.4).ids[12:] == pool.ids[12:]


def test_generate_pool_is_a_set_of_random_entries(tmp_path):
    pool = generate_pool({"dot": 5, "grating": 0, "texture": 4}, 16, seed=9, background=0.3)
    set_path = write_set(tmp_path / "random.toml", '[[entry]]\nfamily = "dot"\ncount = 5\n\n'
                                                   '[[entry]]\nfamily = "texture"\ncount = 4\n', seed=9)
    assert load_stimulus_set(set_path).render(16, background=0.3).ids == pool.ids


@pytest.mark.parametrize("body, expected", [
    ('[[entry]]\nfamily = "faces"\ncount = 3\n',
     "entry 1 (faces): unknown stimulus family 'faces'; known: contour, dot, grating, texture"),
    ('[[entry]]\nfamily = "dot"\ncount = 1\n[[entry]]\nfamily = "dot"\nparams = [{diameter = 0.1}, {size = 3}]\n',
     "entry 2 (dot), params 2: unknown parameter 'size' (known: count, diameter, positions, polarity, contrast)"),
    ('[[entry]]\nfamily = "grating"\nparams = [{frequency = 0}]\n',
     "entry 1 (grating), params 1: frequency: Input should be greater than 0"),
    ('[[entry]]\nfamily = "dot"\ncount = 2\nfixed = {contrast = 3}\n',
     "entry 1 (dot): contrast: Input should be less than or equal to 1"),
    ('[[entry]]\nfamily = "dot"\ncount = -2\n', "entry 1 (dot): count: Input should be greater than or equal to 0"),
    ('[[entry]]\nfamily = "dot"\ncount = 2\nparams = [{}]\n',
     "entry 1 (dot): give exactly one of count, params, standard, variants (got count, params)"),
    ('[[entry]]\nfamily = "dot"\ncolour = "red"\ncount = 1\n', "entry 1 (dot): unknown key 'colour'"),
    ('[[entry]]\nfamily = "dot"\nstandard = true\n', "entry 1 (dot): family 'dot' has no standard set"),
    ('[[entry]]\nnatural = "nowhere"\n', "entry 1 (natural nowhere): "),
    ('[[entry]]\nnatural = "nowhere"\nfamily = "dot"\n', "entry 1 (dot): a natural-image entry takes no 'family'"),
])
def test_set_errors_name_the_set_and_the_entry(tmp_path, body, expected):
    set_path = write_set(tmp_path / "broken.toml", body)
    with pytest.raises(ClosedLoopError) as error:
        load_stimulus_set(set_path)
    message = str(error.value)
    assert message.startswith(f"stimulus set {set_path} ") and "\n" not in message
    assert expected in message
    if "nowhere" in body and "family" not in body:
        assert str(tmp_path / "nowhere") in message and "not found" in message


def test_a_missing_set_file(tmp_path):
    with pytest.raises(ClosedLoopError, match=r"stimulus set .*missing.toml: not found"):
        load_stimulus_set(tmp_path / "missing.toml")


@pytest.mark.parametrize("text, message", [
    ("[set\nname = 1", r"not valid TOML"),
    ('[set]\nname = "x"\n', r"no \[\[entry\]\] tables"),
    ('[set]\nseed = 1\n[[entry]]\nfamily = "dot"\ncount = 1\n', r"\[set\] name: Field required"),
    ('[set]\nname = "x"\n[pool]\n[[entry]]\nfamily = "dot"\ncount = 1\n', r"unknown table 'pool'"),
])
def test_bad_set_files(tmp_path, text, message):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ClosedLoopError, match=rf"bad.toml: {message}"):
        load_stimulus_set(tmp_path / "bad.toml")


def test_a_set_that_renders_nothing(tmp_path):
    with pytest.raises(ClosedLoopError, match=r"zero.toml: no stimuli"):
        load_stimulus_set(write_set(tmp_path / "zero.toml", '[[entry]]\nfamily = "dot"\ncount = 0\n')).render(8)


# ------------------------------------------------------ the shipped sets --
def test_the_pasupathy_connor_set_is_the_standard_366():
    stimulus_set = load_stimulus_set(SETS / "pasupathy-connor.toml")
    pool = stimulus_set.render(32)
    assert pool.families == ["contour"] * 366 and len(set(pool.ids)) == 366


def test_the_demo_set_is_a_mixed_pool():
    pool = load_stimulus_set(SETS / "demo.toml").render(32)
    counts = {f: pool.families.count(f) for f in set(pool.families)}
    assert set(counts) == {"contour", "dot", "grating", "texture"}
    assert 350 <= counts["contour"] <= 400 and 250 <= counts["dot"] <= 300
    assert 120 <= counts["grating"] <= 150 and counts["texture"] == 150


def test_the_curvature_variants_set_renders():
    pool = load_stimulus_set(SETS / "curvature-variants.toml").render(64)
    assert set(pool.families) == {"contour"} and len(pool) == 28
    ends = [p["curvatures"][0] for p in pool.params if p["shape"] == 3]  # shape 3's element 0, varied
    assert ends[1:] == [-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 1.0]
    assert sum(p["shape"] == 20 and p["rotation"] == 90 for p in pool.params) == 5


def test_variants_and_standard_entries(tmp_path):
    set_path = write_set(tmp_path / "v.toml", """
[[entry]]
family = "contour"
standard = [0, 1, 365]
fixed = {size = 0.2, contrast = -1.0}

[[entry]]
family = "contour"
variants = {params = {shape = 3, size = 0.4}, element = [0, 2], curvature = [-0.2, 0.9]}
""")
    pool = load_stimulus_set(set_path).render(32)
    assert all((p["size"], p["contrast"]) == (0.2, -1.0) for p in pool.params[:3]) and pool.params[2]["shape"] == 51
    assert np.all(pool.images[0][16, 16] == 0)  # contrast -1: black
    variants = [(p["curvatures"][0], p["curvatures"][2]) for p in pool.params[3:]]
    assert len(variants) == 4 and variants[0][0] == -0.2 and variants[-1][1] == 0.9
    write_set(set_path, '[[entry]]\nfamily = "contour"\nvariants = {params = {shape = 3}, element = 9, '
                        'curvature = 0.5}\n')
    with pytest.raises(ClosedLoopError, match=r"v.toml entry 1 \(contour\): variants: element 9 out of range"):
        load_stimulus_set(set_path)
    write_set(set_path, '[[entry]]\nfamily = "contour"\nstandard = [400]\n')
    with pytest.raises(ClosedLoopError, match=r"entry 1 \(contour\): standard: index 400 out of range"):
        load_stimulus_set(set_path)
