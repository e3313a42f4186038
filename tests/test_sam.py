"""SAM refinement: prompts built from coarse masks, output choice and fallback, loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pdmtrack.config import SamConfig
from pdmtrack.errors import InputError
from pdmtrack.sam.loading import download_verified, load_sam, load_sam_model
from pdmtrack.sam.refine import LOGIT_CLIP, SamRefiner
from pdmtrack.tiny.sam import build_tiny_sam

HEIGHT, WIDTH, LOW_RES = 60, 100, 32


class RecordingPredictor:
    """Stand-in SamPredictor: records every prompt, answers with the masks it is given."""

    def __init__(self, answers: list[np.ndarray]) -> None:
        self.answers = answers  # one (C, H, W) bool stack per predict call, in call order
        self.images: list[np.ndarray] = []
        self.calls: list[dict] = []

    def set_image(self, image: np.ndarray) -> None:
        self.images.append(image)

    def predict(self, point_coords, point_labels, box, mask_input, multimask_output):
        self.calls.append(
            dict(points=point_coords, labels=point_labels, box=box, mask_input=mask_input, multi=multimask_output)
        )
        masks = self.answers[len(self.calls) - 1]
        return masks, np.ones(len(masks), np.float32), np.zeros((len(masks), LOW_RES, LOW_RES), np.float32)


def rect(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def two_object_scores() -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Scores (3, H, W): object 1 on rows 10-29 x cols 10-39, object 2 on rows 30-49 x
    cols 60-89, each with a single peak (returned as (x, y))."""
    scores = torch.zeros(3, HEIGHT, WIDTH)
    scores[0] = 0.4
    scores[1, 10:30, 10:40] = 0.7
    scores[2, 30:50, 60:90] = 0.6
    scores[1, 15, 22] = 0.95
    scores[2, 41, 77] = 0.9
    return scores, (22, 15), (77, 41)


def test_prompts_follow_the_coarse_masks() -> None:
    scores, peak1, peak2 = two_object_scores()
    first = np.stack([rect(10, 10, 30, 40), rect(0, 0, 5, 5), rect(12, 12, 28, 38)])
    second = np.stack([rect(30, 60, 50, 90)] * 3)
    predictor = RecordingPredictor([first, second])
    refiner = SamRefiner(predictor, mask_input_size=LOW_RES, min_iou=0.5)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    refiner.refine(image, scores)

    assert len(predictor.images) == 1  # the image embedding is computed once per frame
    one, two = predictor.calls
    np.testing.assert_array_equal(one["box"], [10, 10, 39, 29])  # x0, y0, x1, y1 (inclusive)
    np.testing.assert_array_equal(two["box"], [60, 30, 89, 49])
    np.testing.assert_array_equal(one["points"], [peak1, peak2])  # positive first, then negatives
    np.testing.assert_array_equal(one["labels"], [1, 0])
    np.testing.assert_array_equal(two["points"], [peak2, peak1])
    np.testing.assert_array_equal(two["labels"], [1, 0])
    assert one["multi"] and two["multi"]

    # Mask input: SAM's low-res square holds the frame resized by LOW_RES / WIDTH, top-left.
    mask_input = one["mask_input"]
    assert mask_input.shape == (1, LOW_RES, LOW_RES)
    scale = LOW_RES / WIDTH
    inside_y, inside_x = int(20 * scale), int(25 * scale)  # centre of object 1
    assert mask_input[0, inside_y, inside_x] > 0  # object 1 wins there: positive log-odds
    expected = np.log(0.7 / 0.4)  # object 1's score against the best other (background)
    assert mask_input[0, inside_y, inside_x] == pytest.approx(expected, rel=1e-4)
    assert mask_input[0, int(40 * scale), int(75 * scale)] < 0  # object 2 there: negative
    padded_rows = slice(round(HEIGHT * scale), None)
    assert (mask_input[0, padded_rows] == -LOGIT_CLIP).all()  # below the frame: background


def test_best_agreeing_output_is_kept_and_wild_disagreement_falls_back() -> None:
    scores, _, _ = two_object_scores()
    sharper = rect(11, 11, 29, 39)  # close to object 1's coarse mask: kept
    elsewhere = rect(0, 0, 8, 8)
    wild = np.stack([rect(0, 50, 10, 60), rect(50, 0, 60, 10), rect(0, 90, 60, 100)])
    predictor = RecordingPredictor([np.stack([elsewhere, sharper, elsewhere]), wild])
    refiner = SamRefiner(predictor, mask_input_size=LOW_RES, min_iou=0.5)
    labels = refiner.refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores).numpy()

    np.testing.assert_array_equal(labels == 1, sharper)
    np.testing.assert_array_equal(labels == 2, rect(30, 60, 50, 90))  # the coarse mask stayed


