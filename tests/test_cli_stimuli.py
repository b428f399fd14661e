"""``closedloop stimuli show``: a gallery PNG of a stimulus set; a bad set file is one line and status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from closedloop.stimuli.pool import GALLERY_LABEL, GALLERY_PAD, GALLERY_TITLE

ROOT = Path(__file__).resolve().parent.parent


def closedloop(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "closedloop", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_stimuli_show_writes_a_gallery(tmp_path):
    out = tmp_path / "pc.png"
    result = closedloop("stimuli", "show", ROOT / "stimuli" / "pasupathy-connor.toml", "--out", out,
                        "--size", 24, "--columns", 10, "--max", 45)
    assert result.returncode == 0, result.stderr
    assert "366 stimuli" in result.stdout and str(out) in result.stdout
    with Image.open(out) as sheet:
        assert sheet.format == "PNG"
        # 45 of them, 10 a row: 5 rows of 24-pixel images with captions
        assert sheet.size == (GALLERY_PAD + 10 * (24 + GALLERY_PAD),
                              GALLERY_TITLE + 5 * (24 + GALLERY_LABEL + GALLERY_PAD))
        pixels = np.asarray(sheet.convert("RGB"))
    first = pixels[GALLERY_TITLE:GALLERY_TITLE + 24, GALLERY_PAD:GALLERY_PAD + 24]
    assert np.all(first[0, 0] == 128) and np.any(first != 128)  # a contour on the background grey


def test_stimuli_show_by_name_and_all_of_a_set(tmp_path):
    set_path = tmp_path / "dots.toml"
    set_path.write_text('[set]\nname = "dots"\n[[entry]]\nfamily = "dot"\nparams = [{count = 1}, {count = 2}, '
                        '{count = 3}]\n[[entry]]\nfamily = "grating"\ncount = 4\n')
    result = closedloop("stimuli", "show", set_path, "--out", tmp_path / "dots.png", "--size", 16)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "dots.png") as sheet:  # 7 images: one row (16 columns by default)
        assert sheet.size == (GALLERY_PAD + 7 * (16 + GALLERY_PAD), GALLERY_TITLE + 16 + GALLERY_LABEL + GALLERY_PAD)
    result = closedloop("stimuli", "show", "curvature-variants", "--out", tmp_path / "cv.png", "--size", 16,
                        cwd=tmp_path)  # a bare name: the project's stimuli/curvature-variants.toml
    assert result.returncode == 0, result.stderr
    assert "curvature-variants.toml" in result.stdout and (tmp_path / "cv.png").exists()


def test_a_bad_set_file_is_one_line_and_status_2(tmp_path):
    set_path = tmp_path / "bad.toml"
    set_path.write_text('[set]\nname = "bad"\n[[entry]]\nfamily = "dot"\ncount = 2\n'
                        '[[entry]]\nfamily = "dot"\nparams = [{diameter = 0}]\n')
    result = closedloop("stimuli", "show", set_path, "--out", tmp_path / "bad.png")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("closedloop: error:")]
    assert lines == [f"closedloop: error: stimulus set {set_path} entry 2 (dot), params 1: "
                     f"diameter: Input should be greater than 0"], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "bad.png").exists()
    result = closedloop("stimuli", "show", tmp_path / "missing.toml", "--out", tmp_path / "m.png")
    assert result.returncode == 2 and f"stimulus set {tmp_path / 'missing.toml'}: not found" in result.stderr
