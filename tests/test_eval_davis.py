"""DAVIS 2017 evaluation end to end: dataset checks, scoring of result folders, CSV/JSON, mode 2."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from pdmtrack.config import MemoryConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.eval.davis import evaluate_davis
from pdmtrack.eval.davis_dataset import DavisDataset
from pdmtrack.eval.davis_scoring import evaluate_results
from tests import davis_reference as reference

GLOBAL_HEADER = "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
PER_SEQUENCE_HEADER = "Sequence,J-Mean,F-Mean"
STAT_NAMES = ["J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


def write_ids_png(path: Path, ids: np.ndarray) -> None:
    """An indexed PNG whose palette indices are the object ids (palette itself irrelevant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([channel for i in range(256) for channel in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    image.save(path)


def make_davis(root: Path, sequences: dict[str, np.ndarray], split: str = "val") -> Path:
    """A DAVIS-layout folder: JPEG frames, annotation PNGs (T, H, W ids per sequence), split list."""
    rng = np.random.default_rng(0)
    for name, sequence_ids in sequences.items():
        for t, ids in enumerate(sequence_ids):
            frame = rng.integers(0, 255, (*ids.shape, 3), dtype=np.uint8)
            jpg = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            jpg.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(jpg)
            write_ids_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)
    split_file = root / "ImageSets" / "2017" / f"{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{name}\n" for name in sequences))
    return root


def moving_squares(frames: int, shape: tuple[int, int], objects: list[tuple[int, int, int]]) -> np.ndarray:
    """(T, H, W) ids: object k+1 is a square (top, left, side) moving one pixel right per frame."""
    masks = np.zeros((frames, *shape), dtype=np.uint8)
    for t in range(frames):
        for k, (top, left, side) in enumerate(objects):
            masks[t, top : top + side, left + t : left + t + side] = k + 1
    return masks


def read_csv(path: Path) -> tuple[str, list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0], list(csv.reader(lines[1:]))


def assert_report_matches_reference(report_dir: Path, split: str, want: dict[str, tuple[float, ...]]) -> None:
    """The CSVs agree with the reference to the printed three decimals."""
    header, rows = read_csv(report_dir / f"global_results-{split}.csv")
    assert header == GLOBAL_HEADER
    np.testing.assert_allclose([float(cell) for cell in rows[0]], want["global"], atol=0.0005 + 1e-9)
    header, rows = read_csv(report_dir / f"per-sequence_results-{split}.csv")
    assert header == PER_SEQUENCE_HEADER
    assert [row[0] for row in rows] == [name for name in want if name != "global"]
    for name, j_mean, f_mean in rows:
        assert float(j_mean) == pytest.approx(want[name][0], abs=0.0005 + 1e-9)
        assert float(f_mean) == pytest.approx(want[name][3], abs=0.0005 + 1e-9)


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    """Three small sequences, one with objects 1 and 3 only (so object 2 is always absent)."""
    shape = (36, 48)
    first = moving_squares(7, shape, [(4, 2, 8), (20, 20, 6)])
    first[:, 0:3, 40:44] = 255  # void pixels count as background
    second = moving_squares(6, shape, [(5, 5, 10), (0, 0, 0), (22, 10, 9)])
    third = moving_squares(5, shape, [(10, 10, 12)])
    return make_davis(tmp_path / "davis", {"alpha": first, "beta": second, "gamma": third})


# --- the dataset ---------------------------------------------------------------------------


