"""The teacher: a residual network with one readout per recorded neuron (Cowley et al. 2026).

The compact models of the paper were distilled from a large model trained on recorded V4
responses. :class:`Teacher` is closedloop's version of that large model, trained from scratch
on the recorded sessions (:mod:`closedloop.model.teacher_training`):

* **trunk**: an ImageNet-style residual network (He et al. 2016): a 5x5 stem convolution with
  stride 2 (112 -> 56 px), then four stages of basic residual blocks (two 3x3 convolutions,
  BatchNorm, ReLU, an identity or 1x1 shortcut) with ``widths`` channels, the first stage at
  stride 1 and the others at stride 2 (56 -> 28 -> 14 -> 7 px);
* **features**: stage 3's maps (14 x 14) and stage 4's, upsampled to 14 x 14, concatenated;
* **readouts**: one factorised readout per neuron (Klindt et al. 2017): a spatial mask
  (14 x 14 weights) times feature weights (one per channel) plus a bias, so each neuron costs
  14 * 14 + channels + 1 parameters instead of 14 * 14 * channels;
* **units**: the readouts learn z-scored responses; the stored per-neuron mean and standard
  deviation (buffers) turn them back into spike counts in the response window, so the teacher,
  and every student distilled from it, answers in spike counts.

Input: (B, 112, 112, 3) RGB pixels 0-255, channels last, like every closedloop image model;
the channel means of the compact models are subtracted and the result scaled by 1/64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from closedloop.model.compact import CHANNEL_MEANS, INPUT_PX

FEATURE_PX = 14
"""Side of the maps the readouts read (stage 3's, 112 / 8), pixels."""

PIXEL_SCALE = 64.0
"""Mean-subtracted pixels are divided by this before the stem (about unit variance)."""


class Block(nn.Module):
    """A basic residual block: two 3x3 convolutions with BatchNorm and ReLU, and a shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Teacher(nn.Module):
    """A residual trunk shared by every neuron and a factorised readout per neuron.

    Parameters
    ----------
    neurons : int
        Outputs: one per recorded neuron.
    widths : 4 ints
        Channels of the four stages.
    blocks : 4 ints
        Residual blocks per stage (2, 2, 2, 2 is ResNet-18's).
    """

    input_px = INPUT_PX

    def __init__(self, neurons: int, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if len(widths) != 4 or len(blocks) != 4 or min(widths) < 1 or min(blocks) < 1 or neurons < 1:
            raise ValueError(f"a teacher needs neurons >= 1 and four positive widths and block counts, got "
                             f"neurons={neurons}, widths={widths}, blocks={blocks}")
        self.neurons, self.widths, self.blocks = int(neurons), tuple(widths), tuple(blocks)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 5, 2, 2, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, inputs = [], widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            layers = []
            for b in range(count):
                layers.append(Block(inputs, width, 2 if (b == 0 and stage > 0) else 1))
                inputs = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        channels = widths[2] + widths[3]
        self.mask = nn.Parameter(torch.randn(neurons, FEATURE_PX * FEATURE_PX) / FEATURE_PX)
        self.weight = nn.Parameter(torch.randn(neurons, channels) / channels ** 0.5)
        self.bias = nn.Parameter(torch.zeros(neurons))
        self.register_buffer("response_mean", torch.zeros(neurons))
        self.register_buffer("response_std", torch.ones(neurons))
        self.register_buffer("channel_means", torch.tensor(CHANNEL_MEANS).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 112, 112, 3) pixels 0-255 -> (B, channels, 14, 14): stage 3's and stage 4's maps."""
        x = (images.to(self.mask.dtype).permute(0, 3, 1, 2) - self.channel_means) / PIXEL_SCALE
        x = self.stages[0](self.stem(x))
        x = self.stages[1](x)
        third = self.stages[2](x)
        fourth = F.interpolate(self.stages[3](third), size=third.shape[-2:], mode="nearest")
        return torch.cat([third, fourth], 1)

    def standardised(self, images: torch.Tensor) -> torch.Tensor:
        """(B, neurons) z-scored responses (what training fits)."""
        maps = self.features(images).flatten(2)  # (B, C, 196)
        spatial = torch.einsum("bcp,np->bnc", maps, self.mask)
        return (spatial * self.weight).sum(-1) + self.bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 112, 112, 3) RGB pixels 0-255 -> (B, neurons) predicted spike counts."""
        return self.standardised(images) * self.response_std + self.response_mean


def teacher_args(model: Teacher) -> dict:
    """Constructor arguments, as :func:`closedloop.model.models.save_model` stores them."""
    return {"neurons": model.neurons, "widths": list(model.widths), "blocks": list(model.blocks)}


def build_teacher(args: dict) -> Teacher:
    """A teacher from :func:`teacher_args`."""
    return Teacher(args["neurons"], tuple(args["widths"]), tuple(args["blocks"]))
