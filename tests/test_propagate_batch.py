"""propagate-batch in one process: JOBS files, folder mode, a bad row, resume, the summary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdmtrack.errors import InputError
from pdmtrack.io.files import LOCK_FILE
from pdmtrack.io.writers import write_palette_png
from pdmtrack.runs.batch import read_jobs
from pdmtrack.runs.record import RUN_RECORD
from tests.cli_runner import assert_one_line_error, run_cli

HEIGHT, WIDTH = 40, 56


def write_clip(folder: Path, frames: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for t in range(frames):
        frame = rng.integers(70, 130, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        frame[6:20, 4 + 2 * t : 18 + 2 * t] = (220, 60, 50)
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    return folder


def write_mask(path: Path, value: int = 1, shape: tuple[int, int] = (HEIGHT, WIDTH)) -> Path:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[6:20, 4:18] = value
    write_palette_png(path, labels)
    return path


@pytest.fixture()
def batch(tmp_path: Path) -> dict[str, Path]:
    """Three clips (4, 6 and 5 frames); the third's mask has the wrong size."""
    data = tmp_path / "data"
    for name, frames, seed in (("a", 4, 1), ("b", 6, 2), ("c", 5, 3)):
        write_clip(data / "videos" / name, frames, seed)
    write_mask(data / "masks" / "a.png")
    write_mask(data / "masks" / "b.png", value=2)
    write_mask(data / "masks" / "c.png", shape=(HEIGHT + 2, WIDTH))
    return {"data": data, "videos": data / "videos", "masks": data / "masks"}


def tiny_options(tiny_sdxl: Path, tmp_path: Path) -> list[str]:
    return ["--model", tiny_sdxl, "--size", "64", "--inversion", "noise", "--sam", "none", "--batch-size", "2",
            "--cache-dir", tmp_path / "cache", "--no-overlay"]  # fmt: skip


def summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "batch_summary.csv").open() as handle:
        return {row["out"]: row for row in csv.DictReader(handle)}