def test_dataset_lists_frames_and_loads_annotations(synthetic: Path) -> None:
    dataset = DavisDataset(synthetic, "val")
    assert dataset.sequences == ["alpha", "beta", "gamma"]
    assert dataset.frame_names("beta") == [f"{t:05d}" for t in range(6)]
    assert [p.name for p in dataset.frame_paths("gamma")] == [f"{t:05d}.jpg" for t in range(5)]
    annotations = dataset.load_annotations("beta")
    assert annotations.shape == (6, 36, 48) and annotations.dtype == np.uint8
    assert set(np.unique(annotations[0])) == {0, 1, 3}
    assert DavisDataset(synthetic, "val", sequences=["gamma"]).sequences == ["gamma"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_split_file", "sequence list"),
        ("unknown_sequence", "unknown sequence"),
        ("no_frames", "no .jpg frames"),
        ("extra_annotation", "annotation PNGs for"),
        ("renamed_annotation", "does not match frame"),
        ("resized_annotation", "differs from the first frame"),
        ("missing_root", "not found"),
    ],
)
def test_bad_layouts_give_one_line_errors(synthetic: Path, breakage: str, message: str) -> None:
    root, sequences = synthetic, None
    annotation_dir = synthetic / "Annotations" / "480p" / "beta"
    if breakage == "no_split_file":
        (synthetic / "ImageSets" / "2017" / "val.txt").unlink()
    elif breakage == "unknown_sequence":
        sequences = ["beta", "delta"]
    elif breakage == "no_frames":
        for jpg in (synthetic / "JPEGImages" / "480p" / "beta").glob("*.jpg"):
            jpg.unlink()
    elif breakage == "extra_annotation":
        shutil.copy(annotation_dir / "00000.png", annotation_dir / "00006.png")
    elif breakage == "renamed_annotation":
        (annotation_dir / "00005.png").rename(annotation_dir / "00009.png")
    elif breakage == "resized_annotation":
        write_ids_png(annotation_dir / "00003.png", np.zeros((36, 50), np.uint8))
    elif breakage == "missing_root":
        root = synthetic / "nowhere"
    with pytest.raises(InputError, match=message) as info:
        DavisDataset(root, "val", sequences=sequences)
    assert "\n" not in str(info.value)


# --- scoring -------------------------------------------------------------------------------


def test_ground_truth_scores_one_everywhere(davis_mini: Path, tmp_path: Path) -> None:
    report = evaluate_davis(davis_mini, "val", results_dir=davis_mini / "Annotations" / "480p", out_dir=tmp_path)
    header, rows = read_csv(tmp_path / "global_results-val.csv")
    assert header == GLOBAL_HEADER
    assert rows == [["1.000", "1.000", "1.000", "0.000", "1.000", "1.000", "0.000"]]
    header, rows = read_csv(tmp_path / "per-sequence_results-val.csv")
    assert header == PER_SEQUENCE_HEADER
    assert rows == [[f"{name}_1", "1.000", "1.000"] for name in ("blackswan", "car-shadow", "motocross-jump")]
    record = json.loads((tmp_path / "davis_report-val.json").read_text())
    assert record["global"]["J&F-Mean"] == 1.0 and len(record["per_object"]) == 3
    assert report.global_scores()["F-Mean"] == 1.0


def perturb(masks: np.ndarray, how: str) -> np.ndarray:
    """Binary masks (T, H, W) eroded/dilated by a 7x7 square, or shifted 4 down and 6 left."""
    kernel = np.ones((7, 7), np.uint8)
    if how == "eroded":
        return np.stack([cv2.erode(m.astype(np.uint8), kernel) for m in masks]).astype(bool)
    if how == "dilated":
        return np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in masks]).astype(bool)
    shifted = np.zeros_like(masks)
    shifted[:, 4:, :-6] = masks[:, :-4, 6:]
    return shifted


