"""First-frame masks: read every accepted format into one label map; COCO RLE helpers.

Accepted: indexed PNG (ids = pixel values), single-channel PNG (each non-zero grey level
is an object, ids 1..N in sorted order, so 0/255 and 0/1 are one object), RGB/RGBA PNG
(each distinct non-black colour is an object; DAVIS palette colours keep their palette
index, other colours are numbered in order of first appearance, top to bottom), JPEG (lossy,
so its values are no ids: one object, the pixels brighter than ``JPEG_THRESHOLD`` in any
channel, with a note saying so), and COCO RLE JSON (one RLE, a list of RLEs,
``{"<id>": rle}``, a COCO annotation list, or the ``masks.json`` that ``RleJsonWriter``
writes, whose first frame is taken). A mask with more than ``MANY_OBJECTS`` ids, or with an
id under ``TINY_FRACTION`` of the frame, gets a note: such ids are usually noise (smoothed
edges, a lossy copy), each of which would be tracked as an object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.files import read_json

MAX_OBJECTS = 255
JPEG_THRESHOLD = 127  # a JPEG mask is one object: the pixels above this in any channel
MANY_OBJECTS = 20  # a mask with more object ids than this gets a note
TINY_FRACTION = 1e-4  # so does one with an object covering less than this fraction of it


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC palette: bits of the index interleaved into R, G, B (high bit first)."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


DAVIS_PALETTE = davis_palette()


@dataclass
class LoadedMask:
    """A label map (0 = background, k = object k) and the object ids present in it."""

    labels: np.ndarray  # (H, W) uint8
    object_ids: list[int]
    note: str | None = None  # e.g. how RGB colours were mapped to ids, for the user


# ---------------------------------------------------------------------- COCO RLE
def encode_rle(binary: np.ndarray) -> dict:
    """Encode an (H, W) boolean mask as COCO RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(binary, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed string or uncompressed list counts) to an (H, W) bool mask.

    Raises ``ValueError`` on a malformed RLE (the counts are checked against the size
    before pycocotools sees them).
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE needs 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    height, width = size
    counts = rle["counts"]
    if isinstance(counts, list):
        runs = counts
        if not all(isinstance(v, int) and v >= 0 for v in runs):
            raise ValueError("RLE counts must be non-negative integers")
    elif isinstance(counts, (str, bytes)):
        runs = _string_runs(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    else:
        raise ValueError("RLE counts must be a string or a list of integers")
    if sum(runs) != height * width:
        raise ValueError(f"RLE counts cover {sum(runs)} pixels, not {height}x{width}={height * width}")
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    else:
        compressed = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(compressed).astype(bool)


def _string_runs(counts: str) -> list[int]:
    """Run lengths of a COCO compressed counts string (pycocotools' rleFrString), validated."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("RLE counts string ends in the middle of a number")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"RLE counts hold an invalid character {counts[position]!r}")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("RLE counts decode to a negative run")
        runs.append(value)
    return runs


# ---------------------------------------------------------------------- reading
def read_mask(path: str | Path) -> LoadedMask:
    """Read a first-frame mask file (PNG or COCO RLE JSON) into a ``LoadedMask``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such mask file" if not path.exists() else "mask is not a file")
    if path.suffix.lower() == ".json":
        labels, note = _labels_from_json(path)
    else:
        labels, note = _labels_from_image(path)
    object_ids = require_objects(labels, path)
    notes = [text for text in (note, _noise_note(labels, object_ids)) if text]
    return LoadedMask(labels=labels, object_ids=object_ids, note="; ".join(notes) or None)


def require_objects(labels: np.ndarray, where: str | Path) -> list[int]:
    """The object ids in ``labels`` (ascending); an InputError naming ``where`` when it holds none."""
    object_ids = [int(v) for v in np.unique(labels) if v != 0]
    if not object_ids:
        raise InputError(where, "mask is empty: it holds no object (every pixel is background)")
    return object_ids


def _noise_note(labels: np.ndarray, object_ids: list[int]) -> str | None:
    """A warning when the mask holds many ids or tiny ones (noise, each tracked as an object)."""
    areas = np.bincount(labels.ravel(), minlength=MAX_OBJECTS + 1)[object_ids]
    tiny = int((areas < TINY_FRACTION * labels.size).sum())
    if len(object_ids) <= MANY_OBJECTS and not tiny:
        return None
    return (
        f"the mask holds {len(object_ids)} objects, {tiny} of them under {TINY_FRACTION:.2%} of the frame: "
        "every distinct value is tracked as an object; if that is noise (smoothed edges, a lossy copy), "
        "give a clean PNG"
    )


def _labels_from_image(path: Path) -> tuple[np.ndarray, str | None]:
    try:
        with Image.open(path) as image:
            image.load()
            mode, jpeg = image.mode, image.format == "JPEG"
            pixels = np.asarray(image.convert("RGB")).max(axis=2) if jpeg else np.asarray(image)
    except OSError as err:
        raise InputError(path, f"cannot read the mask as an image ({err})") from err
    if jpeg:
        note = (
            f"JPEG mask read as one object (pixels above {JPEG_THRESHOLD}): its lossy compression "
            "blurs values, so they cannot be ids; give a PNG for several objects"
        )
        return (pixels > JPEG_THRESHOLD).astype(np.uint8), note
    if mode == "P":
        return pixels.astype(np.uint8), None
    if mode in ("RGB", "RGBA"):
        return _labels_from_colours(path, pixels)
    if mode == "LA":
        pixels = pixels[..., 0]
    if pixels.ndim != 2:
        raise InputError(path, f"unsupported PNG mode {mode} for a mask")
    levels = np.unique(pixels)
    levels = levels[levels != 0]
    _check_count(path, len(levels))
    labels = np.searchsorted(levels, pixels) + 1
    labels[pixels == 0] = 0
    identity = np.array_equal(levels, np.arange(1, len(levels) + 1))
    pairs = [(str(level), object_id) for object_id, level in enumerate(levels, start=1)]
    note = None if len(levels) <= 1 or identity else _mapping_note("grey levels", pairs)
    return labels.astype(np.uint8), note


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours -> (N,) int64 codes 0xRRGGBB."""
    rgb = rgb.astype(np.int64)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def _labels_from_colours(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """Map each distinct non-black colour to an id (DAVIS palette index when all are in it)."""
    codes = _colour_codes(pixels[..., :3].reshape(-1, 3))
    if pixels.shape[-1] == 4:
        codes[pixels[..., 3].reshape(-1) == 0] = 0  # fully transparent = background
    colours, first_seen, inverse = np.unique(codes, return_index=True, return_inverse=True)
    object_slots = np.flatnonzero(colours != 0)
    _check_count(path, len(object_slots))
    palette_codes = _colour_codes(DAVIS_PALETTE[1:])
    ids_for_colour = np.zeros(len(colours), dtype=np.int64)
    if np.isin(colours[object_slots], palette_codes).all():
        by_code = np.argsort(palette_codes)
        slots_in_palette = np.searchsorted(palette_codes, colours[object_slots], sorter=by_code)
        ids_for_colour[object_slots] = by_code[slots_in_palette] + 1
        how = "DAVIS palette colours"
    else:
        order = object_slots[np.argsort(first_seen[object_slots], kind="stable")]
        ids_for_colour[order] = np.arange(1, len(order) + 1)
        how = "colours in order of first appearance"
    labels = ids_for_colour[inverse].reshape(pixels.shape[:2]).astype(np.uint8)
    by_id = sorted(object_slots, key=lambda slot: ids_for_colour[slot])
    pairs = [(_colour_name(colours[slot]), int(ids_for_colour[slot])) for slot in by_id]
    return labels, _mapping_note(f"RGB mask, {how}", pairs)


def _colour_name(code: int) -> str:
    return f"({code >> 16}, {(code >> 8) & 255}, {code & 255})"


def _mapping_note(what: str, pairs: list[tuple[str, int]], shown: int = 12) -> str:
    """One sentence telling the user which value became which object id."""
    listed = ", ".join(f"{name} -> {object_id}" for name, object_id in pairs[:shown])
    more = f", ... ({len(pairs)} objects)" if len(pairs) > shown else ""
    return f"{what} mapped to object ids: {listed}{more}"


def _check_count(path: Path, count: int) -> None:
    if count > MAX_OBJECTS:
        raise InputError(path, f"mask holds {count} objects; at most {MAX_OBJECTS} are supported")


def _labels_from_json(path: Path) -> tuple[np.ndarray, str | None]:
    data = read_json(path)
    try:
        objects = _rle_objects(data)
    except ValueError as err:
        raise InputError(path, f"not a COCO RLE mask: {err}") from err
    if not objects:
        raise InputError(path, "mask is empty: the JSON holds no object")
    _check_count(path, len(objects))
    if not all(1 <= object_id <= MAX_OBJECTS for object_id in objects):
        raise InputError(path, f"object ids must lie in 1..{MAX_OBJECTS}, got {sorted(objects)}")
    labels: np.ndarray | None = None
    for object_id in sorted(objects):  # higher ids are drawn over lower ones where they overlap
        try:
            binary = decode_rle(objects[object_id])
        except ValueError as err:
            raise InputError(path, f"malformed RLE for object {object_id}: {err}") from err
        if labels is None:
            labels = np.zeros(binary.shape, dtype=np.uint8)
        elif binary.shape != labels.shape:
            raise InputError(path, f"object {object_id} is {binary.shape[1]}x{binary.shape[0]}, unlike the others")
        labels[binary] = object_id
    return labels, None


def _rle_objects(data: object) -> dict[int, dict]:
    """{object id: rle} from any accepted JSON layout; ``ValueError`` when it is none of them."""
    if isinstance(data, dict) and "frames" in data:  # RleJsonWriter's masks.json
        frames = data["frames"]
        if not isinstance(frames, list) or not frames:
            raise ValueError("'frames' is empty")
        data = frames[0].get("objects") if isinstance(frames[0], dict) else None
    if isinstance(data, dict) and "annotations" in data:  # a whole COCO file
        data = data["annotations"]
    if isinstance(data, dict) and "size" in data and "counts" in data:
        return {1: data}
    if isinstance(data, dict):
        try:
            return {int(key): value for key, value in data.items()}
        except ValueError:
            raise ValueError('expected object ids as keys, e.g. {"1": {"size": ..., "counts": ...}}') from None
    if isinstance(data, list):
        rles = [item["segmentation"] if isinstance(item, dict) and "segmentation" in item else item for item in data]
        if any(isinstance(rle, list) for rle in rles):
            raise ValueError("polygon segmentations are not supported; give COCO RLE")
        return {index: rle for index, rle in enumerate(rles, start=1)}
    raise ValueError('expected an RLE dict, a list of RLEs, {"<id>": rle} or COCO annotations')


# ---------------------------------------------------------------------- checking
def fit_mask_to_frame(
    mask: LoadedMask, source: str | Path, height: int, width: int, resize: bool = False, rotation: int = 0,
    frames: str = "the video frames are",
) -> LoadedMask:  # fmt: skip
    """Check the mask against the frame size; with ``resize`` resize it (nearest neighbour).

    ``rotation``: the video's display rotation in degrees (its frames are read as displayed);
    a mask in the stored, unrotated orientation is refused whatever ``resize`` says.
    ``frames`` names what the mask must fit in messages (e.g. "the reference image is")."""
    mask_height, mask_width = mask.labels.shape
    if (mask_height, mask_width) == (height, width):
        return mask
    if rotation % 180 == 90 and (mask_height, mask_width) == (width, height):
        raise InputError(
            source,
            f"mask is {mask_width}x{mask_height}, the video's stored size, but the video is rotated by "
            f"{rotation} degrees (display metadata) and its frames are read upright as displayed, "
            f"{width}x{height}: rotate the mask the same way (--resize-mask would squash it)",
        )
    if not resize:
        raise InputError(
            source,
            f"mask is {mask_width}x{mask_height} but {frames} {width}x{height} (pass --resize-mask to resize it with nearest neighbour)",
        )
    labels = np.asarray(Image.fromarray(mask.labels).resize((width, height), Image.Resampling.NEAREST))
    kept = [int(v) for v in np.unique(labels) if v != 0]
    if not kept:
        raise InputError(source, f"every object vanished when resizing the mask to {width}x{height}")
    lost = sorted(set(mask.object_ids) - set(kept))
    notes = [mask.note] if mask.note else []
    if lost:
        notes.append(f"objects {', '.join(map(str, lost))} vanished when resizing the mask to {width}x{height}")
    return LoadedMask(labels=labels, object_ids=kept, note="; ".join(notes) or None)
