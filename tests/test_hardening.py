"""Issue 14's regression tests: bad disks, bad files and odd videos end in one line (exit 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.cli_runner import assert_one_line_error, run_cli
from tests.test_cli import H, W, base_args, palette_mask  # noqa: F401 (fixture)


def _clip(path: Path, rotation: int = 0) -> Path:
    """A 6-frame W x H mp4 (display metadata rotating it by ``rotation`` degrees)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.set_display_rotation(rotation)
        for _ in range(6):
            frame = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_rotated_video_with_a_mask_of_the_stored_size(tmp_path, base_args, capsys, monkeypatch):
    """Item 8: say the video is rotated and how frames are read, not 'pass --resize-mask'."""
    clip = _clip(tmp_path / "phone.mp4", 90)
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "stored.png", labels)
    result = run_cli(["propagate", clip, "--mask", mask, "-o", tmp_path / "out", *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "stored.png", "rotated by", "upright", f"{H}x{W}")
    assert "pass --resize-mask" not in result.err


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "text_encoder_2"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_weights_name_the_file(component, damage, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """Item 6: a truncated or garbage weight file is one line naming it, before any load."""
    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl, model)
    weights = next((model / component).glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100] if damage == "truncated" else b"\x07" * 4000)
    frames = _clip(tmp_path / "clip.mp4")
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "first.png", labels)
    args = ["propagate", frames, "--mask", mask, "-o", tmp_path / "out", "--model", model, "--sam", "none", "--no-cache"]
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, f"{component}/{weights.name}", "damaged or incomplete weights; re-download")


def _fill_disk_at(monkeypatch: pytest.MonkeyPatch, folder: Path, victim: str, after: int = 0) -> None:
    """Make the temporary file of ``victim`` (a suffix: .png, .mp4, .json) in ``folder`` a link
    to /dev/full from its ``after``-th temporary on, so writing it fails with ENOSPC like a full disk."""
    import tempfile

    from pdmtrack.io import files as fsutil

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    made = {"count": 0}
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        if name.endswith(victim) and Path(name).parent == folder:
            made["count"] += 1
            if made["count"] > after:
                os.unlink(name)
                os.symlink("/dev/full", name)
        return fd, name

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize(("victim", "flags"), [(".png", []), (".mp4", []), (".json", ["--rle"])])
def test_disk_full_is_one_line_and_leaves_complete_files(victim, flags, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """Item 5: ENOSPC on a PNG, the overlay or masks.json: one line naming the folder, no
    temporaries, every file left behind complete."""
    clip = _clip(tmp_path / "clip.mp4")
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "first.png", labels)
    out = tmp_path / "out"
    _fill_disk_at(monkeypatch, out, victim, after=3 if victim == ".png" else 0)
    args = [
        "propagate",
        clip,
        "--mask",
        mask,
        "-o",
        out,
        "--model",
        tiny_sdxl,
        "--sam",
        "none",
        "--size",
        "64",
        "--batch-size",
        "2",
        "--cache-dir",
        tmp_path / "cache",
        *flags,
    ]
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, str(out), "no space left")
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == (3 if victim == ".png" else len(pngs))
    for png in pngs:
        with Image.open(png) as image:
            image.load()
    assert not (out / "overlay.mp4").exists() and not (out / "masks.json").exists()


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_killed_runs_are_removed(tiny_sdxl, tmp_path, capsys, monkeypatch):
    """Item 10: the next run removes what killed runs left (only pdmtrack's temporaries of
    processes that are gone), in the output folder and the feature cache."""
    from pdmtrack.io.files import atomic_path

    clip = _clip(tmp_path / "clip.mp4")
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "first.png", labels)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["propagate", clip, "--mask", mask, "-o", out, "--model", tiny_sdxl, "--sam", "none", "--size", "64", "--cache-dir", cache]
    assert run_cli(args, capsys, monkeypatch).code == 0
    with atomic_path(out / "00001.png") as live:  # this process's own temporary: kept
        dead = _dead_pid()
        stale = [out / f".00003.{dead}-abcdefgh.tmp.png", out / f".overlay.{dead}-x_1y2z3w.tmp.mp4"]
        stale.append(cache / "tmp" / f".entry.{dead}-abcdefgh.tmp")
        kept = [out / ".notes.tmp.txt", out / ".00003.abcdefgh.tmp.png", live]
        for path in stale + kept:
            path.write_bytes(b"partial")
        scratch = out / f".pdmtrack-backward.{dead}-abcdefgh.tmp"  # a killed backward run's scratch
        scratch.mkdir()
        (scratch / "3.png").write_bytes(b"partial")
        stale.append(scratch)
        assert run_cli(args, capsys, monkeypatch).code == 0
        assert [path.name for path in stale if path.exists()] == []
        assert all(path.exists() for path in kept)


