"""`pdmtrack segment`, `retrieve`, `index build/add`, `eval perseg` and `eval roxford` through
the CLI, with tiny models (SDXL-shaped diffusion, DINOv2) on davis-mini frames."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import assert_one_line_error, run_cli
from PIL import Image
from test_perseg import write_perseg
from test_revisited import write_dataset

from pdmtrack.io.masks import read_mask
from pdmtrack.io.writers import write_palette_png
from pdmtrack.runs.record import OUTPUTS_LIST

pytestmark = pytest.mark.slow
FRAMES = {"blackswan": [0, 10, 20], "car-shadow": [0, 10, 20], "motocross-jump": [0, 10]}


@pytest.fixture(scope="module")
def images(davis_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gallery of davis-mini frames (downscaled to 214x120) and a two-object reference mask."""
    root = tmp_path_factory.mktemp("images")
    gallery = root / "gallery"
    gallery.mkdir()
    for sequence, indices in FRAMES.items():
        for index in indices:
            source = davis_mini / "JPEGImages" / "480p" / sequence / f"{index:05d}.jpg"
            Image.open(source).resize((214, 120)).save(gallery / f"{sequence}_{index:05d}.jpg")
    swan = np.asarray(Image.open(davis_mini / "Annotations" / "480p" / "blackswan" / "00000.png").resize((214, 120), Image.NEAREST))
    labels = np.where(swan > 0, 5, 0).astype(np.uint8)
    labels[5:25, 5:40] = 2  # a second object, id 2, in the top-left corner
    write_palette_png(root / "ref_mask.png", labels)
    return {"gallery": gallery, "reference": gallery / "blackswan_00000.jpg", "mask": root / "ref_mask.png"}


def tiny_flags(tiny_sdxl: Path, tmp_path: Path) -> list[str]:
    return ["--model", str(tiny_sdxl), "--sam", "none", "--size", "64", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]