@pytest.mark.parametrize("how", ["eroded", "dilated", "shifted"])
def test_perturbed_ground_truth_gives_the_set_computed_j(davis_mini: Path, tmp_path: Path, how: str) -> None:
    dataset = DavisDataset(davis_mini, "val")
    want_j = {}
    for sequence in dataset.sequences:
        truth = dataset.load_annotations(sequence) == 1
        result = perturb(truth, how)
        for name, mask in zip(dataset.frame_names(sequence), result):
            write_ids_png(tmp_path / "results" / sequence / f"{name}.png", mask)
        inner_truth, inner_result = truth[1:-1], result[1:-1]
        if how == "eroded":  # the eroded mask lies inside the truth: J = |E| / |G|
            per_frame = inner_result.sum(axis=(1, 2)) / inner_truth.sum(axis=(1, 2))
        elif how == "dilated":  # the truth lies inside the dilated mask: J = |G| / |D|
            per_frame = inner_truth.sum(axis=(1, 2)) / inner_result.sum(axis=(1, 2))
        else:
            per_frame = (inner_truth & inner_result).sum(axis=(1, 2)) / (inner_truth | inner_result).sum(axis=(1, 2))
        want_j[f"{sequence}_1"] = per_frame.mean()
    report = evaluate_results(dataset, tmp_path / "results")
    got_j = {obj.name: obj.j_mean for obj in report.objects}
    assert got_j.keys() == want_j.keys()
    for name in want_j:
        assert got_j[name] == pytest.approx(want_j[name], abs=1e-12)
        assert got_j[name] < 1.0
    assert report.global_scores()["J-Mean"] == pytest.approx(np.mean(list(want_j.values())), abs=1e-12)


def test_real_sequences_with_noisy_results_match_the_reference(davis_mini: Path, tmp_path: Path) -> None:
    # Every number (J, F, recall, decay, global) against the independent reference, on
    # results it derives nothing from: GT shifted by a random amount per frame, some frames
    # empty, one sequence only a bit off.
    rng = np.random.default_rng(5)
    dataset = DavisDataset(davis_mini, "val", sequences=["blackswan", "car-shadow"])
    for sequence in dataset.sequences:
        truth = dataset.load_annotations(sequence)
        for t, (name, ids) in enumerate(zip(dataset.frame_names(sequence), truth)):
            dy, dx = rng.integers(-15, 16, size=2)
            pred = np.zeros_like(ids) if t % 7 == 3 else np.roll(ids, (dy, dx), axis=(0, 1))
            write_ids_png(tmp_path / "results" / sequence / f"{name}.png", pred)
    evaluate_davis(davis_mini, "val", results_dir=tmp_path / "results", sequences=dataset.sequences)
    want = reference.evaluate_folder(davis_mini, tmp_path / "results", dataset.sequences)
    assert_report_matches_reference(tmp_path / "results", "val", want)


def test_multi_object_results_match_the_reference(synthetic: Path, tmp_path: Path) -> None:
    dataset = DavisDataset(synthetic, "val")
    rng = np.random.default_rng(11)
    results = tmp_path / "results"
    for sequence in dataset.sequences:
        truth = dataset.load_annotations(sequence)
        truth[truth == 255] = 0
        object_count = int(truth[0].max())
        for t, (name, ids) in enumerate(zip(dataset.frame_names(sequence), truth)):
            pred = np.roll(ids, rng.integers(-3, 4, size=2), axis=(0, 1))
            if t == 2:
                pred[pred == 1] = 0  # object 1 lost in one frame
            if sequence == "alpha" and t == 3:
                pred[0:3, 0:3] = object_count  # a false positive blob
            if sequence == "gamma" and t == 2:  # an empty result frame
                pred[:] = 0
            write_ids_png(results / sequence / f"{name}.png", pred)
    report = evaluate_davis(synthetic, "val", results_dir=results)
    want = reference.evaluate_folder(synthetic, results, dataset.sequences)
    assert [obj.name for obj in report.objects] == ["alpha_1", "alpha_2", "beta_1", "beta_2", "beta_3", "gamma_1"]
    for obj in report.objects:
        got = [obj.j_mean, obj.j_recall, obj.j_decay, obj.f_mean, obj.f_recall, obj.f_decay]
        np.testing.assert_allclose(got, want[obj.name], atol=1e-12, err_msg=obj.name)
    np.testing.assert_allclose(list(report.global_scores().values()), want["global"], atol=1e-12)
    # beta's object 2 is in no annotation and no result: J = F = 1 on every frame.
    beta_2 = next(obj for obj in report.objects if obj.name == "beta_2")
    assert (beta_2.j_mean, beta_2.f_mean) == (1.0, 1.0)
    assert_report_matches_reference(results, "val", want)


