"""Output folders: never modify inputs, never mix two runs, never end in a traceback
(issue 18): given masks inside -o, output folders among the inputs, read-only folders,
symbolic link loops, two runs at once, refused batches, Excel CSV, the disk reserve."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdmtrack.io.masks import read_mask
from tests.cli_runner import assert_one_line_error, run_cli
from tests.test_cli import H, W, base_args, first_mask, frames_dir  # noqa: F401 (fixtures)
from tests.test_hardening import davis  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
TRACKING_DOC = REPO / "docs" / "tracking.md"


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _doc_block(marker: str, doc: Path = TRACKING_DOC) -> list[str]:
    """The document's shell lines from the comment line holding ``marker`` to the next blank line."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#") and marker in line)
    block = []
    for line in lines[first + 1 :]:
        if not line.strip():
            break
        block.append(line.split("  #")[0].strip())
    return block


# --- item 1: a given mask inside -o ---------------------------------------------------------


def test_the_documented_correction_recipe_word_for_word(frames_dir, first_mask, base_args, tmp_path, capsys, monkeypatch):
    """Correcting a run's output: a mask given from inside -o is refused (it would be replaced
    by the output of its frame), saying how; the recipe of docs/tracking.md (copy it out, edit,
    run again with --overwrite) works and the correction is the output at its frame."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(frames_dir, tmp_path / "video")
    assert run_cli(["propagate", "video", "--mask", "first.png", "-o", "out/", *base_args], capsys, monkeypatch).code == 0
    before = (tmp_path / "out" / "00002.png").read_bytes()
    inside = run_cli(["propagate", "video", "--mask", "first.png", "--mask", "2:out/00002.png", "-o", "out/", "--overwrite",
                      *base_args], capsys, monkeypatch)  # fmt: skip
    assert_one_line_error(inside, "out", "holds the input out/00002.png", "cp OUT/00002.png fixed.png", "--mask 2:fixed.png")
    assert (tmp_path / "out" / "00002.png").read_bytes() == before

    recipe = _doc_block("correct a run's output")
    assert recipe[0] == "cp out/dog/00300.png fixed_00300.png"
    assert recipe[1].startswith("pdmtrack propagate video.mp4 --mask first.png --mask 300:fixed_00300.png -o out/dog --overwrite")
    shutil.copy(tmp_path / "out" / "00002.png", tmp_path / "fixed_00002.png")  # the recipe's cp, at frame 2
    fixed = np.zeros((H, W), np.uint8)
    fixed[12:32, 14:34] = 1  # the edit: object 1 redrawn, object 2 ends at frame 2
    Image.fromarray(fixed, mode="L").save(tmp_path / "fixed_00002.png")
    args = recipe[1].split()[1:]  # after "pdmtrack"
    args = [{"video.mp4": "video", "300:fixed_00300.png": "2:fixed_00002.png", "out/dog": "out/"}.get(arg, arg) for arg in args]
    assert run_cli([*args, *base_args], capsys, monkeypatch).code == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "00002.png").labels, fixed)


# --- items 2, 3: output folders among the inputs -------------------------------------------


def test_output_into_a_jpeg_frame_folder_is_refused(frames_dir, first_mask, base_args, tmp_path, capsys, monkeypatch):
    """Item 2: -o the JPEG frame folder, a folder inside it, or a link to it: one line, the
    frame folder unchanged (the next run on it would read the outputs as frames)."""
    (tmp_path / "link").symlink_to(frames_dir)
    before = _tree(frames_dir)
    for out in (frames_dir, frames_dir / "masks", tmp_path / "link"):
        result = run_cli(["propagate", frames_dir, "--mask", first_mask, "-o", out, *base_args], capsys, monkeypatch)
        assert_one_line_error(result, str(out), "frames", "mix with inputs")
        assert _tree(frames_dir) == before and sorted(p.name for p in frames_dir.iterdir()) == sorted(before)


@pytest.fixture()
def gallery(tmp_path: Path) -> Path:
    """A folder of two small JPEG images, 00000.jpg and 00010.jpg."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "gal"
    folder.mkdir()
    for index in (0, 10):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{index:05d}.jpg")
    return folder


