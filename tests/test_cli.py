"""The command line as a user meets it: help, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_runner import assert_one_line_error, run_cli

H, W = 64, 96


@pytest.fixture()
def frames_dir(tmp_path: Path) -> Path:
    """A folder of 6 small textured frames."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg")
    return folder


@pytest.fixture()
def clip(tmp_path: Path, frames_dir: Path) -> Path:
    """The same frames as an mp4."""
    from pdmtrack.io.writers import write_video

    path = tmp_path / "clip.mp4"
    write_video(path, (np.asarray(Image.open(p)) for p in sorted(frames_dir.iterdir())), fps=10)
    return path


def palette_mask(path: Path, labels: np.ndarray) -> Path:
    from pdmtrack.io.writers import write_palette_png

    write_palette_png(path, labels.astype(np.uint8))
    return path


@pytest.fixture()
def first_mask(tmp_path: Path) -> Path:
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    labels[35:60, 50:90] = 2
    return palette_mask(tmp_path / "first.png", labels)


@pytest.fixture()
def base_args(tiny_sdxl: Path, tmp_path: Path) -> list[str]:
    """Flags that keep a run local and small (tiny model, no SAM, private cache)."""
    return ["--model", str(tiny_sdxl), "--sam", "none", "--size", "64", "--cache-dir", str(tmp_path / "cache")]


def test_help_lists_every_command(capsys, monkeypatch):
    result = run_cli(["--help"], capsys, monkeypatch)
    assert result.code == 0
    for command in ("propagate", "eval", "build-permis"):
        assert command in result.out
    result = run_cli(["eval", "--help"], capsys, monkeypatch)
    for command in ("davis", "permis", "permir"):
        assert command in result.out


def test_parser_errors_are_short_and_plain(capsys, monkeypatch):
    result = run_cli(["propagate", "x.mp4", "--context", "many"], capsys, monkeypatch)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "Usage:" in result.err and "Error:" in result.err
    assert "╭" not in result.err and "─" not in result.err  # no decorative boxes


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--sam", "vit_q"),
        ("--inversion", "magic"),
        ("--backend", "opencv"),
        ("--temperature", "0"),
        ("--batch-size", "many"),
        ("--batch-size", "0"),
    ],
)
def test_bad_flag_values(flag, value, tmp_path, capsys, monkeypatch):
    result = run_cli(["propagate", tmp_path / "x.mp4", flag, value], capsys, monkeypatch)
    assert_one_line_error(result, flag, value)


