"""PerMIS-video / PerMIS-image / PerMIR evaluators on a benchmark built from synthetic BURST.

Every instance of the synthetic videos is a solid box in a colour no other instance shares,
so a stand-in feature source that encodes each pixel's palette colour is a perfect matcher
(exact masks, every gallery frame of the right video ranked first), and a constant one is
an uninformative matcher whose scores follow from counting alone.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_burst import COLOURS, EXPECTED, write_synthetic_burst

from pdmtrack.burst import PERMIS_VIDEO_DIR, build_permirs
from pdmtrack.config import FeatureConfig, RuntimeConfig, SamConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.eval.permirs import evaluate_permir, evaluate_permis_image, evaluate_permis_video, load_benchmark
from pdmtrack.features.types import PDMFeatures
from pdmtrack.sam.refine import FrameEmbedding, FramePrompts, SamRefiner
from pdmtrack.tracking.tracker import Tracker

PALETTE = torch.tensor([*COLOURS.values(), (0, 0, 0)], dtype=torch.float32)
NO_SAM = TrackSettings(sam=SamConfig(model_type="none"), runtime=RuntimeConfig(device="cpu"))
NUM_VIDEOS = len(EXPECTED)
GALLERY = 2 * NUM_VIDEOS


class PaletteFeatures:
    """Per pixel, a one-hot of its nearest palette colour (black: the zero vector)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        self.calls += 1
        rgb = torch.from_numpy(frames).float()
        nearest = ((rgb[..., None, :] - PALETTE) ** 2).sum(-1).argmin(-1)
        onehot = F.one_hot(nearest, len(PALETTE))[..., :-1].permute(0, 3, 1, 2).to(torch.float16)
        return PDMFeatures(appearance=onehot, semantic=onehot)


