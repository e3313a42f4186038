"""plan_video + track_to_folder end to end with the tiny random-weight diffusion model and tiny SAM.

Random weights say nothing about quality; these tests check the contract a user relies on:
one PNG per frame at the input's size named after the input frames, frame ``start`` equal to
the given mask, only the given ids in the output, the class-name-only path, and that bad
input is refused before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdmtrack.config import FeatureConfig, RuntimeConfig, SamConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.io.masks import decode_rle
from pdmtrack.io.video import FrameReader
from pdmtrack.runs.video_folder import FIRST_FRAME_MASK, RUN_STAGES, plan_video, track_to_folder
from pdmtrack.testing.diffusion import build_tiny_pipeline
from pdmtrack.testing.sam import build_tiny_sam
from pdmtrack.tracking.tracker import Tracker

HEIGHT, WIDTH, FRAMES = 48, 64, 6


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return build_tiny_pipeline(root / "tiny-sdxl", "sdxl"), build_tiny_sam(root / "tiny_sam.safetensors")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A folder of frames named frame_XX.jpg (two squares moving) and frame 0's palette mask."""
    root = tmp_path_factory.mktemp("clip")
    frames_dir = root / "frames"
    frames_dir.mkdir()
    rng = np.random.default_rng(0)
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for t in range(FRAMES):
        frame = rng.integers(80, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        frame[10:26, 4 + 2 * t : 20 + 2 * t] = (220, 40, 40)
        frame[28:44, 44 - 2 * t : 60 - 2 * t] = (40, 60, 220)
        Image.fromarray(frame).save(frames_dir / f"frame_{t:02d}.jpg", quality=95)
    labels[10:26, 4:20] = 3
    labels[28:44, 44:60] = 5
    mask = root / "mask.png"
    image = Image.fromarray(labels, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128] + [0] * 750)
    image.save(mask)
    return frames_dir, mask, labels


def settings_for(models: tuple[Path, Path], tmp_path: Path, sam: bool) -> TrackSettings:
    model, sam_file = models
    return TrackSettings(
        features=FeatureConfig(model=str(model), size=64, inversion="noise"),
        sam=SamConfig(model_type="vit_b", checkpoint=sam_file) if sam else SamConfig(model_type="none"),
        runtime=RuntimeConfig(device="cpu", batch_size=4, cache_dir=tmp_path / "cache"),
    )


def track_video(video: Path, out: Path, *, mask: Path | None, classes: list[str], settings: TrackSettings, **options):
    """Plan (inputs checked, nothing loaded), then load a tracker and run the plan."""
    plan = plan_video(video, out, masks={options.get("start") or 0: mask} if mask else {}, classes=classes, **options)
    return track_to_folder(Tracker(settings), plan)


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_masks_for_every_frame_with_sam(models, clip, tmp_path: Path) -> None:
    frames_dir, mask, labels = clip
    out = tmp_path / "out"
    summary = track_video(frames_dir, out, mask=mask, classes=["dog"], settings=settings_for(models, tmp_path, sam=True), overlay=False)
    names = [f"frame_{t:02d}.png" for t in range(FRAMES)]
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert summary.frames == FRAMES and summary.out_dir == out
    assert set(summary.stage_seconds) == set(RUN_STAGES) and summary.stage_seconds["refinement"] > 0
    np.testing.assert_array_equal(read_png(out / names[0]), labels)
    for name in names:
        predicted = read_png(out / name)
        assert predicted.shape == (HEIGHT, WIDTH)
        assert set(np.unique(predicted)) <= {0, 3, 5}


def test_frame_range_with_every_output(models, clip, tmp_path: Path) -> None:
    """--start/--end, PNG + overlay + RLE: all three describe the same frames."""
    frames_dir, mask, labels = clip
    out = tmp_path / "out"
    summary = track_video(
        frames_dir, out, mask=mask, classes=[], settings=settings_for(models, tmp_path, sam=False),
        overlay=True, rle=True, start=2, end=5,
    )  # fmt: skip
    names = ["frame_02", "frame_03", "frame_04"]
    assert summary.frames == 3 and summary.stage_seconds["refinement"] == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{name}.png" for name in names]
    np.testing.assert_array_equal(read_png(out / "frame_02.png"), labels)
    record = json.loads((out / "masks.json").read_text())
    assert [frame["name"] for frame in record["frames"]] == names and record["object_ids"] == [3, 5]
    for frame in record["frames"]:
        png = read_png(out / f"{frame['name']}.png")
        for object_id, rle in frame["objects"].items():
            np.testing.assert_array_equal(decode_rle(rle), png == int(object_id))
    overlay = FrameReader(out / "overlay.mp4")
    assert (overlay.num_frames, overlay.height, overlay.width) == (3, HEIGHT, WIDTH)


