"""``pdmtrack build-permis`` and ``pdmtrack eval permis|permir`` through the command line."""

from __future__ import annotations

import csv
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