def test_segment_with_a_mask_keeps_object_ids(images, tiny_sdxl, tmp_path, capsys, monkeypatch):
    targets = [images["gallery"] / "blackswan_00010.jpg", images["gallery"] / "blackswan_00020.jpg"]
    args = ["segment", images["reference"], *targets, "--mask", images["mask"], "-o", tmp_path / "out"]
    result = run_cli([*args, *tiny_flags(tiny_sdxl, tmp_path), "--present-threshold", "0"], capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "2 images" in result.out
    for target in targets:
        mask = read_mask(tmp_path / "out" / f"{target.stem}.png")
        assert mask.labels.shape == (120, 214) and set(mask.object_ids) <= {2, 5}
        assert (tmp_path / "out" / f"{target.stem}_overlay.jpg").is_file()
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["presence_threshold"] == 0 and len(scores["targets"]) == 2
    objects = scores["targets"][0]["objects"]
    assert [o["object_id"] for o in objects] == [2, 5] and all(o["present"] for o in objects)
    assert {"peak", "mean", "presence"} <= set(objects[0])


def test_segment_with_a_class_name_and_a_folder(images, tiny_sdxl, tmp_path, capsys, monkeypatch):
    targets = tmp_path / "targets"
    targets.mkdir()
    for name in ("car-shadow_00010.jpg", "car-shadow_00020.jpg"):
        shutil.copy(images["gallery"] / name, targets / name)
    args = ["segment", images["gallery"] / "car-shadow_00000.jpg", targets, "--cls", "dog", "-o", tmp_path / "out"]
    result = run_cli([*args, *tiny_flags(tiny_sdxl, tmp_path), "--no-overlay"], capsys, monkeypatch)
    assert result.code == 0, result.err
    names = ["car-shadow_00010.png", "car-shadow_00020.png", "scores.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [OUTPUTS_LIST, *names]
    assert (tmp_path / "out" / OUTPUTS_LIST).read_text().split() == names
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["classes"] == ["dog"] and [o["object_id"] for o in scores["targets"][0]["objects"]] == [1]


def test_segment_errors(images, tiny_sdxl, tmp_path, capsys, monkeypatch):
    flags = tiny_flags(tiny_sdxl, tmp_path)
    result = run_cli(["segment", images["reference"], images["gallery"], "-o", tmp_path / "o", *flags], capsys, monkeypatch)
    assert_one_line_error(result, "--mask", "--cls")
    result = run_cli(["segment", images["reference"], tmp_path / "none", "--cls", "dog", *flags], capsys, monkeypatch)
    assert_one_line_error(result, "none: not found")
    out = images["gallery"]  # writing the target's own folder would overwrite nothing, but a PNG input would be
    png_target = tmp_path / "t.png"
    Image.open(images["reference"]).save(png_target)
    result = run_cli(["segment", images["reference"], png_target, "--cls", "dog", "-o", tmp_path, *flags], capsys, monkeypatch)
    assert_one_line_error(result, "mix with inputs")
    assert out.is_dir()


def read_ranking(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_retrieve_over_a_folder_then_from_the_cache(images, tiny_sdxl, tmp_path, capsys, monkeypatch):
    args = ["retrieve", images["reference"], "--gallery", images["gallery"], "--mask", images["mask"], *tiny_flags(tiny_sdxl, tmp_path)]
    first = run_cli([*args, "-o", tmp_path / "one"], capsys, monkeypatch)
    assert first.code == 0, first.err
    ranking = read_ranking(tmp_path / "one" / "ranking.csv")
    assert len(ranking) == 8 and [r["rank"] for r in ranking] == [str(i) for i in range(1, 9)]
    assert {r["stage"] for r in ranking} == {"pdm"}
    scores = [float(r["score"]) for r in ranking]
    assert scores == sorted(scores, reverse=True)
    sheet = Image.open(tmp_path / "one" / "contact_sheet.png")
    assert sheet.width > 224 and sheet.height > 224
    second = run_cli([*args, "-o", tmp_path / "two"], capsys, monkeypatch)
    assert ", 0 computed" in second.out  # the query and every gallery image come from the cache
    assert_same_ranking(read_ranking(tmp_path / "two" / "ranking.csv"), ranking)


def assert_same_ranking(one: list[dict], two: list[dict]) -> None:
    """Same images in the same order and stages, scores equal up to float rounding."""
    assert [(r["image"], r["stage"]) for r in one] == [(r["image"], r["stage"]) for r in two]
    np.testing.assert_allclose([float(r["score"]) for r in one], [float(r["score"]) for r in two], atol=1e-5)


def test_index_build_add_and_rerank(images, tiny_sdxl, tiny_dinov2, tmp_path, capsys, monkeypatch):
    part_one, part_two = tmp_path / "one", tmp_path / "two"
    part_one.mkdir()
    part_two.mkdir()
    for path in sorted(images["gallery"].iterdir()):
        shutil.copy(path, (part_one if "car" not in path.name else part_two) / path.name)
    global_flags = ["--global-model", tiny_dinov2, "--global-size", "56", "--device", "cpu"]
    built = run_cli(["index", "build", part_one, "-o", tmp_path / "index", *global_flags], capsys, monkeypatch)
    assert built.code == 0, built.err
    assert "5 images added" in built.out
    added = run_cli(["index", "add", tmp_path / "index", part_two, part_one, "--device", "cpu"], capsys, monkeypatch)
    assert added.code == 0, added.err
    assert "3 images added" in added.out and "5 already indexed" in added.out and "8 images in" in added.out

    args = ["retrieve", images["reference"], "--gallery", tmp_path / "index", "--mask", images["mask"], "--rerank", "3"]
    args += tiny_flags(tiny_sdxl, tmp_path)
    result = run_cli([*args, "-o", tmp_path / "r1"], capsys, monkeypatch)
    assert result.code == 0, result.err
    ranking = read_ranking(tmp_path / "r1" / "ranking.csv")
    assert [r["stage"] for r in ranking] == ["pdm"] * 3 + ["global"] * 5
    assert all(Path(r["image"]).is_absolute() for r in ranking)
    again = run_cli([*args, "-o", tmp_path / "r2"], capsys, monkeypatch)  # the index reloaded from disk
    assert again.code == 0
    assert_same_ranking(read_ranking(tmp_path / "r2" / "ranking.csv"), ranking)
    assert "0 computed" in again.out

    index_is_file = run_cli(["index", "add", images["reference"], part_one, "--device", "cpu"], capsys, monkeypatch)
    assert_one_line_error(index_is_file, "blackswan_00000.jpg: not an index folder")


def test_eval_perseg_and_roxford(tiny_sdxl, tiny_dinov2, tmp_path, capsys, monkeypatch):
    flags = tiny_flags(tiny_sdxl, tmp_path)
    perseg = run_cli(["eval", "perseg", "--root", write_perseg(tmp_path / "PerSeg"), "-o", tmp_path / "ps", *flags], capsys, monkeypatch)
    assert perseg.code == 0, perseg.err
    report = json.loads((tmp_path / "ps" / "perseg_report.json").read_text())
    assert set(report["global"]) == {"mIoU", "bIoU"} and len(report["per_object"]) == 2
    data = write_dataset(tmp_path / "data")
    args = ["eval", "roxford", "--root", data, "--dataset", "roxford5k", "-o", tmp_path / "rox", *flags]
    global_only = run_cli([*args, "--rerank", "0", "--global-model", tiny_dinov2, "--global-size", "56"], capsys, monkeypatch)
    assert global_only.code == 0, global_only.err
    report = json.loads((tmp_path / "rox" / "roxford5k_report.json").read_text())
    assert report["settings"]["rerank"] == 0 and 0 <= report["global"]["mAP medium"] <= 1
    bad = run_cli([*args, "--dataset", "oxford5k"], capsys, monkeypatch)
    assert_one_line_error(bad, "--dataset", "roxford5k, rparis6k")


@pytest.mark.parametrize("features", ["dinov2", "dift"])
def test_propagate_with_a_baseline(features, images, davis_mini, tiny_sdxl, tiny_dinov2, tmp_path, capsys, monkeypatch):
    clip = tmp_path / "clip"
    clip.mkdir()
    for index in range(3):
        Image.open(davis_mini / "JPEGImages" / "480p" / "blackswan" / f"{index:05d}.jpg").resize((214, 120)).save(clip / f"{index:05d}.jpg")
    baseline = ["--features", features, "--dinov2-model", tiny_dinov2, "--dinov2-size", "56", "--dift-ensemble", "1"]
    args = ["propagate", clip, "--mask", images["mask"], "-o", tmp_path / "out", "--no-overlay", *baseline]
    result = run_cli([*args, *tiny_flags(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert result.code == 0, result.err
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["00000.png", "00001.png", "00002.png"]
    assert set(np.unique(np.asarray(Image.open(written[-1])))) <= {0, 2, 5}  # random weights may lose objects


def test_ovdiff_commands_refuse_baseline_features(images, tmp_path, capsys, monkeypatch):
    result = run_cli(["segment-ov", images["reference"], "--classes", "swan", "--features", "dinov2", "-o", tmp_path], capsys, monkeypatch)
    assert_one_line_error(result, "--features", "PDM features only")


def test_segment_targets_of_two_folders_with_one_name(images, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """dog/00000.jpg and goat/00000.jpg are both segmented, named by their folders."""
    for folder, source in (("dog", "blackswan_00010.jpg"), ("goat", "car-shadow_00010.jpg")):
        (tmp_path / folder).mkdir()
        shutil.copy(images["gallery"] / source, tmp_path / folder / "00000.jpg")
    args = ["segment", images["reference"], tmp_path / "dog" / "00000.jpg", tmp_path / "goat" / "00000.jpg"]
    result = run_cli([*args, "--mask", images["mask"], "-o", tmp_path / "out", *tiny_flags(tiny_sdxl, tmp_path)], capsys, monkeypatch)
    assert result.code == 0, result.err
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"dog_00000.png", "goat_00000.png"}
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert [t["mask"] for t in scores["targets"]] == ["dog_00000.png", "goat_00000.png"]


def test_a_second_segment_into_one_folder_replaces_the_first_whole(images, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """-o holds one run's outputs: a second run with other targets replaces the first's
    files (they mixed); a run that fails half-way leaves the folder as it was; a folder
    holding a file no pdmtrack image run wrote is refused and kept."""
    out = tmp_path / "out"
    gallery = images["gallery"]
    run = [images["reference"], "--mask", images["mask"], "-o", out, *tiny_flags(tiny_sdxl, tmp_path), "--no-overlay"]
    first = run_cli(["segment", *run, gallery / "car-shadow_00010.jpg", gallery / "car-shadow_00020.jpg"], capsys, monkeypatch)
    assert first.code == 0, first.err
    second = run_cli(["segment", *run, gallery / "motocross-jump_00010.jpg"], capsys, monkeypatch)
    assert second.code == 0, second.err
    assert sorted(p.name for p in out.iterdir()) == [OUTPUTS_LIST, "motocross-jump_00010.png", "scores.json"]
    assert [Path(t["image"]).name for t in json.loads((out / "scores.json").read_text())["targets"]] == ["motocross-jump_00010.jpg"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    broken = tmp_path / "broken" / "zz_broken.jpg"  # read after the good target
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    failed = run_cli(["segment", *run, gallery / "blackswan_00010.jpg", broken], capsys, monkeypatch)
    assert_one_line_error(failed, "zz_broken.jpg")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    (out / "notes.txt").write_text("mine\n")
    refused = run_cli(["segment", *run, gallery / "blackswan_00010.jpg"], capsys, monkeypatch)
    assert_one_line_error(refused, str(out), "notes.txt", "no pdmtrack run of this kind wrote")
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "motocross-jump_00010.png").read_bytes() == before[
        "motocross-jump_00010.png"
    ]


def test_retrieve_into_a_used_folder_replaces_the_previous_ranking(images, tiny_sdxl, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ranked"
    args = ["retrieve", images["reference"], "--gallery", images["gallery"], "--cls", "swan", "-o", out, *tiny_flags(tiny_sdxl, tmp_path)]
    assert run_cli(args, capsys, monkeypatch).code == 0
    (out / "extra_from_an_old_version.png").write_bytes(b"x")
    refused = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(refused, "extra_from_an_old_version.png")
    (out / "extra_from_an_old_version.png").unlink()
    again = run_cli(args, capsys, monkeypatch)
    assert again.code == 0, again.err
    assert sorted(p.name for p in out.iterdir()) == [OUTPUTS_LIST, "contact_sheet.png", "ranking.csv"]
