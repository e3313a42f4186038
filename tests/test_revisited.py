"""Revisited Oxford/Paris: the official AP (junk removed, trapezoids), the Medium/Hard
protocol, and the evaluator on a tiny dataset in the official layout, worked by hand."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from colour_source import ColourSource, box_image
from PIL import Image

from pdmtrack.config import RuntimeConfig, SamConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.eval.metrics import revisited_average_precision
from pdmtrack.eval.revisited import evaluate_revisited, load_revisited
from pdmtrack.io.images import read_rgb
from pdmtrack.personal.search import Query, rank_queries
from pdmtrack.tracking.tracker import Tracker

SETTINGS = TrackSettings(sam=SamConfig(model_type="none"), runtime=RuntimeConfig(device="cpu"))
# Gallery: red boxes of 16, 1 and 4 cells (images 0, 2, 4), blue of 16 and 4 cells (1, 5), green (3).
GALLERY = [
    [("red", 0, 0, 32, 32)],
    [("blue", 0, 0, 32, 32)],
    [("red", 8, 8, 16, 16)],
    [("green", 0, 0, 32, 32)],
    [("red", 16, 16, 32, 32)],
    [("blue", 32, 32, 48, 48)],
]
GND = [
    {"bbx": [8.0, 8.0, 40.0, 40.0], "easy": [2, 5], "hard": [4], "junk": [0]},  # the red box
    {"bbx": [40.0, 8.0, 64.0, 40.0], "easy": np.array([5]), "hard": [], "junk": [1]},  # the blue box
]


def test_ap_worked_by_hand_with_junk() -> None:
    # Ranking 3, 1, 4, 0, 5, 2 with positives {1, 0} and junk {4}: without the junk image the
    # positives sit at zero-based ranks 1 and 2 of 2 positives, so AP =
    # [(0/1 + 1/2)/2 + (1/2 + 2/3)/2] / 2 = (0.25 + 0.58333) / 2 = 5/12.
    assert revisited_average_precision([3, 1, 4, 0, 5, 2], [1, 0], [4]) == pytest.approx(5 / 12)
    # The first positive at rank 0 counts precision 1 on both sides of its trapezoid.
    assert revisited_average_precision([7, 8, 9], [7], []) == pytest.approx(1.0)
    # A positive missing from a truncated ranking contributes nothing.
    assert revisited_average_precision([7, 8], [7, 9], []) == pytest.approx(0.5)
    assert np.isnan(revisited_average_precision([1, 2], [], [1]))


def write_dataset(root: Path, name: str = "roxford5k", gnd: list | None = None) -> Path:
    folder = root / name
    (folder / "jpg").mkdir(parents=True)
    imlist = []
    for index, boxes in enumerate(GALLERY):
        imlist.append(f"gallery_{index}")
        Image.fromarray(box_image(64, 64, boxes)).save(folder / "jpg" / f"gallery_{index}.jpg", quality=100)
    query = box_image(64, 64, [("red", 8, 8, 40, 40), ("blue", 8, 40, 40, 64)])
    Image.fromarray(query).save(folder / "jpg" / "query.jpg", quality=100)
    cfg = {"imlist": imlist, "qimlist": ["query", "query"], "gnd": GND if gnd is None else gnd}
    (folder / f"gnd_{name}.pkl").write_bytes(pickle.dumps(cfg, protocol=2))
    return root


def test_reader_crops_queries_by_their_boxes(tmp_path: Path) -> None:
    data = load_revisited(write_dataset(tmp_path), "roxford5k")
    assert [p.name for p in data.images] == [f"gallery_{i}.jpg" for i in range(6)]
    first, second = data.queries
    assert first.box == (8, 8, 40, 40) and second.box == (40, 8, 64, 40)
    crop = second.crop(read_rgb(second.path))
    assert crop.shape == (32, 24, 3) and (crop.argmax(-1) == 2).all()  # all blue
    positives, junk = first.labels("medium")
    assert sorted(positives) == [2, 4, 5] and list(junk) == [0]
    positives, junk = first.labels("hard")
    assert list(positives) == [4] and sorted(junk) == [0, 2, 5]


def test_evaluator_scores_pdm_rankings_as_worked_by_hand(tmp_path: Path) -> None:
    # Query 1 (red) ranks 0, 4, 2 by red area, then 1, 3, 5 (ties, gallery order).
    #   Medium: junk 0 removed -> 4, 2, 1, 3, 5; positives {2, 4, 5} at ranks 0, 1, 4:
    #   AP = [(1 + 1)/2 + (1 + 1)/2 + (2/4 + 3/5)/2] / 3 = 2.55 / 3 = 0.85.
    #   Hard: junk {0, 2, 5} removed -> 4, 1, 3; the positive 4 first: AP = 1.
    # Query 2 (blue) ranks 1, 5, then 0, 2, 3, 4. Medium: junk 1 removed, 5 first: AP = 1.
    #   Hard: no positive -> left out of the mean.
    source = ColourSource()
    report = evaluate_revisited(write_dataset(tmp_path), "roxford5k", out_dir=tmp_path / "out", tracker=Tracker(SETTINGS, features=source))
    assert report.ap["medium"] == pytest.approx([0.85, 1.0])
    assert report.ap["hard"][0] == pytest.approx(1.0) and np.isnan(report.ap["hard"][1])
    assert report.global_scores() == pytest.approx({"mAP medium": 0.925, "mAP hard": 1.0})
    assert source.calls == 2 + len(GALLERY)  # each query once, each gallery image once for both
    saved = json.loads((tmp_path / "out" / "roxford5k_report.json").read_text())
    assert saved["global"]["mAP medium"] == pytest.approx(0.925)
    assert (tmp_path / "out" / "roxford5k_global.csv").is_file()


def _mean_colour(image: np.ndarray) -> np.ndarray:
    vector = image.reshape(-1, 3).astype(np.float32).mean(0) + 1e-3
    return vector / np.linalg.norm(vector)


def test_rerank_wiring(tmp_path: Path) -> None:
    data = load_revisited(write_dataset(tmp_path), "roxford5k")
    crop = data.queries[0].crop(read_rgb(data.queries[0].path))
    queries = [Query(crop, np.ones(crop.shape[:2], dtype=bool))]
    common = {"match": SETTINGS.match, "device": torch.device("cpu"), "source": ColourSource()}
    full = rank_queries(queries, data.images, **common)[0]
    assert list(full) == [0, 4, 2, 1, 3, 5]
    # Re-ranking every candidate is PDM over the whole gallery (ties keep the first-stage order).
    everything = rank_queries(queries, data.images, descriptor=_mean_colour, rerank=6, **common)[0]
    assert list(everything[:3]) == [0, 4, 2] and sorted(everything[3:]) == [1, 3, 5]
    # rerank 0 is the global stage alone: the mean colour puts the red images first, in any order.
    first = rank_queries(queries, data.images, descriptor=_mean_colour, rerank=0, **common)[0]
    assert sorted(first[:3]) == [0, 2, 4] and sorted(first) == list(range(6))
    # Re-ranking the first two candidates reorders only them.
    head = rank_queries(queries, data.images, descriptor=_mean_colour, rerank=2, **common)[0]
    assert sorted(head[:2]) == sorted(first[:2]) and list(head[2:]) == list(first[2:])


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^dataset: "):
        load_revisited(tmp_path, "oxford105k")
    with pytest.raises(InputError, match="ground truth not found"):
        load_revisited(tmp_path, "rparis6k")
    write_dataset(tmp_path, gnd=[{"bbx": [0, 0, 1, 1]}])
    with pytest.raises(InputError, match="unexpected ground-truth layout"):
        load_revisited(tmp_path, "roxford5k")
