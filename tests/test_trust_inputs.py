"""Inputs that used to be misread without a word (exit 0, wrong results) or end in a traceback:
16-bit frames, NaN/inf options, a huge --size, a damaged tokenizer, missing DAVIS result
frames, JPEG and noisy masks, and the Python API's masks, classes and live corrections."""

from __future__ import annotations

import inspect
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from pdmtrack import Tracker
from pdmtrack.cli import app
from pdmtrack.errors import InputError
from pdmtrack.io.images import read_rgb
from pdmtrack.io.masks import read_mask
from pdmtrack.io.video import FrameReader
from tests.cli_runner import assert_one_line_error, run_cli
from tests.test_cli import H, W, base_args, palette_mask  # noqa: F401 (fixture)
from tests.test_eval_davis import make_davis, moving_squares, write_ids_png
from tests.test_propagate import MIN_IOU_VISIBLE, CellStatistics, Track, iou
from tests.test_tracker import NO_SAM, synthetic_clip


# --- 1. 16-bit greyscale frames and images ---------------------------------------------------
def _grey16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def test_16_bit_grey_frames_and_images_keep_their_high_byte(tmp_path: Path) -> None:
    """They were read as all white (PIL clips values above 255)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    values = [rng.integers(0, 65536, (H, W)) for _ in range(3)]
    for index, frame in enumerate(values):
        _grey16(folder / f"{index:05d}.png", frame)
    with FrameReader(folder) as reader:
        for index, frame in enumerate(reader):
            assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
            np.testing.assert_array_equal(frame[..., 1], values[index] >> 8)
    image = read_rgb(folder / "00001.png")  # segment / retrieve images
    np.testing.assert_array_equal(image, np.repeat((values[1] >> 8)[..., None], 3, axis=2).astype(np.uint8))


def test_a_16_bit_mask_keeps_its_ids(tmp_path: Path) -> None:
    """Masks are ids, not intensities: 0..N stay 0..N (0/65535 is one object)."""
    labels = np.zeros((H, W), np.uint16)
    labels[5:20, 5:20], labels[30:50, 40:80] = 1, 2
    loaded = read_mask(_grey16(tmp_path / "ids.png", labels))
    assert loaded.object_ids == [1, 2] and loaded.note is None
    np.testing.assert_array_equal(loaded.labels, labels)
    assert read_mask(_grey16(tmp_path / "binary.png", (labels > 0) * 65535)).object_ids == [1]


# --- 2. NaN and inf for every float option --------------------------------------------------
def _float_flags(command: str) -> list[str]:
    """The float options of ``pdmtrack COMMAND``, read from its signature as typer does."""
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    floats = set()
    for param in inspect.signature(click_command.callback).parameters.values():
        kind, *_ = typing.get_args(param.annotation) or (param.annotation,)
        if float in (kind, *typing.get_args(kind)):
            floats.add(param.name)
    return [max(param.opts, key=len) for param in click_command.params if param.name in floats]


def test_the_float_option_lists_are_the_expected_ones() -> None:
    assert {"--tau", "--temperature", "--instance-weight", "--cache-max-gb", "--fg-threshold"} <= set(_float_flags("propagate"))
    assert "--present-threshold" in _float_flags("segment")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("command", "flag"), [(c, f) for c in ("propagate", "segment") for f in _float_flags(c)])
def test_nan_and_inf_are_refused_for_every_float_option(command, flag, value, tmp_path, capsys, monkeypatch) -> None:
    """`--temperature nan` was accepted (the object vanished, run.json said null), and
    `segment --present-threshold nan` wrote empty masks."""
    inputs = [tmp_path / "clip.mp4"] if command == "propagate" else [tmp_path / "ref.jpg", tmp_path / "target.jpg"]
    result = run_cli([command, *inputs, flag, value, "-o", tmp_path / "out"], capsys, monkeypatch)
    assert_one_line_error(result, f"{flag}: must be a finite number")
    assert not (tmp_path / "out").exists()


# --- 3. --size bound ---------------------------------------------------------------------------
def test_a_huge_size_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch) -> None:
    """--size 64000 ended in an allocator traceback."""
    result = run_cli(["propagate", tmp_path / "clip.mp4", "--size", "64000"], capsys, monkeypatch)
    assert_one_line_error(result, "--size", "at most 2048", "1024")
    assert run_cli(["propagate", tmp_path / "none.mp4", "--size", "2048"], capsys, monkeypatch).err.count("--size") == 0


# --- 4. a damaged tokenizer ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("folder", "damaged", "named"),
    [
        ("tokenizer", "tokenizer.json", "tokenizer/tokenizer.json"),
        ("tokenizer_2", "tokenizer.json", "tokenizer_2/tokenizer.json"),
        ("tokenizer", "tokenizer_config.json", "tokenizer/tokenizer_config.json"),
        ("tokenizer_2", "merges.txt", "tokenizer_2"),  # parsed by the tokenizers library itself
    ],
)
def test_a_damaged_tokenizer_file_is_one_line(folder, damaged, named, tiny_sdxl, tmp_path, capsys, monkeypatch) -> None:
    """A garbage tokenizer.json gave a JSONDecodeError traceback."""
    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl, model)
    if damaged == "merges.txt":
        (model / folder / "tokenizer.json").unlink()  # else the fast tokenizer never reads merges.txt
    (model / folder / damaged).write_text("garbage{")
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(2):
        Image.fromarray(np.full((H, W, 3), 90 + index, np.uint8)).save(frames / f"{index:05d}.png")
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "first.png", labels)
    args = ["propagate", frames, "--mask", mask, "-o", tmp_path / "out", "--model", model, "--sam", "none", "--no-cache"]
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, named, "damaged or incomplete tokenizer", "re-download")


# --- 5. a missing DAVIS result frame --------------------------------------------------------------
def test_eval_davis_stops_at_a_missing_result_frame(tmp_path, capsys, monkeypatch) -> None:
    """It was scored as an empty frame without a word; davis2017-evaluation stops there."""
    truth = moving_squares(5, (24, 32), [(2, 2, 8)])
    root = make_davis(tmp_path / "davis", {"alpha": truth})
    results = tmp_path / "results"
    for t, ids in enumerate(truth):
        if t != 2:
            write_ids_png(results / "alpha" / f"{t:05d}.png", ids)
    result = run_cli(["eval", "davis", "--root", root, "--results", results], capsys, monkeypatch)
    assert_one_line_error(result, str(results / "alpha" / "00002.png"), "result frame not found")
    assert not list(results.glob("*.csv"))
    write_ids_png(results / "alpha" / "00002.png", truth[2])
    (results / "alpha" / "00004.png").unlink()  # the last frame is not scored: not needed
    assert run_cli(["eval", "davis", "--root", root, "--results", results], capsys, monkeypatch).code == 0


# --- 6. JPEG masks and noisy masks -------------------------------------------------------------
def _jpeg_mask(path: Path) -> tuple[Path, np.ndarray]:
    labels = np.zeros((H, W), np.uint8)
    labels[10:40, 20:60] = 255
    Image.fromarray(labels).save(path, quality=40)
    assert len(np.unique(np.asarray(Image.open(path)))) > 10  # lossy: many grey values
    return path, labels > 0


def test_a_jpeg_mask_is_one_object_with_a_note(tmp_path: Path) -> None:
    """It became one object per grey value of the compression noise (52 of them), silently."""
    path, want = _jpeg_mask(tmp_path / "mask.jpg")
    loaded = read_mask(path)
    assert loaded.object_ids == [1]
    assert iou(loaded.labels == 1, want) > 0.95
    assert "JPEG mask read as one object" in loaded.note


def test_a_mask_with_many_or_tiny_ids_gets_a_note(tmp_path: Path) -> None:
    labels = np.zeros((200, 200), np.uint8)
    labels[20:80, 20:80] = 1
    labels[100:160, 100:160] = 2
    clean = read_mask(palette_mask(tmp_path / "clean.png", labels))
    assert clean.note is None
    labels[0, :3] = [3, 4, 5]  # three 1-pixel ids: under 0.01% of the frame
    noisy = read_mask(palette_mask(tmp_path / "noisy.png", labels))
    assert "5 objects, 3 of them under 0.01% of the frame" in noisy.note
    many = np.zeros((200, 200), np.uint8)
    for k in range(25):
        many[(k // 5) * 40 : (k // 5) * 40 + 30, (k % 5) * 40 : (k % 5) * 40 + 30] = k + 1
    assert "25 objects, 0 of them" in read_mask(palette_mask(tmp_path / "many.png", many)).note


def test_propagate_with_a_jpeg_mask_says_so_and_tracks_one_object(tmp_path, base_args, capsys, monkeypatch) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(frames / f"{index:05d}.png")
    mask, _ = _jpeg_mask(tmp_path / "mask.jpg")
    result = run_cli(["propagate", frames, "--mask", mask, "-o", tmp_path / "out", "--no-overlay", *base_args], capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "JPEG mask read as one object" in result.err
    assert set(np.unique(np.asarray(Image.open(tmp_path / "out" / "00000.png")))) == {0, 1}


# --- 7. the Python API ---------------------------------------------------------------------------
@pytest.fixture()
def session(tmp_path: Path):
    """A tracker (pixel-statistics features, no SAM), a state over 9 frames of one moving
    object, and the truth (T, H, W) ids."""
    length = 9
    truth = synthetic_clip(tmp_path / "clip", [Track(1, "stripes", [(20, 10 + 6 * t) for t in range(length)])], seed=2)
    tracker = Tracker(NO_SAM, features=CellStatistics())
    return tracker, tracker.init_state(tmp_path / "clip"), truth


def test_float_masks_must_hold_whole_ids(session) -> None:
    """A 0/0.7 float mask became an empty mask (astype(uint8) truncates 0.7 to 0)."""
    tracker, state, truth = session
    with pytest.raises(InputError, match=r"^labels: frame 0: a float mask must hold whole object ids, got 0.7"):
        tracker.add_mask(state, 0, (truth[0] > 0) * 0.7)
    with pytest.raises(InputError, match="^labels: frame 0: a float mask"):
        tracker.add_mask(state, 0, np.where(truth[0] > 0, np.nan, 0.0))
    assert state.masks == {}
    tracker.add_mask(state, 0, truth[0].astype(np.float32))  # whole numbers: ids
    np.testing.assert_array_equal(state.masks[0], truth[0])


def test_an_empty_mask_is_refused(session) -> None:
    tracker, state, truth = session
    with pytest.raises(InputError, match=r"^mask \(frame 3\): mask is empty"):
        tracker.add_mask(state, 3, np.zeros_like(truth[0]))
    assert state.masks == {}


def test_classes_for_an_id_in_no_mask_are_refused(session) -> None:
    tracker, _, truth = session
    state = tracker.init_state(session[1].reader, classes={7: "dog"})
    tracker.add_mask(state, 0, truth[0])
    with pytest.raises(InputError, match=r"^classes: object id 7 \('dog'\) is in no given mask \(their ids: 1\)"):
        next(tracker.propagate(state))


@pytest.mark.parametrize("added_at", [3, 6])  # in the batch being tracked (4 frames on the CPU), in a later one
def test_a_mask_added_while_propagating_is_taken_at_its_frame(session, added_at: int) -> None:
    """It was ignored: the generator had copied the masks when it started."""
    tracker, state, truth = session
    tracker.add_mask(state, 0, truth[0])
    correction = np.where(truth[added_at] == 1, 2, 0).astype(np.uint8)  # the object is id 2 from here
    results = {}
    for frame_idx, labels in tracker.propagate(state):
        results[frame_idx] = labels
        if frame_idx == 1:
            tracker.add_mask(state, added_at, correction)
            tracker.add_mask(state, 0, truth[0])  # already passed: kept for the next pass only
    assert sorted(results) == list(range(len(truth)))
    np.testing.assert_array_equal(results[added_at], correction)
    assert all(not (results[t] == 2).any() for t in range(added_at))
    assert all(not (results[t] == 1).any() for t in range(added_at, len(truth)))  # the whole truth there
    assert min(iou(results[t] == 2, truth[t] == 1) for t in range(added_at + 1, len(truth))) >= MIN_IOU_VISIBLE
    assert min(iou(results[t] == 1, truth[t] == 1) for t in range(1, added_at)) >= MIN_IOU_VISIBLE
