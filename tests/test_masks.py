"""Mask reading: every accepted format, size checks, and every bad mask a user can give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.masks import DAVIS_PALETTE, LoadedMask, decode_rle, encode_rle, fit_mask_to_frame, read_mask


def _labels(height: int = 40, width: int = 60) -> np.ndarray:
    """Three objects, one of them touching the border."""
    labels = np.zeros((height, width), np.uint8)
    labels[5:15, 5:25] = 1
    labels[20:35, 30:58] = 2
    labels[0:8, 50:60] = 4
    return labels


def _rle(binary: np.ndarray) -> dict:
    """Reference encoding straight from pycocotools (independent of pdmtrack)."""
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def test_palette_is_the_one_in_davis_annotations(davis_mini: Path) -> None:
    for annotation in sorted((davis_mini / "Annotations" / "480p").glob("*/00000.png")):
        stored = np.array(Image.open(annotation).getpalette(), dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(DAVIS_PALETTE[: len(stored)], stored)
    assert len({tuple(c) for c in DAVIS_PALETTE}) == 256


def test_indexed_png_ids_are_pixel_values(davis_mini: Path) -> None:
    annotation = davis_mini / "Annotations" / "480p" / "blackswan" / "00000.png"
    mask = read_mask(annotation)
    expected = np.asarray(Image.open(annotation))
    assert np.array_equal(mask.labels, expected)
    assert mask.object_ids == sorted(set(np.unique(expected)) - {0})
    assert mask.note is None


@pytest.mark.parametrize("foreground", [255, 1])
def test_binary_png_is_one_object(tmp_path: Path, foreground: int) -> None:
    binary = _labels() > 0
    Image.fromarray((binary * foreground).astype(np.uint8), mode="L").save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.object_ids == [1]
    assert np.array_equal(mask.labels, binary.astype(np.uint8))


def test_grey_levels_become_ids_in_sorted_order(tmp_path: Path) -> None:
    grey = np.zeros((20, 20), np.uint8)
    grey[:5] = 200
    grey[10:] = 70
    Image.fromarray(grey).save(tmp_path / "g.png")
    mask = read_mask(tmp_path / "g.png")
    assert mask.object_ids == [1, 2]
    assert (mask.labels[10:] == 1).all() and (mask.labels[:5] == 2).all() and (mask.labels[5:10] == 0).all()
    assert "70 -> 1" in mask.note and "200 -> 2" in mask.note


def test_rgb_png_with_davis_colours_keeps_palette_ids(tmp_path: Path) -> None:
    labels = _labels()
    Image.fromarray(DAVIS_PALETTE[labels]).save(tmp_path / "rgb.png")
    mask = read_mask(tmp_path / "rgb.png")
    assert np.array_equal(mask.labels, labels) and mask.object_ids == [1, 2, 4]
    assert "(128, 0, 0) -> 1" in mask.note


def test_rgb_png_other_colours_in_order_of_appearance(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[6:, :] = (10, 200, 30, 255)  # appears second (lower rows)
    rgba[1:3, 4:] = (250, 250, 5, 255)  # appears first
    rgba[0, 0] = (99, 99, 99, 0)  # transparent: background whatever its colour
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    mask = read_mask(tmp_path / "rgba.png")
    assert mask.object_ids == [1, 2]
    assert (mask.labels[1:3, 4:] == 1).all() and (mask.labels[6:] == 2).all()
    assert mask.labels[0, 0] == 0 and mask.labels.sum() == 12 * 1 + 40 * 2
    assert "(250, 250, 5) -> 1" in mask.note and "(10, 200, 30) -> 2" in mask.note


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_every_rle_json_layout(tmp_path: Path) -> None:
    labels = _labels()
    ids = [1, 2, 4]
    rles = {i: _rle(labels == i) for i in ids}
    single = read_mask(_write_json(tmp_path / "one.json", rles[2]))
    assert single.object_ids == [1] and np.array_equal(single.labels, (labels == 2).astype(np.uint8))
    listed = read_mask(_write_json(tmp_path / "list.json", [rles[i] for i in ids]))
    assert listed.object_ids == [1, 2, 3]
    assert np.array_equal(listed.labels, np.searchsorted([0, 1, 2, 4], labels).astype(np.uint8))
    by_id = read_mask(_write_json(tmp_path / "ids.json", {str(i): rles[i] for i in ids}))
    assert np.array_equal(by_id.labels, labels) and by_id.object_ids == ids
    coco = [{"id": 7, "category_id": 1, "segmentation": rles[i]} for i in ids]
    assert read_mask(_write_json(tmp_path / "coco.json", coco)).object_ids == [1, 2, 3]
    assert read_mask(_write_json(tmp_path / "cocofile.json", {"annotations": coco})).object_ids == [1, 2, 3]
    masks_json = {
        "height": 40,
        "width": 60,
        "object_ids": ids,
        "frames": [{"name": "00000", "objects": {str(i): rles[i] for i in ids}}, {"name": "00001", "objects": {}}],
    }
    assert np.array_equal(read_mask(_write_json(tmp_path / "masks.json", masks_json)).labels, labels)
    uncompressed = {"size": [3, 2], "counts": [1, 2, 3]}  # column-major: (1, 0) and (2, 0) are foreground
    assert np.array_equal(read_mask(_write_json(tmp_path / "raw.json", uncompressed)).labels, [[0, 0], [1, 0], [1, 0]])


def test_rle_round_trip_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    binary = rng.random((37, 53)) > 0.6
    rle = encode_rle(binary)
    assert rle == _rle(binary) and isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle), binary)
    assert decode_rle(rle).dtype == bool


def _assert_mask_error(path: Path, match: str) -> None:
    with pytest.raises(InputError) as caught:
        read_mask(path)
    assert path.name in str(caught.value) and match in str(caught.value)


def test_bad_masks_name_the_file(tmp_path: Path) -> None:
    _assert_mask_error(tmp_path / "nothere.png", "no such mask")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    _assert_mask_error(tmp_path / "garbage.png", "cannot read")
    (tmp_path / "bad.json").write_text("{not json")
    _assert_mask_error(tmp_path / "bad.json", "JSON")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    _assert_mask_error(tmp_path / "empty.png", "empty")
    _assert_mask_error(_write_json(tmp_path / "empty.json", []), "empty")
    many = np.arange(300, dtype=np.int64).reshape(15, 20)
    colours = np.stack([many % 256, many // 256 + 1, np.full_like(many, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(colours).save(tmp_path / "many.png")
    _assert_mask_error(tmp_path / "many.png", "300 objects")
    Image.fromarray(many.astype(np.uint16) + 1).save(tmp_path / "many16.png")
    _assert_mask_error(tmp_path / "many16.png", "300 objects")
    _assert_mask_error(_write_json(tmp_path / "short.json", {"size": [4, 5], "counts": [3, 2]}), "malformed")
    _assert_mask_error(_write_json(tmp_path / "chars.json", {"size": [4, 5], "counts": "\u00ff\u00ff"}), "malformed")
    long_counts = _rle(np.ones((40, 60), bool))["counts"]
    _assert_mask_error(_write_json(tmp_path / "size.json", {"size": [4, 5], "counts": long_counts}), "malformed")
    _assert_mask_error(_write_json(tmp_path / "nosize.json", {"1": {"counts": "abc"}}), "malformed")
    _assert_mask_error(_write_json(tmp_path / "poly.json", [{"segmentation": [[0, 0, 5, 0, 5, 5]]}]), "polygon")


def test_fit_mask_to_frame_reports_both_sizes(tmp_path: Path) -> None:
    mask = LoadedMask(labels=_labels(40, 60), object_ids=[1, 2, 4], note=None)
    assert fit_mask_to_frame(mask, "m.png", 40, 60) is mask
    with pytest.raises(InputError) as caught:
        fit_mask_to_frame(mask, tmp_path / "m.png", 480, 854)
    message = str(caught.value)
    assert "m.png" in message and "60x40" in message and "854x480" in message and "--resize-mask" in message
    resized = fit_mask_to_frame(mask, "m.png", 80, 120, resize=True)
    assert resized.labels.shape == (80, 120) and resized.object_ids == [1, 2, 4]
    assert np.array_equal(resized.labels[::2, ::2], mask.labels)  # nearest neighbour, no new values
    speck = np.zeros((100, 100), np.uint8)
    speck[50, 51] = 3
    with pytest.raises(InputError, match="vanished"):
        fit_mask_to_frame(LoadedMask(speck, [3], None), "speck.png", 10, 10, resize=True)
