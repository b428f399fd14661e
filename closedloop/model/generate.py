"""Ground truth for tests and benchmarks: random images and models with realistic internals."""

from __future__ import annotations

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