def test_missing_video(tmp_path, base_args, first_mask, capsys, monkeypatch):
    missing = tmp_path / "nope.mp4"
    result = run_cli(["propagate", missing, "--mask", first_mask, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "nope.mp4")


def test_not_a_video(tmp_path, base_args, first_mask, capsys, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = run_cli(["propagate", notes, "--mask", first_mask, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "notes.txt")
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00not a video at all" * 100)
    result = run_cli(["propagate", fake, "--mask", first_mask, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "fake.mp4")


def test_truncated_video(tmp_path, clip, base_args, first_mask, capsys, monkeypatch):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    result = run_cli(["propagate", cut, "--mask", first_mask, "-o", out, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "cut.mp4")


def test_empty_frame_folder(tmp_path, base_args, first_mask, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["propagate", empty, "--mask", first_mask, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "empty")


def test_unreadable_mask(tmp_path, frames_dir, base_args, capsys, monkeypatch):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    result = run_cli(["propagate", frames_dir, "--mask", broken, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "broken.png")


def test_mask_of_wrong_size_names_both_sizes(tmp_path, frames_dir, base_args, capsys, monkeypatch):
    labels = np.zeros((H + 8, W), np.uint8)
    labels[5:20, 5:20] = 1
    small = palette_mask(tmp_path / "tall.png", labels)
    result = run_cli(["propagate", frames_dir, "--mask", small, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "tall.png", f"{W}x{H + 8}", f"{W}x{H}")


def test_all_zero_mask(tmp_path, frames_dir, base_args, capsys, monkeypatch):
    zero = palette_mask(tmp_path / "zero.png", np.zeros((H, W), np.uint8))
    result = run_cli(["propagate", frames_dir, "--mask", zero, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "zero.png")


def test_output_folder_is_a_file(tmp_path, frames_dir, first_mask, base_args, capsys, monkeypatch):
    taken = tmp_path / "taken"
    taken.write_text("I am a file")
    result = run_cli(["propagate", frames_dir, "--mask", first_mask, "-o", taken, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "taken")
    assert taken.read_text() == "I am a file"


def test_class_count_must_match_objects(tmp_path, frames_dir, first_mask, base_args, capsys, monkeypatch):
    args = ["--cls", "dog", "--cls", "cat", "--cls", "cow"]
    result = run_cli(["propagate", frames_dir, "--mask", first_mask, *args, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "--cls")


def test_start_after_end(tmp_path, frames_dir, first_mask, base_args, capsys, monkeypatch):
    args = ["--start", "4", "--end", "2"]
    result = run_cli(["propagate", frames_dir, "--mask", first_mask, *args, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "--end: 2 must lie after start 4")


def test_missing_sam_checkpoint(tmp_path, frames_dir, first_mask, tiny_sdxl, capsys, monkeypatch):
    args = ["--model", tiny_sdxl, "--sam", "vit_b", "--sam-checkpoint", tmp_path / "sam_missing.pth", "--size", "64"]
    result = run_cli(["propagate", frames_dir, "--mask", first_mask, *args], capsys, monkeypatch)
    assert_one_line_error(result, "sam_missing.pth")


def test_neither_mask_nor_class(tmp_path, frames_dir, base_args, capsys, monkeypatch):
    result = run_cli(["propagate", frames_dir, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "--mask")


def test_eval_davis_needs_results_or_out(tmp_path, capsys, monkeypatch):
    result = run_cli(["eval", "davis", "--root", tmp_path], capsys, monkeypatch)
    assert_one_line_error(result, "--results")


@pytest.mark.parametrize("listed", [",", " , ,", ""])
@pytest.mark.parametrize("target", ["--results", "-o"])
def test_eval_davis_empty_sequence_list(listed, target, tmp_path, capsys, monkeypatch):
    result = run_cli(["eval", "davis", "--root", tmp_path, target, tmp_path / "r", "--sequences", listed], capsys, monkeypatch)
    assert_one_line_error(result, "--sequences", "names no sequence")
    assert not (tmp_path / "r").exists()


def test_eval_perseg_empty_object_list(tmp_path, capsys, monkeypatch):
    result = run_cli(["eval", "perseg", "--root", tmp_path, "-o", tmp_path / "r", "--objects", ","], capsys, monkeypatch)
    assert_one_line_error(result, "--objects", "names no object")
    assert not (tmp_path / "r").exists()


def test_segment_mask_of_wrong_size_speaks_of_images(tmp_path, frames_dir, capsys, monkeypatch):
    """No model loads before the mask is checked: a missing --model is never reached."""
    labels = np.zeros((H + 8, W), np.uint8)
    labels[5:20, 5:20] = 1
    tall = palette_mask(tmp_path / "tall.png", labels)
    target = frames_dir / "00001.jpg"
    for command in (["segment", frames_dir / "00000.jpg", target], ["retrieve", frames_dir / "00000.jpg", "--gallery", frames_dir]):
        args = [*command, "--mask", tall, "-o", tmp_path / "out", "--model", tmp_path / "no-model"]
        result = run_cli(args, capsys, monkeypatch)
        role = "reference" if command[0] == "segment" else "query"
        assert_one_line_error(result, "tall.png", f"{W}x{H + 8}", f"the {role} image is {W}x{H}")
        assert "video" not in result.err and "frame" not in result.err


def test_output_into_the_frame_folder_is_refused(tmp_path, frames_dir, first_mask, base_args, capsys, monkeypatch):
    before = {path.name: path.read_bytes() for path in frames_dir.iterdir()}
    png_frames = tmp_path / "png-frames"
    png_frames.mkdir()
    for name in before:  # frames stored as PNG: their names collide with the output masks
        Image.open(frames_dir / name).save(png_frames / name.replace(".jpg", ".png"))
    originals = {path.name: path.read_bytes() for path in png_frames.iterdir()}
    result = run_cli(["propagate", png_frames, "--mask", first_mask, "-o", png_frames, *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "png-frames", "mix with inputs")
    assert {path.name: path.read_bytes() for path in png_frames.iterdir()} == originals


@pytest.mark.parametrize(
    ("flag", "value"), [("--tau", "1.5"), ("--context", "-1"), ("--radius", "-3"), ("--size", "500"), ("--fixed-point-iters", "-2")]
)
def test_out_of_range_numbers(flag, value, frames_dir, first_mask, capsys, monkeypatch):
    result = run_cli(["propagate", frames_dir, "--mask", first_mask, flag, value], capsys, monkeypatch)
    assert_one_line_error(result, flag, value)


def test_outputs_are_readable_like_any_new_file(tmp_path, frames_dir, first_mask, base_args, capsys, monkeypatch):
    import os
    import stat

    out = tmp_path / "out"
    result = run_cli(["propagate", frames_dir, "--mask", first_mask, "-o", out, "--rle", *base_args], capsys, monkeypatch)
    assert result.code == 0, result.err
    umask = os.umask(0)
    os.umask(umask)
    for path in [*out.glob("*.png"), out / "overlay.mp4", out / "masks.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
