"""PerSeg: the reader, PerSAM's per-object aggregation (worked by hand) and the evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from colour_source import ColourSource, box_image
from PIL import Image

from pdmtrack.config import RuntimeConfig, SamConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.eval.perseg import count_object, evaluate_perseg, load_perseg
from pdmtrack.tracking.tracker import Tracker

SETTINGS = TrackSettings(sam=SamConfig(model_type="none"), runtime=RuntimeConfig(device="cpu"))


def test_iou_is_summed_per_object_then_averaged_over_objects() -> None:
    # Object A: target 1 predicts 4 px of a 4 px truth (I=4, U=4); target 2 predicts 2 px
    # beside a disjoint 2 px truth (I=0, U=4). PerSAM: IoU_A = (4 + 0) / (4 + 4) = 0.5 (a mean
    # of per-image IoUs would also be 0.5 here, so object B tells them apart).
    # Object B: target 1 I=1, U=1 (1.0); target 2 I=1, U=9 -> IoU_B = 2 / 10 = 0.2 (mean of
    # per-image IoUs: 0.556). mIoU = (0.5 + 0.2) / 2 = 0.35.
    def mask(*cells: tuple[int, int]) -> np.ndarray:
        m = np.zeros((6, 6), dtype=bool)
        for y, x in cells:
            m[y, x] = True
        return m

    square = mask((0, 0), (0, 1), (1, 0), (1, 1))
    a = count_object("a", [square, mask((4, 4), (4, 5))], [square, mask((5, 4), (5, 5))])
    nine = [(y, x) for y in range(3) for x in range(3)]
    b = count_object("b", [mask((0, 0)), mask(*nine)], [mask((0, 0)), mask((1, 1))])
    assert (a.intersection, a.union, a.iou) == (4, 8, 0.5)
    assert (b.intersection, b.union) == (2, 10) and b.iou == pytest.approx(0.2)
    assert (a.iou + b.iou) / 2 == pytest.approx(0.35)


def write_perseg(root: Path) -> Path:
    """Two objects: 'red_box' (found by colour) and 'blue_box' whose target truth is elsewhere."""
    layouts = {
        "red_box": [[("red", 8, 8, 40, 40)], [("red", 24, 24, 56, 56), ("blue", 0, 0, 16, 16)], [("red", 0, 32, 32, 64)]],
        "blue_box": [[("blue", 16, 16, 48, 48)], [("blue", 0, 0, 32, 32)]],
    }
    wrong_truth = {("blue_box", 1): ("green", 40, 40, 56, 56)}  # truth away from the blue box
    for name, images in layouts.items():
        (root / "Images" / name).mkdir(parents=True)
        (root / "Annotations" / name).mkdir(parents=True)
        for index, boxes in enumerate(images):
            Image.fromarray(box_image(64, 64, boxes)).save(root / "Images" / name / f"{index:02d}.jpg", quality=100)
            colour, y0, x0, y1, x1 = wrong_truth.get((name, index), boxes[0])
            truth = np.zeros((64, 64), dtype=np.uint8)
            truth[y0:y1, x0:x1] = 128  # grey > 0 is foreground
            Image.fromarray(truth).save(root / "Annotations" / name / f"{index:02d}.png")
    return root


def test_reader_and_errors(tmp_path: Path) -> None:
    objects = load_perseg(write_perseg(tmp_path))
    assert [o.name for o in objects] == ["blue_box", "red_box"]
    assert [p.name for p in objects[1].images] == ["00.jpg", "01.jpg", "02.jpg"]
    assert objects[1].class_name == "red box"
    with pytest.raises(InputError, match="not a PerSeg folder"):
        load_perseg(tmp_path / "Images")
    (tmp_path / "Annotations" / "red_box" / "02.png").unlink()
    with pytest.raises(InputError, match="02.png: mask not found"):
        load_perseg(tmp_path)


def test_evaluator(tmp_path: Path) -> None:
    report = evaluate_perseg(
        write_perseg(tmp_path / "PerSeg"), out_dir=tmp_path / "out", tracker=Tracker(SETTINGS, features=ColourSource())
    )
    by_name = {o.name: o for o in report.objects}
    assert by_name["red_box"].targets == 2 and by_name["red_box"].iou > 0.9  # the boxes, up to the map's blur
    assert by_name["blue_box"].iou == 0.0 and by_name["blue_box"].intersection == 0  # the truth is elsewhere
    assert report.global_scores()["mIoU"] == pytest.approx(by_name["red_box"].iou / 2)
    saved = json.loads((tmp_path / "out" / "perseg_report.json").read_text())
    assert saved["global"]["mIoU"] == pytest.approx(report.global_scores()["mIoU"])
    written = np.asarray(Image.open(tmp_path / "out" / "masks" / "red_box" / "01.png"))
    assert written[40, 40] == 1 and written[8, 8] == 0  # the red box, not the blue distractor