def test_csv_values_have_three_decimals(synthetic: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    dataset = DavisDataset(synthetic, "val")
    for sequence in dataset.sequences:  # every frame empty: all objects empty
        for name in dataset.frame_names(sequence):
            write_ids_png(results / sequence / f"{name}.png", np.zeros(dataset.image_size(sequence), np.uint8))
    evaluate_davis(synthetic, "val", results_dir=results, out_dir=tmp_path / "report")
    _, rows = read_csv(tmp_path / "report" / "global_results-val.csv")
    assert all(re.fullmatch(r"-?\d+\.\d{3}", cell) for cell in rows[0])
    _, rows = read_csv(tmp_path / "report" / "per-sequence_results-val.csv")
    assert all(re.fullmatch(r"\d\.\d{3}", cell) for row in rows for cell in row[1:])
    assert not list(results.glob("*.csv"))  # the report went to out_dir, not into the results


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("id_too_high", "sequence beta frame 00002: object id 4 but the first annotation has 3"),
        ("wrong_size", "differs from the annotation's 48x36"),
        ("rgb", "indexed"),
        ("missing_sequence", "no results folder for sequence(s) gamma"),
        ("missing_frame", "results/beta/00002.png: result frame not found (sequence beta, frame 00002)"),
    ],
)
def test_bad_results_give_one_line_errors(synthetic: Path, tmp_path: Path, breakage: str, message: str) -> None:
    dataset = DavisDataset(synthetic, "val")
    results = tmp_path / "results"
    for sequence in dataset.sequences:
        if breakage == "missing_sequence" and sequence == "gamma":
            continue
        for name, ids in zip(dataset.frame_names(sequence), dataset.load_annotations(sequence)):
            write_ids_png(results / sequence / f"{name}.png", np.where(ids == 255, 0, ids))
    broken = results / "beta" / "00002.png"
    if breakage == "id_too_high":
        write_ids_png(broken, np.full((36, 48), 4, np.uint8))
    elif breakage == "wrong_size":
        write_ids_png(broken, np.zeros((30, 48), np.uint8))
    elif breakage == "rgb":
        Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(broken)
    elif breakage == "missing_frame":
        broken.unlink()
    with pytest.raises(InputError) as info:
        evaluate_results(dataset, results)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_too_short_sequence_is_an_error(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "davis", {"short": moving_squares(2, (20, 20), [(2, 2, 5)])})
    (tmp_path / "results" / "short").mkdir(parents=True)
    with pytest.raises(InputError, match="at least 3 frames"):
        evaluate_results(DavisDataset(root, "val"), tmp_path / "results")


# --- evaluate_davis: modes ----------------------------------------------------------------