class ConstantFeatures:
    """The same feature everywhere: every map is flat, nothing is told apart."""

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        ones = torch.ones(len(frames), 4, frames.shape[1] // 8, frames.shape[2] // 8, dtype=torch.float16)
        return PDMFeatures(appearance=ones, semantic=ones)


@pytest.fixture(scope="module")
def permirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("permirs")
    out = root / "PerMIRS"
    build_permirs(write_synthetic_burst(root / "BURST"), out)
    return out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_load_benchmark(permirs: Path) -> None:
    videos = load_benchmark(permirs)
    assert [v.name for v in videos] == sorted(EXPECTED)
    assert all(len(v.frames) == 3 and v.mask(0).any() for v in videos)
    with pytest.raises(InputError, match="manifest.json"):
        load_benchmark(permirs / "videos")


def test_permis_image_perfect_matcher_segments_exactly(permirs: Path, tmp_path: Path) -> None:
    source = PaletteFeatures()
    report = evaluate_permis_image(permirs, out_dir=tmp_path, tracker=Tracker(NO_SAM, features=source))
    assert len(report.pairs) == GALLERY
    assert report.global_scores() == {"mIoU": 1.0, "cIoU": 1.0, "bIoU": 1.0}
    assert source.calls == NUM_VIDEOS  # one batch per video: its 3 frames together
    union_sizes = {pair.target: pair.union for pair in report.pairs}
    masks = {
        f["frame"].rsplit("/", 1)[1]: f["mask_area"]
        for v in json.loads((permirs / "manifest.json").read_text())["videos"]
        for f in v["frames"]
    }
    assert all(union_sizes[name] == masks[name] for name in union_sizes)  # union = the true mask
    rows = _csv_rows(tmp_path / "permis_image_global.csv")
    assert rows == [{"mIoU": "1.000", "cIoU": "1.000", "bIoU": "1.000"}]
    assert len(_csv_rows(tmp_path / "permis_image_details.csv")) == GALLERY
    assert json.loads((tmp_path / "permis_image_report.json").read_text())["global"]["mIoU"] == 1.0


def test_permis_image_flat_maps_find_nothing(permirs: Path, tmp_path: Path) -> None:
    report = evaluate_permis_image(permirs, out_dir=tmp_path, tracker=Tracker(NO_SAM, features=ConstantFeatures()))
    # A flat map min-max normalises to zeros, below the 0.5 threshold: empty predictions.
    assert report.global_scores()["mIoU"] == 0.0 and report.global_scores()["cIoU"] == 0.0


def test_permir_perfect_matcher_ranks_own_video_first(permirs: Path, tmp_path: Path) -> None:
    report = evaluate_permir(permirs, out_dir=tmp_path, tracker=Tracker(NO_SAM, features=PaletteFeatures()))
    assert report.gallery_size == GALLERY
    assert report.global_scores() == {"mAP": 1.0, "R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert _csv_rows(tmp_path / "permir_global.csv") == [{"mAP": "1.000", "R@1": "1.000", "R@5": "1.000", "R@10": "1.000"}]
    assert [row["Query"] for row in _csv_rows(tmp_path / "permir_details.csv")] == sorted(EXPECTED)


def test_permir_uninformative_scores_give_chance_ap(permirs: Path, tmp_path: Path) -> None:
    report = evaluate_permir(permirs, out_dir=tmp_path, tracker=Tracker(NO_SAM, features=ConstantFeatures()))
    scores = report.global_scores()
    # All scores tie: AP = precision at the one threshold = positives / gallery = 2 / 6.
    assert scores["mAP"] == pytest.approx(2 / GALLERY)
    # 5 of 6 items always include one of the 2 positives, whatever the order of ties.
    assert scores["R@5"] == 1.0 and scores["R@10"] == 1.0


def test_permis_video_reuses_the_davis_evaluator(permirs: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(permirs / PERMIS_VIDEO_DIR / "Annotations" / "480p", results)
    report = evaluate_permis_video(permirs, out_dir=tmp_path / "eval", results_dir=results)
    scores = report.global_scores()
    assert len(report.objects) == NUM_VIDEOS
    assert scores["J-Mean"] == 1.0 and scores["F-Mean"] == 1.0
    first = sorted(EXPECTED)[0]
    for frame in (results / first).glob("*.png"):
        frame.unlink()  # no result at all for one video: stops, as the official evaluator does
    with pytest.raises(InputError, match="result frame not found"):
        evaluate_permis_video(permirs, out_dir=tmp_path / "eval2", results_dir=results)
    with pytest.raises(InputError, match="PerMIS-video"):
        evaluate_permis_video(tmp_path, out_dir=tmp_path / "x", results_dir=results)


class BoxBackend:
    """A SAM backend stand-in: every output is the filled prompt box; records the prompts."""

    def __init__(self) -> None:
        self.prompts: list[tuple[np.ndarray, np.ndarray]] = []

    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        return [FrameEmbedding((), frames.shape[1:3], frames.shape[1:3]) for _ in frames]

    def predict(self, embedding: FrameEmbedding, prompts: FramePrompts) -> torch.Tensor:
        masks = torch.zeros((len(prompts.boxes), 3, *embedding.frame_size), dtype=torch.bool)
        for k, (points, box) in enumerate(zip(prompts.points.numpy(), prompts.boxes.numpy())):
            self.prompts.append((points[0], box))
            x0, y0, x1, y1 = box.astype(int)
            masks[k, :, y0 : y1 + 1, x0 : x1 + 1] = True
        return masks


def test_permis_image_with_sam_prompts_at_the_peak(permirs: Path, tmp_path: Path) -> None:
    predictor = BoxBackend()
    refiner = SamRefiner(predictor, min_iou=0.5)
    tracker = Tracker(NO_SAM, features=PaletteFeatures())
    tracker.models = replace(tracker.models, refiner=refiner)
    report = evaluate_permis_image(permirs, out_dir=tmp_path, tracker=tracker)
    assert len(predictor.prompts) == GALLERY  # one SAM call per target frame
    assert report.global_scores()["mIoU"] == 1.0  # the box of an exact coarse mask is the mask
    videos = {v.name: v for v in load_benchmark(permirs)}
    pairs = [(videos[p.video], p.target) for p in report.pairs]
    for (video, target), (point, _) in zip(pairs, predictor.prompts):
        index = [f.name for f in video.frames].index(target)
        assert video.mask(index)[int(point[1]), int(point[0])]  # the positive point is on the instance


@pytest.mark.slow
def test_end_to_end_with_tiny_model(permirs: Path, tmp_path: Path, tiny_sdxl: Path) -> None:
    settings = TrackSettings(
        features=FeatureConfig(model=str(tiny_sdxl), size=64, inversion="noise"),
        sam=SamConfig(model_type="none"),
        runtime=RuntimeConfig(device="cpu", cache_dir=tmp_path / "cache"),
    )
    image = evaluate_permis_image(permirs, out_dir=tmp_path / "image", settings=settings)
    assert len(image.pairs) == GALLERY
    assert all(0.0 <= value <= 1.0 for value in image.global_scores().values())
    retrieval = evaluate_permir(permirs, out_dir=tmp_path / "retrieval", settings=settings)
    # Any ranking has AP >= the AP of the worst one (both positives last): (1/5 + 2/6) / 2.
    assert all(q.ap >= (1 / 5 + 2 / 6) / 2 - 1e-9 for q in retrieval.queries)
    assert 0.0 < retrieval.global_scores()["mAP"] <= 1.0
    shortest = "val_000007_ArgoVerse_png_video"
    video = evaluate_permis_video(permirs, out_dir=tmp_path / "video", settings=settings, sequences=[shortest])
    assert [obj.name for obj in video.objects] == [f"{shortest}_1"]
    assert len(list((tmp_path / "video" / "results" / shortest).glob("*.png"))) == 20
    for name in ("image/permis_image_report.json", "retrieval/permir_report.json", "video/davis_report-val.json"):
        assert (tmp_path / name).is_file()


def _constant_descriptor(image: np.ndarray) -> np.ndarray:
    return np.ones(3, dtype=np.float32) / np.sqrt(3)


def test_permir_two_stage(permirs: Path, tmp_path: Path) -> None:
    # A flat global descriptor ties everything (gallery order); re-ranking the whole gallery
    # with the perfect matcher recovers a perfect ranking, re-ranking nothing keeps chance.
    flat = evaluate_permir(permirs, out_dir=tmp_path / "a", settings=NO_SAM, descriptor=_constant_descriptor, rerank=0)
    assert flat.settings["rerank"] == 0 and flat.global_scores()["mAP"] < 1.0
    source = PaletteFeatures()
    full = evaluate_permir(
        permirs, out_dir=tmp_path / "b", tracker=Tracker(NO_SAM, features=source), descriptor=_constant_descriptor, rerank=GALLERY
    )
    assert full.global_scores() == {"mAP": 1.0, "R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert source.calls == NUM_VIDEOS + NUM_VIDEOS * GALLERY  # each query, then its candidates one by one