def _square_propagate(clip: Path, tmp_path: Path, model: Path) -> list:
    """``propagate CLIP`` from a square first-frame mask (id 1) into tmp_path/out, tiny model,
    no SAM (the mask is the 4th word, the output folder the 6th)."""
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "first.png", labels)
    out, cache = tmp_path / "out", tmp_path / "cache"
    return ["propagate", clip, "--mask", mask, "-o", out, "--model", model, "--sam", "none", "--size", "64", "--cache-dir", cache]


def _times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [round(float(frame.pts * frame.time_base), 3) for frame in container.decode(video=0)]


def test_overlay_keeps_variable_frame_rate_timestamps(tiny_sdxl, tmp_path, capsys, monkeypatch):
    """Item 11: the overlay of a variable-frame-rate video shows each frame at its source time."""
    from fractions import Fraction

    times = [0.0, 0.1, 0.15, 0.5, 0.55, 1.2]
    clip = tmp_path / "vfr.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for time in times:
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(time * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert _times(clip) == times
    out = tmp_path / "out"
    args = [*_square_propagate(clip, tmp_path, tiny_sdxl), "--start", "1"]
    assert run_cli(args, capsys, monkeypatch).code == 0
    assert _times(out / "overlay.mp4") == [round(t - times[1], 3) for t in times[1:]]


# --- DAVIS split files and results folders -----------------------------------------------------


@pytest.fixture()
def davis(tmp_path: Path) -> Path:
    from tests.test_eval_davis import make_davis, moving_squares

    shape = (36, 48)
    return make_davis(
        tmp_path / "davis", {"alpha": moving_squares(5, shape, [(4, 2, 8)]), "beta": moving_squares(5, shape, [(10, 10, 12)])}
    )


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"alpha\nbeta\nalpha\n", ["line 3", "'alpha' is listed again (first on line 1)"]),  # item 1
        (b"alpha\n../480p/beta\n", ["line 2", "not a sequence folder name"]),  # item 9
        (b"alpha\n..\n", ["line 2", "not a sequence folder name"]),
        (b"alpha\nb\xe9ta\n", ["not UTF-8 text"]),  # item 7
    ],
)
def test_bad_split_files_are_one_line(davis, content, fragments, tmp_path, capsys, monkeypatch):
    """Items 1, 7, 9: a split file listing a name twice, a path, or not UTF-8 text is refused
    naming the line, before anything is tracked or written."""
    split_file = davis / "ImageSets" / "2017" / "val.txt"
    split_file.write_bytes(content)
    out = tmp_path / "out"
    result = run_cli(["eval", "davis", "--root", davis, "-o", out], capsys, monkeypatch)
    assert_one_line_error(result, str(split_file), *fragments)
    assert not out.exists()