class CopyGroundTruth:
    """A stand-in tracker that writes the ground truth (void as background) and records its calls."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, *, video: Path, out_dir: Path, mask: Path, classes: list[str], settings: TrackSettings):
        self.calls.append({"video": video, "out_dir": out_dir, "mask": mask, "classes": classes, "settings": settings})
        annotations = sorted((video.parents[2] / "Annotations" / video.parent.name / video.name).glob("*.png"))
        for annotation in annotations:
            ids = np.array(Image.open(annotation))
            write_ids_png(out_dir / annotation.name, np.where(ids == 255, 0, ids))
        return SimpleNamespace(frames=len(annotations), fps=20.0)


def test_mode_two_tracks_every_sequence_then_resumes(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    class_map = tmp_path / "classes.json"
    class_map.write_text(json.dumps({"alpha": "swan", "gamma": "car"}))
    settings = TrackSettings()
    tracker = CopyGroundTruth()
    report = evaluate_davis(synthetic, "val", out_dir=out, class_map=class_map, settings=settings, track_fn=tracker)

    names = ["alpha", "beta", "gamma"]
    assert [call["video"] for call in tracker.calls] == [synthetic / "JPEGImages" / "480p" / s for s in names]
    assert [call["out_dir"] for call in tracker.calls] == [out / "results" / s for s in names]
    for call, name in zip(tracker.calls, names):  # the first annotation, void (255) as background
        given = np.array(Image.open(call["mask"]))
        first = np.array(Image.open(synthetic / "Annotations" / "480p" / name / "00000.png"))
        np.testing.assert_array_equal(given, np.where(first == 255, 0, first))
    assert (np.array(Image.open(synthetic / "Annotations" / "480p" / "alpha" / "00000.png")) == 255).any()
    assert [call["classes"] for call in tracker.calls] == [["swan"], [], ["car"]]
    assert all(call["settings"] is settings for call in tracker.calls)
    assert report.global_scores()["J&F-Mean"] == 1.0
    record = json.loads((out / "davis_report-val.json").read_text())
    assert record["settings"] == json.loads(json.dumps(settings.to_dict()))
    assert record["tracking"]["frames"] == 7 + 6 + 5
    assert record["tracking"]["fps"] == pytest.approx(20.0)
    assert (out / "global_results-val.csv").read_text().splitlines()[0] == GLOBAL_HEADER

    # A second run (the same command) finds every sequence complete and tracks nothing.
    tracker.calls.clear()
    evaluate_davis(synthetic, "val", out_dir=out, class_map=class_map, settings=settings, track_fn=tracker)
    assert tracker.calls == []
    record = json.loads((out / "davis_report-val.json").read_text())
    assert record["tracking"]["skipped"] == ["alpha", "beta", "gamma"] and record["tracking"]["fps"] is None

    # A sequence missing one frame (a run killed mid-way) is tracked again, alone.
    (out / "results" / "beta" / "00004.png").unlink()
    evaluate_davis(synthetic, "val", out_dir=out, class_map=class_map, settings=settings, track_fn=tracker)
    assert [call["out_dir"].name for call in tracker.calls] == ["beta"]


def test_mode_one_writes_beside_the_results_and_prints_tables(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    first_annotation = synthetic / "Annotations" / "480p" / "gamma" / "00000.png"
    frames = synthetic / "JPEGImages" / "480p" / "gamma"
    CopyGroundTruth()(video=frames, out_dir=results / "gamma", mask=first_annotation, classes=[], settings=TrackSettings())
    evaluate_davis(synthetic, "val", results_dir=results, sequences=["gamma"])
    assert (results / "global_results-val.csv").is_file()
    assert (results / "per-sequence_results-val.csv").is_file()
    record = json.loads((results / "davis_report-val.json").read_text())
    assert record["settings"] is None and record["tracking"] is None
    printed = capsys.readouterr().out
    assert "J&F-Mean" in printed and "gamma_1" in printed


def test_runner_argument_errors(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="results folder to evaluate or an output folder"):
        evaluate_davis(synthetic, "val")
    bad_map = tmp_path / "classes.json"
    bad_map.write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        evaluate_davis(synthetic, "val", out_dir=tmp_path / "out", class_map=bad_map, track_fn=CopyGroundTruth())
    bad_map.write_text('["swan"]')
    with pytest.raises(InputError, match="JSON object"):
        evaluate_davis(synthetic, "val", out_dir=tmp_path / "out", class_map=bad_map, track_fn=CopyGroundTruth())
    with pytest.raises(InputError, match="results folder not found"):
        evaluate_davis(synthetic, "val", results_dir=tmp_path / "nothing")


def test_resume_refuses_results_tracked_with_other_settings(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    evaluate_davis(synthetic, "val", out_dir=out, settings=TrackSettings(), track_fn=CopyGroundTruth())
    other = TrackSettings(memory=MemoryConfig(context=3))
    tracker = CopyGroundTruth()
    with pytest.raises(InputError, match="memory"):
        evaluate_davis(synthetic, "val", out_dir=out, settings=other, track_fn=tracker)
    assert tracker.calls == []
