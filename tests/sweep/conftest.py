"""Generated data for the sweep tests: tiny compact models in the published format, pools of random
images, a converted recording; so most sweep tests run without the shared V4 data."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from closedloop.model.compact import CompactModel
from closedloop.model.generate import random_images, randomise_batchnorm
from closedloop.stimuli import StimulusPool

FILTERS = (2, 3, 2, 2, 2)  # a tiny compact model: fast to rate images with and to make features of


def write_published(folder: Path, name: str, seed: int) -> Path:
    """A random compact model of ``FILTERS`` saved as the published models are (float64 state dict
    and its ``.nums_filters.npy``)."""
    torch.manual_seed(seed)
    model = randomise_batchnorm(CompactModel(FILTERS), seed)
    path = folder / f"{name}.pt"
    torch.save({k: v.double() for k, v in model.state_dict().items()}, path)
    np.save(folder / f"{name}.nums_filters.npy", np.array(FILTERS))
    return path


def save_pool(path: Path, count: int, seed: int) -> Path:
    """``count`` random 112 px images as a saved pool (.npz)."""
    StimulusPool(random_images(count, 112, seed), ["natural"] * count, [{}] * count).save(path)
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """``twins``: a folder of 4 tiny compact models; ``pool``: 60 random images; ``heldout``: 20."""
    root = tmp_path_factory.mktemp("sweep-data")
    (root / "twins").mkdir()
    for k in range(4):
        write_published(root / "twins", f"compact_model_000000_neuron{k}", k)
    return {"twins": root / "twins", "pool": save_pool(root / "pool.npz", 60, 1),
            "heldout": save_pool(root / "heldout.npz", 20, 2)}


@pytest.fixture(scope="session")
def recording(tmp_path_factory) -> Path:
    """A folder holding a V4-format recording (``sessions/responses_raw_000001.npy``: Poisson counts of
    3 neurons to 24 random images, 3 repeats each; ``sessions/images_000001.zip``), for
    :func:`closedloop.replay.convert.convert_v4`."""
    root = tmp_path_factory.mktemp("recording")
    (root / "sessions").mkdir()
    rng = np.random.default_rng(0)
    images = random_images(24, 112, 3)
    np.save(root / "sessions" / "responses_raw_000001.npy",
            rng.poisson(rng.uniform(1, 6, (3, 24, 1)), (3, 24, 3)).astype(float))
    with zipfile.ZipFile(root / "sessions" / "images_000001.zip", "w") as archive:
        for k, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            archive.writestr(f"image{k:03d}.png", buffer.getvalue())
    return root
