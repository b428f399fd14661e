"""Distil and prune a multi-million-parameter teacher into a compact model (closedloop compress).

Without ``--teacher`` the bench builds one: a wide CNN (five convolutions, 48-96-192-384-512
filters, then dense 25088 -> 128 -> 1; about 5.9 million parameters) fitted briefly to mimic a
published compact model of a V4 neuron (``--twin``) on generated stimuli, so the teacher has
V4-like tuning. It is written as ONNX (TorchScript when the export fails) and read back with
``load_model``, as any teacher file would be. The student is then distilled from the teacher's
responses to augmented images of the pool (generated stimuli, or ``--images``), pruned layer by
layer (the kept filters explain >= 90 % of each layer's output variance) and retrained.

Prints the teacher's parameters and its accuracy against the twin, the student's parameters
before and after pruning, the compression ratio, held-out r and R^2 against the teacher, and the
wall time of each part.

    python bench/compression.py          # the built teacher: 2-3 min on 2 idle cores, ~8 min on busy ones
    python bench/compression.py --teacher big.onnx --images stimuli/demo.toml
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from closedloop.model.compress import (CompressConfig, accuracy, count_parameters, compress,
                                       generated_images, resize_images)
from closedloop.model.models import load_model, save_model
from closedloop.stimuli.load import load_pool

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT.parent / "shared" / "v4" / "compact_models" / "compact_model_190923_neuron10.pt"


class WideTeacher(nn.Module):
    """(B, 112, 112, 3) pixels 0-255 -> (B, 1): five conv + BN + ReLU layers, two dense layers."""

    input_px = 112

    def __init__(self, widths=(48, 96, 192, 384, 512), hidden: int = 128):
        super().__init__()
        layers, channels = [], 3
        for i, width in enumerate(widths):
            kernel, stride = (5, 2) if i == 0 else (3, 2 if i < 4 else 1)
            layers += [nn.Conv2d(channels, width, kernel, stride, padding=kernel // 2, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(7 * 7 * channels, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).permute(0, 3, 1, 2) / 127.5 - 1.0
        return self.head(self.features(x))


def build_teacher(twin_path: Path, images: np.ndarray, steps: int, batch: int, out: Path,
                  seed: int) -> tuple[Path, dict]:
    """Fit a WideTeacher to the twin's responses on ``images``; write it; return its file and figures."""
    twin = load_model(twin_path)
    started = time.monotonic()
    y = twin.predict(images, batch_size=64)[:, 0]
    z = (y - y.mean()) / y.std()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    held, fit = order[:len(images) // 10], order[len(images) // 10:]
    torch.manual_seed(seed)
    teacher = WideTeacher()
    dense = teacher.head[1]  # Adam moves all 25088 x 128 weights at once: a smaller step for them
    others = [p for p in teacher.parameters() if all(p is not q for q in dense.parameters())]
    optimiser = torch.optim.Adam([{"params": others, "base": 1e-3},
                                  {"params": list(dense.parameters()), "base": 1e-2 / dense.in_features ** 0.5}])
    teacher.train()
    target = torch.as_tensor(z, dtype=torch.float32)
    losses = []
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = group["base"] * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        idx = np.sort(rng.choice(fit, size=batch, replace=False))
        x = torch.from_numpy(images[idx]).float()
        flip = torch.rand(()) < 0.5  # the teacher sees flipped images too, as the student will
        loss = F.mse_loss(teacher(x.flip(2) if flip else x)[:, 0], target[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"  teacher fit: step {step + 1}/{steps}, loss {np.mean(losses[-max(1, steps // 5):]):.3f}, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    teacher.eval()
    with torch.inference_mode():
        predicted = torch.cat([teacher(torch.from_numpy(images[held[i:i + 64]]).float())[:, 0]
                               for i in range(0, len(held), 64)]).numpy()
    r, _ = accuracy(predicted, z[held])
    path = out / "wide_teacher.onnx"
    try:
        from closedloop.model.export import export_onnx

        export_onnx(teacher, path, input_px=112, name="wide-teacher")
    except Exception as error:  # noqa: BLE001 - fall back to TorchScript
        print(f"  ONNX export failed ({error}); writing TorchScript instead")
        path = out / "wide_teacher.torchscript.pt"
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(teacher, torch.zeros(2, 112, 112, 3)), str(path))
    return path, {"twin": twin.name, "twin_parameters": count_parameters(twin), "r_twin": r,
                  "fit_images": len(fit), "held": len(held), "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=None, help="teacher file (default: build one)")
    parser.add_argument("--images", type=Path, default=None,
                        help="image pool (.toml, .npz, folder/zip); default: --generate generated stimuli")
    parser.add_argument("--generate", type=int, default=1200, help="generated stimuli when no --images")
    parser.add_argument("--twin", type=Path, default=TWIN, help="published model the built teacher mimics")
    parser.add_argument("--teacher-steps", type=int, default=80, help="minibatches fitting the built teacher")
    defaults = CompressConfig()  # the settings of `closedloop compress`
    for name in ("output", "filters", "threshold", "images_n", "steps", "prune_steps", "final_steps", "batch",
                 "seed"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            help=f"default {value}")
    parser.add_argument("--out", type=Path, default=None, help="folder for the teacher and student files")
    args = parser.parse_args()

    wall = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="closedloop-compression-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.images:
        pool = resize_images(load_pool(args.images)[0].images)
    else:
        pool = generated_images(args.generate, args.seed)
    print(f"pool: {len(pool)} images ({args.images or 'generated'}); torch threads {torch.get_num_threads()}")
    built = None
    teacher_path = args.teacher
    if teacher_path is None:
        if not args.twin.exists():
            raise SystemExit(f"no --teacher given and the twin {args.twin} is missing; pass --teacher or --twin")
        print(f"building a teacher that mimics {args.twin.name} ...", flush=True)
        fit_images = generated_images(args.generate, args.seed + 1)  # not the pool the student sees
        teacher_path, built = build_teacher(args.twin, fit_images, args.teacher_steps, 32, out, args.seed)
    teacher = load_model(teacher_path)
    config = CompressConfig(filters=args.filters, threshold=args.threshold, output=args.output,
                            images_n=args.images_n, steps=args.steps, prune_steps=args.prune_steps,
                            final_steps=args.final_steps, batch=args.batch, seed=args.seed)
    print(f"compressing {teacher_path} ({config}) ...", flush=True)
    result = compress(teacher, pool, config, log=lambda line: print(f"  {line}", flush=True))
    student_path = out / "student.pt"
    save_model(result.student, student_path, name="student", metadata=result.metadata())

    print()
    if built:
        print(f"teacher: wide CNN fitted in {built['seconds']:.0f} s to the published model {built['twin']} "
              f"({built['twin_parameters']:,} parameters) on {built['fit_images']} other generated images; "
              f"held-out r vs the twin {built['r_twin']:.3f} ({built['held']} images)")
    print(result.report())
    print(f"teacher file {teacher_path}; student file {student_path}")
    print(f"total wall time {time.monotonic() - wall:.0f} s (compress {result.seconds:.0f} s)")


if __name__ == "__main__":
    main()
