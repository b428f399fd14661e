"""Ground truth for tests and benchmarks: random images and models with realistic internals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def random_images(count: int, px: int, seed: int = 0) -> np.ndarray:
    """(count, px, px, 3) uint8 images of uniform random pixels, reproducibly."""
    return np.random.default_rng(seed).integers(0, 256, (count, px, px, 3), dtype=np.uint8)


def randomise_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm of ``module`` non-trivial statistics and affine terms (in place), so
    that folding and export are really exercised; returns the module in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return module.eval()


def generate_sessions(folder: Path | str, neurons: dict[str, int], images: int = 40, trials: tuple[str, ...] = (),
                      repeats: int = 6, seed: int = 0) -> Path:
    """Recorded sessions with known ground truth, in the shared V4 data's layout, for tests.

    Each session ``name`` gets ``images`` generated stimuli (contours, dots, gratings, textures) in
    ``images_<name>.zip`` (PNG, lossless) and ``responses_repeat_averaged_<name>.npy``: the means of
    ``repeats`` Poisson counts per image whose rate is a smooth function of the image (each
    neuron prefers a random colour and position: its rate, in spikes per window, rises with how
    much of that colour lies near that position). Sessions in ``trials`` also get
    ``responses_raw_<name>.npy`` with the single trials, the last repeat unused (NaN) on every
    other image. Returns ``folder``.
    """
    import io
    import zipfile

    from PIL import Image

    from closedloop.model.compress import generated_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s, (name, count) in enumerate(neurons.items()):
        pixels = generated_images(images, seed + s)
        with zipfile.ZipFile(folder / f"images_{name}.zip", "w") as archive:
            for i, image in enumerate(pixels):
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG")
                archive.writestr(f"image{i + 1:04d}.png", png.getvalue())
        side = pixels.shape[1]
        yy, xx = np.mgrid[0:side, 0:side] / side
        rates = np.empty((count, images))
        for n in range(count):
            colour = rng.dirichlet(np.ones(3))
            cy, cx = rng.uniform(0.3, 0.7, size=2)
            window = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
            drive = np.einsum("kyxc,c,yx->k", pixels / 255.0, colour, window) / window.sum()
            rates[n] = 0.5 + 6 * (drive - drive.min()) / max(np.ptp(drive), 1e-9)
        single = rng.poisson(rates[..., None], size=(count, images, repeats)).astype(np.float64)
        if name in trials:
            single[:, 1::2, -1] = np.nan
            np.save(folder / f"responses_raw_{name}.npy", single)
        np.save(folder / f"responses_repeat_averaged_{name}.npy", np.nanmean(single, axis=2))
    return folder