def test_writing_runs_off_the_tracking_thread_and_a_slow_writer_changes_nothing(
    models, clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PNG, overlay and RLE writers run in the writer thread; slowing them down changes no
    output byte, and the tracking loop runs ahead of them (bounded by the queue)."""
    import threading
    import time

    from pdmtrack.io.writers import MaskPngWriter, OverlayWriter, RleJsonWriter

    frames_dir, mask, _ = clip
    settings = settings_for(models, tmp_path, sam=False)
    track_video(frames_dir, tmp_path / "fast", mask=mask, classes=[], settings=settings, overlay=True, rle=True)
    threads: set[str] = set()
    tracked_ahead: list[int] = []
    propagate = Tracker.propagate

    def counting_propagate(self, *args, **kwargs):
        for item in propagate(self, *args, **kwargs):
            tracked_ahead.append(item[0])
            yield item

    def slow(method):
        def wrapper(self, *args, **kwargs):
            threads.add(threading.current_thread().name)
            time.sleep(0.05)
            return method(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(Tracker, "propagate", counting_propagate)
    written_when: list[int] = []
    png_write = MaskPngWriter.write

    def recording_png_write(self, name, labels):  # on the tracking thread this would wait in vain
        deadline = time.monotonic() + 60
        while len(tracked_ahead) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        written_when.append(len(tracked_ahead))
        return png_write(self, name, labels)

    monkeypatch.setattr(MaskPngWriter, "write", slow(recording_png_write))
    monkeypatch.setattr(OverlayWriter, "write", slow(OverlayWriter.write))
    monkeypatch.setattr(RleJsonWriter, "add", slow(RleJsonWriter.add))
    summary = track_video(frames_dir, tmp_path / "slow", mask=mask, classes=[], settings=settings, overlay=True, rle=True)

    assert threads == {"pdmtrack-write"}, threads
    assert written_when[0] >= 3, written_when  # the tracker ran ahead of the writer
    assert summary.stage_seconds["writing"] >= 3 * 0.05 * FRAMES, summary.stage_seconds
    for name in [f"frame_{t:02d}.png" for t in range(FRAMES)] + ["masks.json"]:
        assert (tmp_path / "slow" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes(), name
    # the overlay's H.264 bytes may vary with the encoder's threads; its frames must not
    slow_video, fast_video = (np.stack(list(FrameReader(tmp_path / run / "overlay.mp4"))) for run in ("slow", "fast"))
    assert slow_video.shape == fast_video.shape
    assert np.abs(slow_video.astype(int) - fast_video.astype(int)).mean() < 1.0


def test_class_name_alone_gives_the_first_mask(models, clip, tmp_path: Path) -> None:
    frames_dir, _, _ = clip
    out = tmp_path / "out"
    track_video(frames_dir, out, mask=None, classes=["dog"], settings=settings_for(models, tmp_path, sam=True), overlay=False)
    first = read_png(out / FIRST_FRAME_MASK)
    assert first.shape == (HEIGHT, WIDTH) and (first == 1).any()
    np.testing.assert_array_equal(read_png(out / "frame_00.png"), first)
    assert set(np.unique(read_png(out / "frame_05.png"))) <= {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        (dict(mask=None, classes=[]), "masks"),  # the library names its own parameters
        (dict(classes=["dog", "cat", "dog"]), "classes"),
        (dict(start=FRAMES), "start"),
        (dict(start=3, end=3), "end"),
        (dict(end=FRAMES + 1), "end"),
    ],
)
def test_bad_input_is_refused_before_loading_models(clip, tmp_path: Path, kwargs: dict, where: str) -> None:
    frames_dir, mask, _ = clip
    settings = TrackSettings(features=FeatureConfig(model=str(tmp_path / "no-such-model")))
    arguments = dict(mask=mask, classes=["dog"], settings=settings) | kwargs
    with pytest.raises(InputError) as error:
        track_video(frames_dir, tmp_path / "out", **arguments)
    assert error.value.where == where


def test_output_path_that_is_a_file_is_refused(clip, tmp_path: Path) -> None:
    frames_dir, mask, _ = clip
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="existing file"):
        track_video(frames_dir, blocker, mask=mask, classes=[], settings=TrackSettings())
    assert blocker.read_text() == "not a folder"