def test_output_folders_among_the_inputs_are_refused(gallery, tmp_path, capsys, monkeypatch):
    """Item 3: segment -o TARGETS, retrieve --gallery GAL -o GAL (or inside it), index build
    and propagate-batch likewise: one line before any model loads, the inputs unchanged."""
    before = _tree(gallery)
    query = gallery / "00000.jpg"
    flags = ["--model", tmp_path / "no-model", "--cls", "swan"]
    commands = [
        ["segment", query, gallery, *flags, "-o", gallery],
        ["retrieve", query, "--gallery", gallery, *flags, "-o", gallery],
        ["retrieve", query, "--gallery", gallery, *flags, "-o", gallery / "ranked"],
        ["index", "build", gallery, "--global-model", tmp_path / "no-model", "-o", gallery / "index"],
        ["propagate-batch", "--videos", tmp_path, "--cls", "swan", "--model", tmp_path / "no-model", "-o", tmp_path / "batch"],
    ]
    for args in commands:
        result = run_cli(args, capsys, monkeypatch)
        assert_one_line_error(result, str(args[-1]), "mix with inputs")
        assert _tree(gallery) == before
    assert not (tmp_path / "batch").exists()


# --- items 4, 5: read-only output folders, symbolic link loops ------------------------------


def _read_only_below(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Files under ``folder`` cannot be created (a read-only file system: EROFS), as root too."""
    folder = folder.resolve()

    def refusing(function):
        def call(*args, **kwargs):
            where = kwargs.get("dir")
            if where is not None and (Path(where).resolve() == folder or folder in Path(where).resolve().parents):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return function(*args, **kwargs)

        return call

    for name in ("TemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refusing(getattr(tempfile, name)))


def _commands_with_out(gallery: Path, tmp_path: Path, out: Path) -> dict[str, list]:
    from tests.test_burst import write_synthetic_burst

    query = gallery / "00000.jpg"
    model = ["--model", tmp_path / "no-model"]
    burst = write_synthetic_burst(tmp_path / "BURST")
    return {
        "propagate-batch": ["propagate-batch", "--videos", gallery.parent / "videos", "--cls", "swan", *model, "-o", out],
        "segment": ["segment", query, gallery / "00010.jpg", "--cls", "swan", *model, "-o", out],
        "retrieve": ["retrieve", query, "--gallery", gallery, "--cls", "swan", *model, "-o", out],
        "index build": ["index", "build", gallery, "--global-model", tmp_path / "no-model", "-o", out],
        "build-permis": ["build-permis", "--burst", burst, "-o", out],
    }


@pytest.mark.parametrize("command", ["propagate-batch", "segment", "retrieve", "index build", "build-permis"])
def test_read_only_output_folder_is_one_line_before_loading(command, gallery, tmp_path, capsys, monkeypatch):
    """Item 4: as `propagate` and `eval davis`: a write probe before any model loads."""
    (tmp_path / "videos").mkdir()
    shutil.copytree(gallery, tmp_path / "videos" / "clip")
    (tmp_path / "ro").mkdir()
    out = tmp_path / "ro" / "out"
    args = _commands_with_out(gallery, tmp_path, out)[command]
    _read_only_below(monkeypatch, tmp_path / "ro")
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, "ro", "Read-only file system", "choose another -o")
    assert not out.exists()


@pytest.mark.parametrize("command", ["propagate", "propagate-batch", "segment", "retrieve", "index build", "build-permis", "eval davis"])
def test_output_folder_that_is_a_symlink_loop(command, gallery, davis, tmp_path, capsys, monkeypatch):
    """Item 5: `ln -s loop loop; -o loop`: one line, exit 2, for every command with -o."""
    (tmp_path / "videos").mkdir()
    shutil.copytree(gallery, tmp_path / "videos" / "clip")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    commands = _commands_with_out(gallery, tmp_path, loop)
    commands["propagate"] = ["propagate", gallery, "--cls", "swan", "--model", tmp_path / "no-model", "-o", loop]
    commands["eval davis"] = ["eval", "davis", "--root", davis, "-o", loop]
    result = run_cli(commands[command], capsys, monkeypatch)
    assert_one_line_error(result, str(loop), "cannot be resolved", "choose another -o")


# --- item 6: two runs into one folder ----------------------------------------------------


def test_a_folder_in_use_by_another_run_is_refused_at_once(frames_dir, first_mask, base_args, tmp_path, capsys, monkeypatch):
    """Item 6: while another run holds -o (its lock), a second run is refused at once, naming
    the holder's pid, before any model loads and, should it get past that check, before it
    writes anything; the holder's folder is left alone."""
    import pdmtrack.runs.video_folder
    from pdmtrack.io.files import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    args = ["propagate", frames_dir, "--mask", first_mask, "-o", out, "--overwrite", *base_args]
    with folder_lock(out):
        early = run_cli(args, capsys, monkeypatch)
        assert_one_line_error(early, str(out), "in use by another pdmtrack run", f"(pid {os.getpid()})")
        monkeypatch.setattr(pdmtrack.runs.video_folder, "check_not_in_use", lambda folder: None)  # both past the check
        late = run_cli(args, capsys, monkeypatch)
        assert_one_line_error(late, str(out), "in use by another pdmtrack run", f"(pid {os.getpid()})")
        assert sorted(p.name for p in out.iterdir()) == [".pdmtrack.lock"]
    assert run_cli(args, capsys, monkeypatch).code == 0  # released: the next run goes ahead


# --- items 7, 8: batches -----------------------------------------------------------------


def test_a_refused_batch_creates_no_folders(frames_dir, first_mask, base_args, tmp_path, capsys, monkeypatch):
    """Item 7: a batch refused after its first row was checked leaves no output folder; a
    refused row gets none either (item 8: the JOBS file is saved by Excel, with a BOM)."""
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"video,mask,out\n{frames_dir},{first_mask},a\n{frames_dir},{first_mask},a\n")
    refused = run_cli(["propagate-batch", jobs, "-o", tmp_path / "batch", *base_args], capsys, monkeypatch)
    assert_one_line_error(refused, "jobs.csv:3", "also another row's")
    assert not (tmp_path / "batch").exists()

    jobs.write_text(f"video,mask,out\n{frames_dir},{tmp_path / 'missing.png'},a\n", encoding="utf-8-sig")
    assert jobs.read_bytes().startswith(b"\xef\xbb\xbf")
    failed = run_cli(["propagate-batch", jobs, "-o", tmp_path / "batch", *base_args], capsys, monkeypatch)
    assert failed.code == 1 and "header" not in failed.err, failed.err
    assert "missing.png" in failed.out and "1 failed" in failed.out
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["batch_settings.json", "batch_summary.csv"]


