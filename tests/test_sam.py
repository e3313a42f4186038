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
from pdmtrack.sam.refine import LOGIT_CLIP, FrameEmbedding, FramePrompts, SamRefiner, frame_prompts
from pdmtrack.sam.vit import padded_mask_input
from pdmtrack.testing.sam import build_tiny_sam

HEIGHT, WIDTH, LOW_RES = 60, 100, 32


class RecordingBackend:
    """Stand-in SAM backend: records every embedding and prompt, answers with given masks."""

    def __init__(self, answers: list[np.ndarray]) -> None:
        self.answers = answers  # one (P, C, H, W) bool stack per predict call, in call order
        self.embedded: list[int] = []  # frames per embed call
        self.calls: list[FramePrompts] = []

    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        self.embedded.append(len(frames))
        return [FrameEmbedding((), (HEIGHT, WIDTH), (HEIGHT, WIDTH)) for _ in frames]

    def predict(self, embedding: FrameEmbedding, prompts: FramePrompts) -> torch.Tensor:
        self.calls.append(prompts)
        return torch.as_tensor(self.answers[len(self.calls) - 1])


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
    backend = RecordingBackend([np.stack([first, second])])
    refiner = SamRefiner(backend, min_iou=0.5)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    refiner.refine(image, scores)

    assert backend.embedded == [1]  # the image embedding is computed once per frame
    (prompts,) = backend.calls  # every object of the frame in one decoder call
    np.testing.assert_array_equal(prompts.boxes, [[10, 10, 39, 29], [60, 30, 89, 49]])  # x0, y0, x1, y1
    np.testing.assert_array_equal(prompts.points, [[peak1, peak2], [peak2, peak1]])  # positive first
    np.testing.assert_array_equal(prompts.labels, [[1, 0], [1, 0]])

    log_odds = prompts.log_odds
    assert log_odds[0, 20, 25] == pytest.approx(np.log(0.7 / 0.4), rel=1e-4)  # object 1 vs background
    assert log_odds[0, 40, 75] < 0 and log_odds[1, 40, 75] > 0  # object 2 wins there
    assert log_odds[1, 40, 75] == pytest.approx(np.log(0.6 / 0.4), rel=1e-4)
    assert log_odds[0, 15, 22] == pytest.approx(np.log(0.95 / 0.4), rel=1e-4)  # best other: background

    # ViT SAM's mask input: its low-res square holds the frame resized by LOW_RES / WIDTH, top-left.
    mask_input = padded_mask_input(log_odds, LOW_RES)
    assert mask_input.shape == (2, 1, LOW_RES, LOW_RES)
    scale = LOW_RES / WIDTH
    inside_y, inside_x = int(20 * scale), int(25 * scale)  # centre of object 1
    assert mask_input[0, 0, inside_y, inside_x] == pytest.approx(np.log(0.7 / 0.4), rel=1e-4)
    assert mask_input[0, 0, int(40 * scale), int(75 * scale)] < 0  # object 2 there: negative
    padded_rows = slice(round(HEIGHT * scale), None)
    assert (mask_input[:, 0, padded_rows] == -LOGIT_CLIP).all()  # below the frame: background


def test_best_agreeing_output_is_kept_and_wild_disagreement_falls_back() -> None:
    scores, _, _ = two_object_scores()
    sharper = rect(11, 11, 29, 39)  # close to object 1's coarse mask: kept
    elsewhere = rect(0, 0, 8, 8)
    wild = np.stack([rect(0, 50, 10, 60), rect(50, 0, 60, 10), rect(0, 90, 60, 100)])
    backend = RecordingBackend([np.stack([np.stack([elsewhere, sharper, elsewhere]), wild])])
    labels = SamRefiner(backend, min_iou=0.5).refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores).numpy()

    np.testing.assert_array_equal(labels == 1, sharper)
    np.testing.assert_array_equal(labels == 2, rect(30, 60, 50, 90))  # the coarse mask stayed