def test_overlaps_go_to_the_higher_score() -> None:
    scores, _, _ = two_object_scores()
    grab = rect(10, 10, 50, 90)  # both objects' SAM masks cover everything in between
    predictor = RecordingPredictor([np.stack([grab] * 3), np.stack([grab] * 3)])
    refiner = SamRefiner(predictor, mask_input_size=LOW_RES, min_iou=0.0)
    labels = refiner.refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores).numpy()
    assert (labels[10:30, 10:40] == 1).all() and (labels[30:50, 60:90] == 2).all()
    assert (labels[~grab] == 0).all()


def test_absent_objects_are_not_prompted() -> None:
    scores, _, _ = two_object_scores()
    scores[2] = 0.0  # object 2 wins nowhere
    predictor = RecordingPredictor([np.stack([rect(10, 10, 30, 40)] * 3)])
    labels = SamRefiner(predictor, mask_input_size=LOW_RES, min_iou=0.5).refine(
        np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores
    )
    assert len(predictor.calls) == 1 and len(predictor.calls[0]["points"]) == 1
    assert not (labels == 2).any()


def test_tiny_sam_round_trip(tmp_path: Path) -> None:
    path = build_tiny_sam(tmp_path / "tiny_sam.safetensors", seed=3)
    refiner = load_sam(SamConfig(model_type="vit_b", checkpoint=path), torch.device("cpu"), tmp_path)
    assert refiner is not None and refiner.mask_input_size == 32
    rebuilt = refiner.predictor.model.state_dict()  # type: ignore[attr-defined]
    torch.manual_seed(3)
    original = load_sam_model(path, "vit_b").state_dict()
    for name, tensor in original.items():
        torch.testing.assert_close(rebuilt[name], tensor)
    scores, _, _ = two_object_scores()
    rng = np.random.default_rng(0)
    labels = refiner.refine(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8), scores)
    assert labels.shape == (HEIGHT, WIDTH) and set(labels.unique().tolist()) <= {0, 1, 2}


def test_load_sam_none_and_bad_inputs(tmp_path: Path) -> None:
    assert load_sam(SamConfig(model_type="none"), torch.device("cpu"), tmp_path) is None
    with pytest.raises(InputError, match="--sam-checkpoint"):
        load_sam(SamConfig(checkpoint=tmp_path / "missing.pth"), torch.device("cpu"), tmp_path)
    with pytest.raises(InputError, match="--sam: unknown value 'vit_x'"):
        load_sam(SamConfig(model_type="vit_x"), torch.device("cpu"), tmp_path)  # type: ignore[arg-type]
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a SAM vit_b checkpoint"):
        load_sam(SamConfig(checkpoint=garbage), torch.device("cpu"), tmp_path)


def test_pth_checkpoint_loads_with_the_model_types_architecture(tmp_path: Path) -> None:
    """A .pth state dict carries no architecture: the tiny one does not fit vit_b's."""
    tiny = load_sam_model(build_tiny_sam(tmp_path / "tiny.safetensors"), "vit_b")
    pth = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), pth)
    with pytest.raises(InputError, match="not a SAM vit_b checkpoint"):
        load_sam(SamConfig(checkpoint=pth), torch.device("cpu"), tmp_path)


def test_download_is_verified_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    source = tmp_path / "served.pth"
    source.write_bytes(b"weights" * 1000)
    url = source.as_uri()
    good = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "sam.pth"

    with pytest.raises(InputError, match="sha256"):
        download_verified(url, "0" * 64, target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written

    download_verified(url, good, target)
    assert target.read_bytes() == source.read_bytes()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="--sam-checkpoint FILE .* or --sam none"):
        download_verified(url, good, tmp_path / "other.pth")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(InputError, match="cannot download"):
        download_verified((tmp_path / "nowhere.pth").as_uri(), good, tmp_path / "other.pth")


def test_official_checkpoint_offline_names_the_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as error:
        load_sam(SamConfig(model_type="vit_b"), torch.device("cpu"), tmp_path)
    assert "--sam-checkpoint" in str(error.value) and "--sam none" in str(error.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prompts_from_scores_on_the_gpu() -> None:
    """The prompts (box, points, mask input) are NumPy arrays even when the scores are on CUDA."""
    scores, _, _ = two_object_scores()
    predictor = RecordingPredictor([np.stack([rect(10, 10, 30, 40)] * 3), np.stack([rect(30, 60, 50, 90)] * 3)])
    refiner = SamRefiner(predictor, mask_input_size=LOW_RES, min_iou=0.5)
    refiner.refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores.cuda())
    np.testing.assert_array_equal(predictor.calls[0]["box"], [10, 10, 39, 29])
