"""``pdmtrack build-permis`` and ``pdmtrack eval permis|permir`` through the command line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.cli_runner import assert_one_line_error, run_cli
from tests.test_burst import write_synthetic_burst


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_burst(tmp_path_factory.mktemp("burst"))


def test_build_then_evaluate(burst, tiny_sdxl, tmp_path, capsys, monkeypatch):
    out = tmp_path / "PerMIRS"
    built = run_cli(["build-permis", "--burst", burst, "-o", out], capsys, monkeypatch)
    assert built.code == 0, built.err
    assert "kept" in built.out.lower()
    assert (out / "manifest.json").is_file() and (out / "README.md").is_file()

    again = run_cli(["build-permis", "--burst", burst, "-o", out], capsys, monkeypatch)
    assert_one_line_error(again, "--overwrite")

    model = ["--model", tiny_sdxl, "--size", "64", "--inversion", "noise", "--sam", "none", "--cache-dir", tmp_path / "cache"]
    retrieval = run_cli(["eval", "permir", "--root", out, "-o", tmp_path / "permir", *model], capsys, monkeypatch)
    assert retrieval.code == 0, retrieval.err
    with open(tmp_path / "permir" / "permir_global.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert 0.0 < float(row["mAP"]) <= 1.0

    image = run_cli(["eval", "permis", "--root", out, "--task", "image", "-o", tmp_path / "image", *model], capsys, monkeypatch)
    assert image.code == 0, image.err
    assert (tmp_path / "image" / "permis_image_global.csv").is_file()

    bad_task = run_cli(["eval", "permis", "--root", out, "--task", "audio", *model], capsys, monkeypatch)
    assert_one_line_error(bad_task, "--task", "audio")


def test_missing_burst_folder(tmp_path, capsys, monkeypatch):
    result = run_cli(["build-permis", "--burst", tmp_path / "no-burst", "-o", tmp_path / "out"], capsys, monkeypatch)
    assert_one_line_error(result, "no-burst")
    assert not (tmp_path / "out").exists()


def test_overwrite_never_deletes_the_input_or_a_foreign_folder(burst, tmp_path, capsys, monkeypatch):
    import shutil

    holder = tmp_path / "holder"
    shutil.copytree(burst, holder / "BURST")
    result = run_cli(["build-permis", "--burst", holder / "BURST", "-o", holder, "--overwrite"], capsys, monkeypatch)
    assert_one_line_error(result, "input")
    assert (holder / "BURST").is_dir()

    foreign = tmp_path / "my-project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    result = run_cli(["build-permis", "--burst", burst, "-o", foreign, "--overwrite"], capsys, monkeypatch)
    assert_one_line_error(result, "manifest.json")
    assert (foreign / "notes.txt").read_text() == "precious"


def _one_short_video(permirs: Path) -> str:
    """Cut PerMIS-video down to its first sequence's first three frames (a quick run)."""
    video_root = permirs / "permis-video"
    split = video_root / "ImageSets" / "2017" / "val.txt"
    keep = split.read_text().split()[0]
    split.write_text(keep + "\n")
    for kind in ("JPEGImages", "Annotations"):
        for folder in (video_root / kind / "480p").iterdir():
            if folder.name != keep:
                shutil.rmtree(folder)
                continue
            for frame in sorted(folder.iterdir())[3:]:
                frame.unlink()
    return keep


@pytest.mark.slow
def test_eval_permis_with_default_options(burst, tiny_sdxl, tiny_sam, tmp_path, capsys, monkeypatch):
    """`eval permis --root R -o OUT`: the default task (video) and --workers, models mapped to the tiny ones."""
    root = tmp_path / "PerMIRS"
    assert run_cli(["build-permis", "--burst", burst, "-o", root], capsys, monkeypatch).code == 0
    sequence = _one_short_video(root)
    models = ["--model", tiny_sdxl, "--sam-checkpoint", tiny_sam, "--device", "cpu"]
    result = run_cli(["eval", "permis", "--root", root, "-o", tmp_path / "out", *models], capsys, monkeypatch)
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "out" / "davis_report-val.json").read_text())
    assert [row["Sequence"] for row in csv.DictReader((tmp_path / "out" / "per-sequence_results-val.csv").open())] == [f"{sequence}_1"]
    assert 0.0 <= report["global"]["J&F-Mean"] <= 1.0
    assert len(list((tmp_path / "out" / "results" / sequence).glob("*.png"))) == 3
