"""DAVIS 2017 dataset reader: the folder layout, validated, and its annotation PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pdmtrack.errors import InputError
from pdmtrack.io.files import is_safe_component

VOID_ID = 255  # DAVIS annotations mark void pixels with 255; upstream scores them as background


def read_indexed_png(path: Path) -> np.ndarray:
    """Pixel values of a single-channel PNG (palette indices for mode P)."""
    try:
        with Image.open(path) as image:
            values = np.array(image)
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(path, f"cannot read the PNG ({err})") from err
    if values.ndim != 2:
        raise InputError(path, f"expected an indexed (palette) or grey PNG, got a {values.shape[-1]}-channel image")
    return values


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(path, f"cannot read the image ({err})") from err
    return height, width


def read_split_file(path: Path) -> list[str]:
    """The sequence names of a split file, one per line (blank lines ignored). Not UTF-8 text,
    no names, a name listed twice or a name that is not a plain folder name (a path
    separator, '.', '..') is an ``InputError`` naming the line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not UTF-8 text (byte {err.start}); a split file lists one sequence name per line") from err
    except OSError as err:
        raise InputError(path, f"cannot read the split file ({err.strerror or err})") from err
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if not is_safe_component(name):
            raise InputError(path, f"line {number}: '{name}' is not a sequence folder name (no '/', '\\', '.' or '..')")
        if name in first_line:
            raise InputError(path, f"line {number}: '{name}' is listed again (first on line {first_line[name]})")
        first_line[name] = number
    if not first_line:
        raise InputError(path, "lists no sequences")
    return list(first_line)


class DavisDataset:
    """A DAVIS 2017 folder (JPEGImages/, Annotations/, ImageSets/2017/<split>.txt), validated."""

    def __init__(self, root: Path, split: str = "val", sequences: list[str] | None = None, resolution: str = "480p") -> None:
        self.root = Path(root)
        self.split = split
        self.resolution = resolution
        if not self.root.is_dir():
            raise InputError(self.root, "DAVIS root folder not found")
        split_file = self.root / "ImageSets" / "2017" / f"{split}.txt"
        if not split_file.is_file():
            raise InputError(split_file, f"sequence list of the '{split}' split not found (DAVIS 2017 layout)")
        listed = read_split_file(split_file)
        if sequences is None:
            chosen = listed
        else:
            unknown = [name for name in sequences if name not in listed]
            if unknown:
                raise InputError(split_file, f"unknown sequence(s) {', '.join(unknown)} (not in the '{split}' split)")
            chosen = list(dict.fromkeys(sequences))
        self.sequences: list[str] = chosen
        self._frames: dict[str, list[Path]] = {}
        self._annotations: dict[str, list[Path]] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        for name in chosen:
            self._index(name)

    def _index(self, sequence: str) -> None:
        frame_dir = self.sequence_dir(sequence)
        annotation_dir = self.root / "Annotations" / self.resolution / sequence
        frames = sorted(frame_dir.glob("*.jpg"))
        if not frames:
            raise InputError(frame_dir, f"no .jpg frames for sequence {sequence}")
        annotations = sorted(annotation_dir.glob("*.png"))
        if len(annotations) != len(frames):
            raise InputError(annotation_dir, f"{len(annotations)} annotation PNGs for {len(frames)} frames")
        for frame, annotation in zip(frames, annotations):
            if frame.stem != annotation.stem:
                raise InputError(annotation, f"does not match frame {frame.name} (names must pair up)")
        size = image_size(frames[0])
        for path in [*frames, *annotations]:
            height, width = image_size(path)
            if (height, width) != size:
                raise InputError(path, f"size {width}x{height} differs from the first frame's {size[1]}x{size[0]}")
        self._frames[sequence] = frames
        self._annotations[sequence] = annotations
        self._sizes[sequence] = size

    def sequence_dir(self, sequence: str) -> Path:
        """The folder of the sequence's JPEG frames."""
        return self.root / "JPEGImages" / self.resolution / sequence

    def frame_paths(self, sequence: str) -> list[Path]:
        """The sequence's JPEG frames, sorted by name."""
        return list(self._frames[sequence])

    def annotation_paths(self, sequence: str) -> list[Path]:
        """The sequence's annotation PNGs, one per frame, sorted by name."""
        return list(self._annotations[sequence])

    def frame_names(self, sequence: str) -> list[str]:
        """Frame names without extension ('00000', ...): result PNGs are named after them."""
        return [path.stem for path in self._frames[sequence]]

    def image_size(self, sequence: str) -> tuple[int, int]:
        """(height, width) of the sequence's frames."""
        return self._sizes[sequence]

    def load_annotations(self, sequence: str, indices: list[int] | None = None) -> np.ndarray:
        """Annotations as (T, H, W) uint8 object ids (all frames, or the given frame indices)."""
        paths = self._annotations[sequence]
        chosen = range(len(paths)) if indices is None else indices
        masks = np.empty((len(chosen), *self._sizes[sequence]), dtype=np.uint8)
        for slot, index in enumerate(chosen):
            masks[slot] = read_indexed_png(paths[index])
        return masks
