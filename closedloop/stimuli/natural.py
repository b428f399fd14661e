"""Natural-image pools: every image file in a folder or a zip, as square RGB stimuli.

Files are taken in sorted order of their path inside the folder or zip
(subfolders included, ``/``-separated). A file counts as an image when Pillow
knows its extension (``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.bmp``,
``.webp``, ...); other files and hidden ones (``.DS_Store``, ``__MACOSX/``)
are skipped. Each image is turned upright (EXIF orientation), centre-cropped
to a square, resized to ``size_px`` with a Lanczos filter and converted to
RGB uint8; transparent pixels are laid on the background grey. A file that
Pillow cannot read is a :class:`ClosedLoopError` naming it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from closedloop.errors import ClosedLoopError
from closedloop.stimuli.families import grey


def _is_image(name: str) -> bool:
    parts = name.split("/")
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return Image.registered_extensions().get(Path(name).suffix.lower()) in Image.OPEN


def image_names(source: Path | str) -> list[str]:
    """The image files in a folder or a ``.zip``, sorted, as paths inside it (``/``-separated)."""
    source = Path(source)
    if not source.exists():
        raise ClosedLoopError(f"{source}: not found")
    if source.is_dir():
        names = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()]
    else:
        try:
            with zipfile.ZipFile(source) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise ClosedLoopError(f"{source}: not a folder or a readable zip file ({exc})") from None
    names = sorted(n for n in names if _is_image(n))
    if not names:
        raise ClosedLoopError(f"{source}: no image files")
    return names


def to_stimulus(image: Image.Image, size_px: int, background: float = 0.5) -> np.ndarray:
    """An image centre-cropped to a square and resized to (size_px, size_px, 3) uint8 RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float greyscale: scale to 8 bits
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and values.max() > 255 else max(float(values.max()), 255.0)
        image = Image.fromarray(np.clip(np.rint(values * 255 / top), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (grey(background),) * 3 + (255,))
        image.alpha_composite(rgba)
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size_px, size_px), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def _decode(data: bytes, where: str, size_px: int, background: float) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_stimulus(image, size_px, background)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ClosedLoopError(f"{where}: unreadable image ({reason})") from None


def load_images(source: Path | str, size_px: int, background: float = 0.5,
                names: list[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, image)`` for each image file in a folder or zip (or just ``names``), in sorted order."""
    source = Path(source)
    names = image_names(source) if names is None else names
    if source.is_dir():
        for name in names:
            try:
                data = (source / name).read_bytes()
            except OSError as exc:
                raise ClosedLoopError(f"{source / name}: unreadable ({exc.strerror or exc})") from None
            yield name, _decode(data, str(source / name), size_px, background)
        return
    try:
        with zipfile.ZipFile(source) as archive:
            for name in names:
                try:
                    data = archive.read(name)
                except KeyError:
                    raise ClosedLoopError(f"{source}:{name}: not in the zip file") from None
                except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # CRC errors, encrypted members
                    raise ClosedLoopError(f"{source}:{name}: unreadable ({exc})") from None
                yield name, _decode(data, f"{source}:{name}", size_px, background)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ClosedLoopError(f"{source}: not a folder or a readable zip file ({exc})") from None


def load_image(source: Path | str, name: str, size_px: int, background: float = 0.5) -> np.ndarray:
    """One image of a folder or zip, rendered as :func:`load_images` renders it."""
    ((_, image),) = load_images(source, size_px, background, names=[name])
    return image