@pytest.mark.parametrize("record", [b"\x00\xff{garbage", b'["a list"]', b'"text"'])
def test_corrupt_tracking_settings_record_is_one_line(davis, record, tmp_path, capsys, monkeypatch):
    """Item 7: a damaged tracking_settings.json in an eval davis output folder."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "tracking_settings.json").write_bytes(record)
    result = run_cli(["eval", "davis", "--root", davis, "-o", out], capsys, monkeypatch)
    assert_one_line_error(result, "tracking_settings.json")


# --- build-permis ------------------------------------------------------------------------------


@pytest.fixture()
def burst(tmp_path: Path) -> Path:
    from tests.test_burst import write_synthetic_burst

    return write_synthetic_burst(tmp_path / "BURST")


def test_duplicated_burst_sequence_is_counted_once(burst, tmp_path):
    """Item 1: a sequence entry listed twice is written once and its copy counted as dropped."""
    import json

    from pdmtrack.burst import DUPLICATE, build_permirs

    path = burst / "annotations" / "val" / "all_classes.json"
    data = json.loads(path.read_text())
    data["sequences"] = data["sequences"] * 2
    path.write_text(json.dumps(data))
    out = tmp_path / "PerMIRS"
    summary = build_permirs(burst, out)
    videos = [video["video"] for video in json.loads((out / "manifest.json").read_text())["videos"]]
    assert videos.count("val_000007_ArgoVerse_png_video") == 1
    listed = (out / "permis-video" / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert listed.count("val_000007_ArgoVerse_png_video") == 1
    assert summary.dropped[DUPLICATE] == 1 and summary.kept == 3


def test_build_permis_uses_the_splits_present(burst, tmp_path, capsys, monkeypatch):
    """Item 12: only val downloaded builds from val and says so; a named missing split, or no
    annotation file at all, is one line."""
    shutil.rmtree(burst / "annotations" / "train")
    shutil.rmtree(burst / "annotations" / "test")
    out = tmp_path / "PerMIRS"
    result = run_cli(["build-permis", "--burst", burst, "-o", out], capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "built from split(s) val only (train, test not found" in result.out
    assert "the paper's counts need all of train, val, test" in result.out
    assert (out / "manifest.json").is_file()
    named = run_cli(["build-permis", "--burst", burst, "-o", tmp_path / "b", "--splits", "train,val"], capsys, monkeypatch)
    assert_one_line_error(named, "annotations/train/all_classes.json", "not found")
    shutil.rmtree(burst / "annotations" / "val")
    none = run_cli(["build-permis", "--burst", burst, "-o", tmp_path / "c"], capsys, monkeypatch)
    assert_one_line_error(none, "no BURST annotation file found")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# --- output folders: writable, one run each ------------------------------------------------


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in (root ignores modes: use sysfs, which refuses)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o500)
        return folder / "out"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without /sys: no unwritable folder to test with")
    return Path("/sys/kernel/pdmtrack-out")


@pytest.mark.parametrize("command", ["propagate", "eval davis"])
@pytest.mark.parametrize("problem", ["file in the way", "not writable"])
def test_unusable_output_folder_is_refused_before_loading(command, problem, davis, tmp_path, capsys, monkeypatch):
    """Item 4: checked before any model loads (the default hub model is not cached here, so
    loading it first would end with another message)."""
    if problem == "file in the way":
        (tmp_path / "afile").write_text("in the way")
        out, fragments = tmp_path / "afile" / "sub", [str(tmp_path / "afile"), "is a file"]
    else:
        out, fragments = _unwritable_folder(tmp_path), ["cannot"]
    if command == "propagate":
        mask = davis / "Annotations" / "480p" / "alpha" / "00000.png"
        args = ["propagate", davis / "JPEGImages" / "480p" / "alpha", "--mask", mask, "-o", out]
    else:
        args = ["eval", "davis", "--root", davis, "-o", out]
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, str(out), *fragments)
    assert "Hugging Face" not in result.err


def test_eval_davis_keeps_user_files_in_a_sequences_results_folder(davis, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """A tracked sequence's folder is renamed onto results/<seq>, replacing it: one holding a
    file no pdmtrack run wrote is refused, and the file stays (it was deleted)."""
    out = tmp_path / "out"
    (out / "results" / "alpha").mkdir(parents=True)
    (out / "results" / "alpha" / "notes.txt").write_text("mine\n")
    model = ["--model", tiny_sdxl, "--size", "64", "--inversion", "noise", "--sam", "none", "--cache-dir", tmp_path / "cache"]
    result = run_cli(["eval", "davis", "--root", davis, "-o", out, *model], capsys, monkeypatch)
    assert_one_line_error(result, "alpha", "notes.txt", "no pdmtrack run of this kind wrote")
    assert sorted(p.name for p in (out / "results" / "alpha").iterdir()) == ["notes.txt"]


def test_a_folder_keeps_one_runs_outputs(tiny_sdxl, tmp_path, capsys, monkeypatch):
    """Item 2: a shorter or otherwise different run into a used folder is refused (saying how
    to override); with --overwrite the previous run's files go first; the folder then holds
    exactly that run's outputs and its run record."""
    import json

    clip = _clip(tmp_path / "clip.mp4")
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    out = tmp_path / "out"
    base = [*_square_propagate(clip, tmp_path, tiny_sdxl), "--rle"]
    assert run_cli(base, capsys, monkeypatch).code == 0
    assert run_cli(base, capsys, monkeypatch).code == 0  # the same run again: fine
    shorter = run_cli([*base[:-1], "--end", "3"], capsys, monkeypatch)
    assert_one_line_error(shorter, str(out), "another run", "frames", "outputs", "--overwrite")
    labels[40:60, 50:90] = 2
    other_mask = run_cli([*base[:3], palette_mask(tmp_path / "second.png", labels), *base[4:]], capsys, monkeypatch)
    assert_one_line_error(other_mask, str(out), "another run", "masks", "--overwrite")
    assert len(list(out.glob("*.png"))) == 6
    assert run_cli([*base[:-1], "--end", "3", "--overwrite"], capsys, monkeypatch).code == 0
    names = sorted(p.name for p in out.iterdir() if p.name != ".pdmtrack.lock")  # the run lock (kept, hidden)
    assert names == ["00000.png", "00001.png", "00002.png", "overlay.mp4", "run.json"]
    record = json.loads((out / "run.json").read_text())
    assert record["frames"] == [0, 3] and record["frames_written"] == 3 and record["finished"]
    assert record["settings"]["features"]["size"] == 64 and record["files"] == names[:3] + ["overlay.mp4"]