# --- item 9: the feature cache's disk reserve --------------------------------------------


def test_docs_state_the_disk_reserve_the_message_prints():
    """Item 9: the README and docs/ give the reserve as the refusal message prints it."""
    from pdmtrack.features.cache_folder import _GB, FREE_RESERVE_BYTES

    printed = f"{FREE_RESERVE_BYTES / _GB:.1f} GB"
    text = "\n".join(doc.read_text(encoding="utf-8") for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    stated = re.findall(r"leaves (\S+ GB) free|less than (\S+ GB)", text)
    assert stated and all(printed in pair for pair in stated), (printed, stated)


# --- item 10: the overlay of --direction both --------------------------------------------


def test_overlay_of_both_directions_is_reproducible(frames_dir, first_mask, base_args, tmp_path, capsys, monkeypatch):
    """Item 10: identical runs with --direction both give identical masks and identical
    decoded overlay frames (the cause, x264's CPU-dependent thread count, has its own test in
    test_writers.py)."""
    from pdmtrack.io.video import FrameReader

    runs = []
    for run in range(3):
        out = tmp_path / f"out{run}"
        args = ["propagate", frames_dir, "--mask", f"1:{first_mask}", "--mask", f"4:{first_mask}", "--direction", "both",
                "-o", out, *base_args]  # fmt: skip
        assert run_cli(args, capsys, monkeypatch).code == 0
        masks = [(out / f"{index:05d}.png").read_bytes() for index in range(6)]
        runs.append((masks, np.stack(list(FrameReader(out / "overlay.mp4")))))
    for masks, overlay in runs[1:]:
        assert masks == runs[0][0]
        np.testing.assert_array_equal(overlay, runs[0][1])
