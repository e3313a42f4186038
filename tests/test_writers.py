"""Writers: palette PNG and RLE JSON round trips, overlay video, atomic failure behaviour."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.masks import DAVIS_PALETTE, decode_rle, read_mask
from pdmtrack.io.video import FrameReader
from pdmtrack.io.writers import MaskPngWriter, OverlayWriter, RleJsonWriter, blend_labels, write_palette_png, write_video


def _annotations(davis_mini: Path, count: int = 4) -> list[tuple[str, np.ndarray]]:
    files = sorted((davis_mini / "Annotations" / "480p" / "motocross-jump").glob("*.png"))[:count]
    return [(f.stem, np.asarray(Image.open(f))) for f in files]


def _synthetic_labels(height: int = 30, width: int = 44) -> np.ndarray:
    labels = np.zeros((height, width), np.uint8)
    labels[2:12, 3:20] = 1
    labels[15:28, 10:40] = 2
    labels[0:5, 38:44] = 5
    return labels


def test_palette_png_round_trip(tmp_path: Path, davis_mini: Path) -> None:
    samples = _annotations(davis_mini, 2) + [("synthetic", _synthetic_labels())]
    writer = MaskPngWriter(tmp_path / "out" / "seq")
    for name, labels in samples:
        written = writer.write(name, labels)
        assert written == tmp_path / "out" / "seq" / f"{name}.png"
        with Image.open(written) as image:
            assert image.mode == "P"
            palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
            assert np.array_equal(palette, DAVIS_PALETTE[: len(palette)])
        mask = read_mask(written)
        assert np.array_equal(mask.labels, labels)
        assert mask.object_ids == sorted(set(np.unique(labels)) - {0})
    assert sorted(p.name for p in writer.out_dir.iterdir()) == sorted(f"{n}.png" for n, _ in samples)
    with pytest.raises(ValueError, match="uint8"):
        write_palette_png(tmp_path / "wide.png", _synthetic_labels().astype(np.int64))
    assert not (tmp_path / "wide.png").exists()


def test_output_folder_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("I am a file")
    with pytest.raises(InputError, match="out: output folder is an existing file"):
        MaskPngWriter(blocker)


def test_rle_json_round_trip(tmp_path: Path, davis_mini: Path) -> None:
    labels_synthetic = _synthetic_labels()
    without_object_2 = np.where(labels_synthetic == 2, 0, labels_synthetic).astype(np.uint8)
    frames = [("00000", labels_synthetic), ("00001", without_object_2)]
    path = tmp_path / "masks.json"
    with RleJsonWriter(path, 30, 44, object_ids=[1, 2, 5]) as writer:
        for name, labels in frames:
            writer.add(name, labels)
    data = json.loads(path.read_text())
    assert (data["height"], data["width"], data["object_ids"]) == (30, 44, [1, 2, 5])
    assert [f["name"] for f in data["frames"]] == ["00000", "00001"]
    assert set(data["frames"][1]["objects"]) == {"1", "5"}  # object 2 is absent there: omitted
    for (_, labels), record in zip(frames, data["frames"]):
        rebuilt = np.zeros_like(labels)
        for object_id, rle in record["objects"].items():
            rebuilt[decode_rle(rle)] = int(object_id)
        assert np.array_equal(rebuilt, labels)
    assert np.array_equal(read_mask(path).labels, labels_synthetic)
    # Real DAVIS annotations survive the same trip.
    real = _annotations(davis_mini)
    real_path = tmp_path / "davis.json"
    with RleJsonWriter(real_path, *real[0][1].shape, object_ids=[1]) as writer:
        for name, labels in real:
            writer.add(name, labels)
    records = json.loads(real_path.read_text())["frames"]
    for (_, labels), record in zip(real, records):
        assert np.array_equal(decode_rle(record["objects"]["1"]), labels == 1)


def test_overlay_video_blends_palette_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    height, width = 30, 44  # even; odd sizes are tested below
    frames = [np.full((height, width, 3), 90 + 20 * i, np.uint8) for i in range(5)]
    labels = _synthetic_labels(height, width)
    path = tmp_path / "overlay.mp4"
    with OverlayWriter(path, fps=10, width=width, height=height, alpha=0.5) as writer:
        for frame in frames:
            writer.write(frame, labels)
    reader = FrameReader(path, backend="pyav")
    assert (reader.num_frames, reader.fps, reader.width, reader.height) == (5, 10.0, width, height)
    decoded = reader.read(2).astype(np.float32)
    expected = frames[2].astype(np.float32).copy()
    object_pixels = labels > 0
    expected[object_pixels] = 0.5 * expected[object_pixels] + 0.5 * DAVIS_PALETTE[labels[object_pixels]]
    assert np.abs(decoded - expected)[4:-4, 4:-4].mean() < 6.0  # lossy H.264 of flat colours
    exact = blend_labels(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), labels, alpha=1.0)
    assert np.array_equal(exact[object_pixels], DAVIS_PALETTE[labels[object_pixels]])


def test_write_video_handles_odd_sizes(tmp_path: Path) -> None:
    frames = [np.full((31, 45, 3), 40 * i, np.uint8) for i in range(3)]
    write_video(tmp_path / "odd.mp4", frames, fps=12.5)
    reader = FrameReader(tmp_path / "odd.mp4", backend="pyav")
    assert (reader.num_frames, reader.fps, reader.width, reader.height) == (3, 12.5, 46, 32)
    assert abs(float(reader.read(2)[:31, :45].mean()) - 80.0) < 2.0


class _Boom(RuntimeError):
    pass


def test_failing_writers_leave_no_file(tmp_path: Path) -> None:
    frame = np.zeros((30, 44, 3), np.uint8)
    labels = _synthetic_labels()
    with pytest.raises(_Boom), OverlayWriter(tmp_path / "overlay.mp4", 10, 44, 30) as overlay:
        overlay.write(frame, labels)
        raise _Boom
    with pytest.raises(_Boom), RleJsonWriter(tmp_path / "masks.json", 30, 44, [1, 2, 5]) as rle:
        rle.add("00000", labels)
        raise _Boom

    def frames_then_failure():
        yield frame
        raise _Boom

    with pytest.raises(_Boom):
        write_video(tmp_path / "clip.mp4", frames_then_failure(), fps=10)
    assert list(tmp_path.iterdir()) == []  # neither final files nor temporaries


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to compare one with two")
def test_overlay_bytes_do_not_depend_on_the_cpus_available(tmp_path: Path) -> None:
    """x264's automatic thread count follows the CPUs a process may use, and each count
    encodes other bytes (decoded frames up to ~50 levels apart at mask edges). The overlay
    must be the same file however many CPUs the run was given, and from run to run."""
    rows, cols = np.mgrid[0:240, 0:432]
    frames = [np.stack([(rows + t) % 256, (cols * 2 - t) % 256, (rows + cols + 5 * t) % 256], -1).astype(np.uint8) for t in range(24)]
    labels = np.zeros((240, 432), np.uint8)
    labels[60:180, 100:300] = 1
    cpus = os.sched_getaffinity(0)
    encoded = []
    for allowed in ({min(cpus)}, cpus):
        os.sched_setaffinity(0, allowed)
        try:
            path = tmp_path / f"overlay_{len(allowed)}.mp4"
            with OverlayWriter(path, 24, 432, 240) as video:
                for frame in frames:
                    video.write(frame, labels)
        finally:
            os.sched_setaffinity(0, cpus)
        encoded.append(path.read_bytes())
    assert encoded[0] == encoded[1]