def test_jobs_file_with_a_bad_mask_reports_it_and_finishes_the_others(batch, tiny_sdxl, tmp_path, capsys, monkeypatch):
    jobs = batch["data"] / "jobs.csv"
    jobs.write_text(
        "video,mask,cls,out\nvideos/a,masks/a.png,dog,first\nvideos/b,0:masks/b.png;3:masks/b.png,,second\nvideos/c,masks/c.png,,third\n"
    )
    out = tmp_path / "out"
    result = run_cli(["propagate-batch", jobs, "-o", out, "--rle", *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert result.code == 1, result.err
    rows = summary(out)
    assert [rows[k]["status"] for k in ("first", "second", "third")] == ["done", "done", "failed"]
    assert "c.png" in rows["third"]["reason"] and "third" in result.out and "2 done" in result.out
    assert rows["first"]["frames"] == "4" and rows["second"]["frames"] == "6"
    assert sorted(p.name for p in (out / "first").glob("*.png")) == [f"{t:05d}.png" for t in range(4)]
    assert len(list((out / "second").glob("*.png"))) == 6 and (out / "second" / "masks.json").is_file()
    second_3 = np.asarray(Image.open(out / "second" / "00003.png"))
    assert set(np.unique(second_3)) == {0, 2}
    assert json.loads((out / "first" / RUN_RECORD).read_text())["frames_written"] == 4
    assert not (out / "third").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left

    # a re-run skips the finished videos (and reports the bad row again)
    stamp = (out / "first" / "00000.png").stat().st_mtime_ns
    again = run_cli(["propagate-batch", jobs, "-o", out, "--rle", *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert again.code == 1
    assert [summary(out)[k]["status"] for k in ("first", "second", "third")] == ["skipped", "skipped", "failed"]
    assert (out / "first" / "00000.png").stat().st_mtime_ns == stamp
    # other tracking settings into the same OUT are refused
    other = run_cli(
        ["propagate-batch", jobs, "-o", out, "--rle", "--context", "3", *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch
    )
    assert_one_line_error(other, "other settings", "memory")


def test_folder_mode_and_jsonl(batch, tiny_sdxl, tmp_path, capsys, monkeypatch):
    (batch["masks"] / "c.png").unlink()
    frames_masks = batch["masks"] / "c"
    write_mask(frames_masks / "00000.png", value=3)
    out = tmp_path / "folder"
    result = run_cli(["propagate-batch", "--videos", batch["videos"], "--masks", batch["masks"], "-o", out,
                      *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch)  # fmt: skip
    assert result.code == 0, result.err
    assert {k: v["status"] for k, v in summary(out).items()} == {"a": "done", "b": "done", "c": "done"}
    assert 3 in np.asarray(Image.open(out / "c" / "00000.png"))

    jobs = batch["data"] / "jobs.jsonl"
    lines = [{"video": "videos/a", "mask": "masks/a.png", "cls": ["dog"]}, {"video": "videos/b", "mask": ["0:masks/b.png"], "out": "x/b"}]
    jobs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "jsonl"
    result = run_cli(["propagate-batch", jobs, "-o", out, *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert result.code == 0, result.err
    assert len(list((out / "x" / "b").glob("*.png"))) == 6 and (out / "a" / RUN_RECORD).is_file()


def test_a_rows_folder_holding_user_files_is_refused_and_kept(batch, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """A finished video's staging folder is renamed onto its output folder, replacing it: a
    folder holding files no pdmtrack run wrote there is refused instead (they were deleted)."""
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "notes.txt").write_text("mine\n")
    jobs = batch["data"] / "jobs.csv"
    jobs.write_text("video,mask\nvideos/a,masks/a.png\nvideos/b,masks/b.png\n")
    result = run_cli(["propagate-batch", jobs, "-o", out, *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert result.code == 1, result.err
    rows = summary(out)
    assert (
        rows["a"]["status"] == "failed"
        and "notes.txt" in rows["a"]["reason"]
        and "no pdmtrack run of this kind wrote" in rows["a"]["reason"]
    )
    assert rows["b"]["status"] == "done"
    assert sorted(p.name for p in (out / "a").iterdir()) == ["notes.txt"] and (out / "a" / "notes.txt").read_text() == "mine\n"
    (out / "a" / "notes.txt").unlink()
    again = run_cli(["propagate-batch", jobs, "-o", out, *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert again.code == 0, again.err
    assert summary(out)["a"]["status"] == "done" and len(list((out / "a").glob("*.png"))) == 4
    # a folder holding only an unfinished run's own files (those its record lists, a temporary) is replaced
    record = json.loads((out / "a" / RUN_RECORD).read_text())
    (out / "a" / RUN_RECORD).write_text(json.dumps({**record, "finished": None}))
    (out / "a" / ".00002.999999-abcdefgh.tmp.png").write_bytes(b"half")
    third = run_cli(["propagate-batch", jobs, "-o", out, *tiny_options(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert third.code == 0, third.err
    assert summary(out)["a"]["status"] == "done" and json.loads((out / "a" / RUN_RECORD).read_text())["finished"]
    assert {p.name for p in (out / "a").iterdir()} - {LOCK_FILE} == {RUN_RECORD, *record["files"]}  # the temporary went with it


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("video,mask,colour\nv,m,red\n", ".csv", "unknown field(s) colour"),
        ("mask,out\nm,o\n", ".csv", "header row"),
        ("video,mask\n,m.png\n", ".csv", "jobs.csv:2: the 'video' field is empty"),
        ('{"video": "v"}\n[1]\n', ".jsonl", "jobs.jsonl:2: each line must be a JSON object"),
        ('{"video": "v"\n', ".jsonl", "not a JSON object"),
        ("video,mask\n", ".csv", "no jobs"),
    ],
)
def test_bad_jobs_files(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"jobs{suffix}"
    path.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_jobs(path)


def test_argument_errors(batch, tmp_path, capsys, monkeypatch):
    jobs = batch["data"] / "jobs.csv"
    jobs.write_text("video,mask,out\nvideos/a,masks/a.png,same\nvideos/b,masks/b.png,same\n")
    assert_one_line_error(run_cli(["propagate-batch", jobs, "-o", tmp_path / "o"], capsys, monkeypatch), "jobs.csv:3", "same")
    jobs.write_text("video,mask,out\nvideos/a,masks/a.png,../escape\n")
    assert_one_line_error(run_cli(["propagate-batch", jobs, "-o", tmp_path / "o"], capsys, monkeypatch), "inside OUT")
    assert_one_line_error(run_cli(["propagate-batch", "-o", tmp_path / "o"], capsys, monkeypatch), "JOBS file")
    assert_one_line_error(run_cli(["propagate-batch", jobs, "--workers", "0", "-o", tmp_path / "o"], capsys, monkeypatch), "--workers")


def test_more_workers_without_ray_is_one_line(batch, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    jobs = batch["data"] / "jobs.csv"
    jobs.write_text("video,mask\nvideos/a,masks/a.png\n")
    result = run_cli(["propagate-batch", jobs, "-o", tmp_path / "o", "--workers", "2", "--sam", "none"], capsys, monkeypatch)
    assert_one_line_error(result, "--workers", 'pip install "pdmtrack[ray]"')
