"""Still images: reading one as RGB, and gathering image files from folders and file lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pdmtrack.errors import InputError
from pdmtrack.video import IMAGE_SUFFIXES, rgb_pixels


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (16-bit greyscale scaled to 8 bits)."""
    try:
        with Image.open(path) as image:
            return np.array(rgb_pixels(image))
    except FileNotFoundError:
        raise InputError(path, "image not found") from None
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(path, f"cannot read the image ({err})") from err


def list_images(inputs: Sequence[Path], what: str = "images") -> list[Path]:
    """Image files named in ``inputs``: files as given, folders searched recursively (sorted,
    hidden files skipped). A missing input, or nothing found, is an InputError."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        elif item.is_file():
            found.append(item)
        else:
            raise InputError(item, "not found")
    if not found:
        names = ", ".join(str(p) for p in inputs)
        raise InputError(names or what, f"no {what} found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found
