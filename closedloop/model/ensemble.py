"""An ensemble of compact CNNs with a shared core and per-neuron readouts.

Each member follows the compact architecture of Cowley et al. (2026): a full
5x5 convolution, then four depthwise-separable 5x5 layers (the first two with
stride 2), each with BatchNorm and ReLU. The members' cores run side by side
as one grouped network, so a single pass scores every member. Each member has
a factorised readout per neuron (a spatial mask times channel weights) and a
softplus output: the expected spike count in the response window.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def to_model_input(images: np.ndarray, input_px: int) -> torch.Tensor:
    """Turn (B, N, N, 3) uint8 images into (B, 3, input_px, input_px) floats in [-1, 1]."""
    return pixels_to_input(torch.from_numpy(np.ascontiguousarray(images)).float(), input_px)


def pixels_to_input(pixels: torch.Tensor, input_px: int) -> torch.Tensor:
    """:func:`to_model_input` for float pixels (B, N, N, 3), 0-255, differentiably."""
    x = pixels.permute(0, 3, 1, 2) / 127.5 - 1.0
    if x.shape[-1] != input_px:
        x = F.interpolate(x, size=(input_px, input_px), mode="area")
    return x


class _SeparableLayer(nn.Module):
    """Depthwise 5x5 (stride 1 or 2) then grouped pointwise 1x1, BatchNorm, ReLU."""

    def __init__(self, members: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.pad = (1, 2, 1, 2) if stride == 2 else (2, 2, 2, 2)
        self.depth = nn.Conv2d(members * c_in, members * c_in, 5, stride, groups=members * c_in, bias=False)
        self.point = nn.Conv2d(members * c_in, members * c_out, 1, groups=members)
        self.bn = nn.BatchNorm2d(members * c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.point(self.depth(F.pad(x, self.pad)))))


class CompactEnsemble(nn.Module):
    """``members`` compact CNNs predicting ``neurons`` spike counts.

    Parameters
    ----------
    neurons : int
        Number of recorded units predicted by every member.
    members : int
        Ensemble size; members differ by initialisation (and, in training,
        by bootstrap weights).
    input_px : int
        Side of the (downsampled) model input, pixels; divisible by 4.
    channels : tuple of 5 ints
        Filters per layer of each member's core.
    seed : int
        Seed of the initialisation.
    """

    def __init__(self, neurons: int, members: int = 5, input_px: int = 56,
                 channels: tuple[int, ...] = (16, 16, 16, 16, 16), seed: int = 0):
        super().__init__()
        if input_px % 4:
            raise ValueError(f"input_px must be divisible by 4, got {input_px}")
        torch.manual_seed(seed)
        self.members, self.neurons, self.input_px = members, neurons, input_px
        c0, c1, c2, c3, c4 = channels
        self.conv0 = nn.Conv2d(3, members * c0, 5, padding=2)
        self.bn0 = nn.BatchNorm2d(members * c0)
        self.layers = nn.Sequential(
            _SeparableLayer(members, c0, c1, 2),
            _SeparableLayer(members, c1, c2, 2),
            _SeparableLayer(members, c2, c3, 1),
            _SeparableLayer(members, c3, c4, 1),
        )
        self.channels_out = c4
        side = input_px // 4
        self.mask = nn.Parameter(torch.randn(members, neurons, side * side) * 0.1)
        self.weights = nn.Parameter(torch.randn(members, neurons, c4) * 0.1)
        self.bias = nn.Parameter(torch.zeros(members, neurons))

    @property
    def parameters_per_member(self) -> int:
        """Trainable parameters of one member (core plus its readouts)."""
        return sum(p.numel() for p in self.parameters()) // self.members

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Core output for model input ``x``: (B, members, channels * side * side)."""
        h = F.relu(self.bn0(self.conv0(x)))
        h = self.layers(h)
        return h.reshape(h.shape[0], self.members, -1)

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        """Expected counts (B, members, neurons) from core features."""
        w = self.weights[..., :, None] * self.mask[..., None, :]  # (M, N, C, S*S)
        w = w.reshape(self.members, self.neurons, -1)
        out = torch.einsum("bmd,mnd->bmn", features, w) + self.bias
        return F.softplus(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(x))
