"""Still images: reading one as RGB, gathering image files from folders and file lists, and
naming their outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pdmtrack.errors import InputError
from pdmtrack.io.video import IMAGE_SUFFIXES, rgb_pixels


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
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        elif item.is_file():
            found.append(item)
        else:
            raise InputError(item, "not found")
    if not found:
        names = ", ".join(str(p) for p in inputs)
        raise InputError(names or what, f"no {what} found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Per image, the stem its outputs are named by: its file stem, unless another image has
    the same one; those are named by their path below the images' common folder, with "_"
    for "/" (``dog/00000.jpg``, ``goat/00000.jpg`` -> ``dog_00000``, ``goat_00000``), and
    with the extension too when that is still not enough (``a.jpg``, ``a.png`` -> ``a_jpg``,
    ``a_png``). An image given twice, or names that still collide, are an InputError."""
    seen: dict[Path, Path] = {}
    for given in map(Path, paths):
        first = seen.setdefault(given.resolve(), given)
        if first is not given:
            raise InputError(given, "is given twice" + ("" if first == given else f" (also as {first})"))
    absolute = [Path(path).absolute() for path in paths]
    common = Path(os.path.commonpath([path.parent for path in absolute])) if absolute else Path()
    choices = [_stem_choices(path, common) for path in absolute]
    level = [0] * len(paths)
    while True:
        stems = [options[at] for options, at in zip(choices, level)]
        clashing = [i for i, stem in enumerate(stems) if stems.count(stem) > 1]
        if not clashing:
            return stems
        for i in clashing:
            if level[i] + 1 == len(choices[i]):
                raise InputError(paths[i], f"its outputs would be named {stems[i]} like another image's; rename one of them")
            level[i] += 1


def _stem_choices(path: Path, common: Path) -> list[str]:
    """Output stems of ``path`` from the shortest: its stem, its path below ``common``
    without and with the extension."""
    below = path.relative_to(common).with_suffix("")
    choices = [path.stem, "_".join(below.parts)]
    if path.suffix:
        choices.append(f"{choices[-1]}_{path.suffix.lstrip('.')}")
    return choices