def test_overlaps_go_to_the_higher_score() -> None:
    scores, _, _ = two_object_scores()
    grab = rect(10, 10, 50, 90)  # both objects' SAM masks cover everything in between
    backend = RecordingBackend([np.stack([np.stack([grab] * 3)] * 2)])
    labels = SamRefiner(backend, min_iou=0.0).refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores).numpy()
    assert (labels[10:30, 10:40] == 1).all() and (labels[30:50, 60:90] == 2).all()
    assert (labels[~grab] == 0).all()


def test_absent_objects_are_not_prompted() -> None:
    scores, _, _ = two_object_scores()
    scores[2] = 0.0  # object 2 wins nowhere
    backend = RecordingBackend([np.stack([rect(10, 10, 30, 40)] * 3)[None]])
    labels = SamRefiner(backend, min_iou=0.5).refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores)
    assert len(backend.calls) == 1 and backend.calls[0].points.shape == (1, 1, 2)
    assert not (labels == 2).any()
    scores[1] = 0.0  # nothing present: no SAM at all
    assert SamRefiner(backend, min_iou=0.5).refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores).eq(0).all()
    assert backend.embedded == [1]


def test_tiny_sam_round_trip(tmp_path: Path) -> None:
    path = build_tiny_sam(tmp_path / "tiny_sam.safetensors", seed=3)
    refiner = load_sam(SamConfig(model_type="vit_b", checkpoint=path), torch.device("cpu"), tmp_path)
    assert refiner is not None and refiner.backend.mask_input_size == 32  # type: ignore[attr-defined]
    rebuilt = refiner.backend.model.state_dict()  # type: ignore[attr-defined]
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
    with pytest.raises(InputError, match="^sam_checkpoint: "):
        load_sam(SamConfig(checkpoint=tmp_path / "missing.pth"), torch.device("cpu"), tmp_path)
    with pytest.raises(InputError, match="^sam: unknown value 'vit_x'"):
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
    """Scores on CUDA give prompts on CUDA (no host round trip) with the same values."""
    scores, _, _ = two_object_scores()
    backend = RecordingBackend([np.stack([np.stack([rect(10, 10, 30, 40)] * 3), np.stack([rect(30, 60, 50, 90)] * 3)])])
    labels = SamRefiner(backend, min_iou=0.5).refine(np.zeros((HEIGHT, WIDTH, 3), np.uint8), scores.cuda())
    assert labels.device.type == "cuda" and backend.calls[0].boxes.device.type == "cuda"
    np.testing.assert_array_equal(backend.calls[0].boxes.cpu(), [[10, 10, 39, 29], [60, 30, 89, 49]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sam", ["vit_b", "sam2.1-hiera-tiny"])
def test_backends_on_the_gpu_in_half_precision(sam: str, tiny_sam: Path, tiny_sam2: Path) -> None:
    """Both backends run on CUDA under fp16 autocast and agree with fp32 on the CPU."""
    config = SamConfig(model_type=sam, checkpoint=tiny_sam if sam == "vit_b" else tiny_sam2)  # type: ignore[arg-type]
    on_cpu = load_sam(config, torch.device("cpu"), None)
    on_gpu = load_sam(config, torch.device("cuda"), None, torch.float16)
    assert on_cpu is not None and on_gpu is not None
    scores, _, _ = two_object_scores()
    frames = random_frames(3)
    for frame, embedding in zip(frames, on_gpu.embed(frames)):
        labels = on_gpu.refine(frame, scores.cuda(), embedding)
        assert labels.device.type == "cuda"
        assert (labels.cpu() != on_cpu.refine(frame, scores)).float().mean() < 0.05


def random_frames(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, HEIGHT, WIDTH, 3), dtype=np.uint8)


def test_vit_backend_batches_match_sam_predictor(tiny_sam: Path) -> None:
    """Frames encoded in one batch and objects decoded in one call give what segment-anything's
    own SamPredictor gives frame by frame and object by object."""
    from segment_anything import SamPredictor

    refiner = load_sam(SamConfig(checkpoint=tiny_sam), torch.device("cpu"), None)
    assert refiner is not None
    backend = refiner.backend
    frames = random_frames(3)
    batched = backend.embed(frames)
    predictor = SamPredictor(backend.model)  # type: ignore[attr-defined]
    scores, _, _ = two_object_scores()
    regions = torch.stack([scores.argmax(0) == 1, scores.argmax(0) == 2])
    prompts = frame_prompts(scores, regions, torch.tensor([1, 2]))
    mask_inputs = padded_mask_input(prompts.log_odds, backend.mask_input_size).numpy()  # type: ignore[attr-defined]
    for frame, embedding in zip(frames, batched):
        predictor.set_image(frame)
        torch.testing.assert_close(embedding.features[0], predictor.features[0], atol=1e-4, rtol=1e-4)
        together = backend.predict(embedding, prompts)
        for k in range(2):
            alone, _, _ = predictor.predict(
                point_coords=prompts.points[k].numpy(),
                point_labels=prompts.labels[k].numpy(),
                box=prompts.boxes[k].numpy(),
                mask_input=mask_inputs[k],
                multimask_output=True,
            )
            assert (together[k].numpy() != alone).mean() < 1e-3


def test_sam2_backend_round_trip_and_batches(tiny_sam2: Path) -> None:
    from transformers import Sam2ImageProcessor

    config = SamConfig(model_type="sam2.1-hiera-tiny", checkpoint=tiny_sam2)
    refiner = load_sam(config, torch.device("cpu"), None)
    assert refiner is not None and refiner.backend.mask_input_size == 32  # type: ignore[attr-defined]
    backend = refiner.backend
    frames = random_frames(2)
    # the device-side preprocessing is transformers' image processor's
    expected = Sam2ImageProcessor(size={"height": 128, "width": 128})(images=list(frames), return_tensors="pt")
    torch.testing.assert_close(backend.pixel_values(frames), expected["pixel_values"], atol=0.05, rtol=0)  # type: ignore[attr-defined]

    scores, _, _ = two_object_scores()
    batched = backend.embed(frames)
    assert len(batched) == 2 and [f.shape for f in batched[0].features] == [(4, 32, 32), (8, 16, 16), (32, 8, 8)]
    regions = torch.stack([scores.argmax(0) == 1, scores.argmax(0) == 2])
    prompts = frame_prompts(scores, regions, torch.tensor([1, 2]))
    together = backend.predict(batched[1], prompts)
    assert together.shape == (2, 3, HEIGHT, WIDTH) and together.dtype == torch.bool
    alone = backend.embed(frames[1:])[0]
    for k in range(2):
        one = FramePrompts(prompts.boxes[k : k + 1], prompts.points[k : k + 1], prompts.labels[k : k + 1], prompts.log_odds[k : k + 1])
        assert (backend.predict(alone, one)[0] != together[k]).float().mean() < 1e-3
    labels = refiner.refine(frames[0], scores)
    assert labels.shape == (HEIGHT, WIDTH) and set(labels.unique().tolist()) <= {0, 1, 2}


def test_sam2_bad_inputs(tiny_sam2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    with pytest.raises(InputError, match="^sam_checkpoint: sam2.1-hiera-small takes a transformers folder"):
        load_sam(SamConfig(model_type="sam2.1-hiera-small", checkpoint=tiny_sam2 / "config.json"), cpu, None)
    with pytest.raises(InputError, match="not a transformers model folder"):
        load_sam(SamConfig(model_type="sam2.1-hiera-small", checkpoint=tmp_path), cpu, None)
    (tmp_path / "config.json").write_text('{"model_type": "sam"}')
    with pytest.raises(InputError, match="not a SAM 2 model"):
        load_sam(SamConfig(model_type="sam2.1-hiera-small", checkpoint=tmp_path), cpu, None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(InputError, match="^sam: cannot load 'facebook/sam2.1-hiera-large'"):
        load_sam(SamConfig(model_type="sam2.1-hiera-large"), cpu, None)
