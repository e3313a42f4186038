"""``--features dinov3`` (DINOv3 ViTs and ConvNeXts through transformers) and the composite
source: appearance from one backbone, the instance prior from another (``--instance-prior
pdm``, ``Tracker(features=..., prior=...)``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_runner import assert_one_line_error, run_cli
from colour_source import ColourSource
from PIL import Image

from pdmtrack.config import DINOV3_SIZES, SourceConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.features.dino import DinoExtractor, load_vit
from pdmtrack.features.types import PDMFeatures
from pdmtrack.testing.dino import build_tiny_dinov3
from pdmtrack.tracking.tracker import Tracker

FRAMES = np.random.default_rng(0).integers(0, 256, (2, 60, 90, 3), dtype=np.uint8)
CPU = torch.device("cpu")


def test_dinov3_vit_features_are_transformers_own_patch_tokens(tiny_dinov3: Path) -> None:
    from transformers import DINOv3ViTImageProcessor, DINOv3ViTModel

    parts = load_vit(tiny_dinov3, CPU, torch.float32, "dinov3_model")
    assert (parts.patch, parts.prefix_tokens) == (16, 1 + 4)
    features = DinoExtractor(parts, size=64, name="dinov3")(FRAMES)
    # short side 60 -> 64 (4 patches of 16), long side 90 * 64/60 = 96 (6 patches)
    assert features.appearance.shape == (2, 32, 4, 6) and features.semantic.shape == (2, 0, 4, 6)

    processor = DINOv3ViTImageProcessor(size={"height": 64, "width": 96})  # transformers' own resize and ImageNet normalisation
    pixels = processor(images=list(FRAMES), return_tensors="pt")["pixel_values"]
    tokens = DINOv3ViTModel.from_pretrained(tiny_dinov3).eval()(pixel_values=pixels).last_hidden_state
    assert tokens.shape == (2, 1 + 4 + 24, 32)  # [CLS, 4 registers, 4 x 6 patches]
    expected = tokens[:, 5:].detach().reshape(2, 4, 6, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(features.appearance.float(), expected, atol=2e-2, rtol=2e-2)


def test_dinov3_convnext_features_are_its_last_stage_cells(tmp_path: Path) -> None:
    from transformers import DINOv3ConvNextModel

    folder = build_tiny_dinov3(tmp_path / "convnext", convnext=True)
    parts = load_vit(folder, CPU, torch.float32, "dinov3_model")
    assert (parts.patch, parts.prefix_tokens) == (32, 1)
    features = DinoExtractor(parts, size=64, name="dinov3")(FRAMES)
    assert features.appearance.shape == (2, 64, 2, 3)  # 64 x 96 pixels at stride 32

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = torch.from_numpy(FRAMES).permute(0, 3, 1, 2).float() / 255
    pixels = (F.interpolate(pixels, size=(64, 96), mode="bilinear", antialias=True) - mean) / std
    tokens = DINOv3ConvNextModel.from_pretrained(folder).eval()(pixel_values=pixels).last_hidden_state
    assert tokens.shape == (2, 1 + 6, 64)  # [pooled, 2 x 3 cells]
    expected = tokens[:, 1:].detach().reshape(2, 2, 3, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(features.appearance.float(), expected, atol=2e-2, rtol=2e-2)


def test_input_size_presets_and_bad_sizes() -> None:
    assert DINOV3_SIZES == {"small": 480, "medium": 960, "large": 1440}
    assert SourceConfig().dinov3_size == 480  # default: the paper's small setting
    assert [SourceConfig(dinov3_size=name).dinov3_size for name in ("small", "medium", "large")] == [480, 960, 1440]
    assert SourceConfig(dinov3_size="640").dinov3_size == 640
    for bad in ("huge", "480px", 8, "-16"):
        with pytest.raises(InputError, match="^dinov3_size: "):
            SourceConfig(dinov3_size=bad)
    with pytest.raises(InputError, match="^dinov3_size: '480px' is neither a number of pixels nor a preset"):
        SourceConfig(dinov3_size="480px")


def test_tracker_takes_the_features_option_by_name(tiny_dinov3: Path) -> None:
    tracker = Tracker(features="dinov3", dinov3_model=tiny_dinov3, dinov3_size="small", sam="none", device="cpu")
    assert tracker.settings.source.kind == "dinov3" and tracker.parts is None
    assert tracker.vit is not None and tracker.vit.patch == 16
    assert isinstance(tracker.feature_source().source, DinoExtractor)


def test_instance_prior_pdm_needs_another_appearance_and_video() -> None:
    with pytest.raises(InputError, match="^instance_prior: .*already"):
        SourceConfig(kind="pdm", instance_prior="pdm")
    with pytest.raises(InputError, match="^instance_prior: the dift protocol propagates labels without an instance prior"):
        Tracker(features="dinov3", instance_prior="pdm", protocol="dift", sam="none")
    with pytest.raises(TypeError, match="prior="):
        Tracker(prior=ColourSource(), sam="none", device="cpu")
    with pytest.raises(InputError, match="^instance_prior: .*give prior=SOURCE"):
        Tracker(TrackSettings.from_options(features="dinov3", instance_prior="pdm", sam="none"), features=ColourSource())
    with pytest.raises(InputError, match="^prior: the dift protocol"):
        Tracker(features=ColourSource(), prior=BrightRed(), protocol="dift", device="cpu")


def test_gated_and_offline_hub_models_say_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args: object, **kwargs: object) -> str:  # what the hub answers a user without access
        response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/models/facebook/dinov3"))
        raise GatedRepoError("401 Client Error: access to model facebook/dinov3 is restricted", response=response)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(InputError, match=r"^dinov3_model: .*gated.*accept its licence.*hf auth login"):
        load_vit("facebook/dinov3-vits16-pretrain-lvd1689m", CPU, torch.float32, "dinov3_model")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(InputError, match=r"^dinov3_model: .*not in the HF cache and HF_HUB_OFFLINE is set.*hf download"):
        load_vit("facebook/dinov3-vits16-pretrain-lvd1689m", CPU, torch.float32, "dinov3_model")


def test_cli_names_the_dinov3_flags(tiny_sdxl, tiny_dinov3, tmp_path, capsys, monkeypatch) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(2):
        Image.fromarray(FRAMES[index]).save(frames / f"{index:05d}.png")
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.ones((20, 20), np.uint8), ((20, 20), (35, 35)))).save(mask)
    common = ["propagate", frames, "--mask", mask, "-o", tmp_path / "out", "--sam", "none", "--features", "dinov3"]
    assert_one_line_error(run_cli([*common, "--dinov3-size", "huge"], capsys, monkeypatch), "--dinov3-size", "huge")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    result = run_cli(common, capsys, monkeypatch)  # the default hub id, not downloaded
    assert_one_line_error(result, "--dinov3-model", "facebook/dinov3-vitl16-pretrain-lvd1689m", "HF_HUB_OFFLINE")
    models = ["--model", tiny_sdxl, "--dinov3-model", tiny_dinov3, "--sam", "none", "--features", "dinov3"]
    segment = ["segment", frames / "00000.png", frames / "00001.png", "--mask", mask, "-o", tmp_path / "seg", *models]
    assert_one_line_error(run_cli([*segment, "--instance-prior", "pdm"], capsys, monkeypatch), "--instance-prior", "video")


# --- the composite, with stand-in sources ---------------------------------------------------

SIZE, FRAMES_IN_CLIP = 128, 20
LOCAL = {"radius": 2, "global_first_frame": False}  # propagation from nearby cells only


def crossing_squares() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two red squares that cross: A (255, 0, 0) drifts right, B (200, 0, 0) falls through it
    from the top and leaves at the bottom. A is drawn on top. Returns frames, A's masks, B's."""
    frames = np.zeros((FRAMES_IN_CLIP, SIZE, SIZE, 3), np.uint8)
    a = np.zeros((FRAMES_IN_CLIP, SIZE, SIZE), bool)
    b = np.zeros_like(a)
    for t in range(FRAMES_IN_CLIP):
        b[t, 4 + 6 * t : 28 + 6 * t, 52:76] = True
        a[t, 52:76, 40 + t : 64 + t] = True
        b[t] &= ~a[t]
        frames[t][b[t]] = (200, 0, 0)
        frames[t][a[t]] = (255, 0, 0)
    return frames, a, b


class BrightRed:
    """Stand-in prior source that tells the squares apart: per 8-pixel cell, the share of
    (255, 0, 0) pixels and of the rest."""

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        bright = torch.from_numpy(np.array(frames[..., 0] > 240)).float()
        cells = F.avg_pool2d(torch.stack([bright, 1 - bright], dim=1), 8).to(torch.float16)
        return PDMFeatures(appearance=cells, semantic=cells[:, :0])


def track(frames: np.ndarray, first_mask: np.ndarray, folder: Path, **kwargs: object) -> list[np.ndarray]:
    folder.mkdir(exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.png")
    tracker = Tracker(features=ColourSource(), sam="none", device="cpu", **LOCAL, **kwargs)  # type: ignore[arg-type]
    state = tracker.init_state(folder)
    tracker.add_mask(state, 0, first_mask.astype(np.uint8))
    return [labels == 1 for _, labels in tracker.propagate(state)]


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float((mask & truth).sum() / (mask | truth).sum())


def test_a_prior_of_weight_zero_changes_nothing(tmp_path: Path) -> None:
    frames, a, _ = crossing_squares()
    plain = track(frames, a[0], tmp_path / "clip", instance_weight=0.0)
    composite = track(frames, a[0], tmp_path / "clip", instance_weight=0.0, prior=BrightRed())
    assert all(np.array_equal(p, c) for p, c in zip(plain, composite, strict=True))


def test_the_prior_keeps_the_label_on_the_marked_square(tmp_path: Path) -> None:
    frames, a, b = crossing_squares()
    plain = track(frames, a[0], tmp_path / "clip")
    composite = track(frames, a[0], tmp_path / "clip", prior=BrightRed())
    after = range(14, FRAMES_IN_CLIP)  # B has left A
    # Appearance alone cannot tell the squares apart: the label is dragged onto B whole.
    assert max((plain[t] & b[t]).sum() / b[t].sum() for t in after) > 0.9
    # With the prior B is left alone once they part, and A keeps its label throughout.
    assert all((composite[t] & b[t]).sum() == 0 for t in after)
    assert min(iou(composite[t], a[t]) for t in range(FRAMES_IN_CLIP)) > 0.45
    assert np.mean([iou(composite[t], a[t]) for t in after]) > np.mean([iou(plain[t], a[t]) for t in after]) + 0.15


# --- the composite with the real sources: CLI, cache, evaluators ---------------------------


@pytest.fixture
def dinov3_run(tiny_sdxl: Path, tiny_dinov3: Path, tmp_path: Path) -> list[object]:
    return ["--features", "dinov3", "--dinov3-model", tiny_dinov3, "--model", tiny_sdxl, "--size", "64", "--cache-dir", tmp_path / "cache"]


def short_clip(davis_mini: Path, folder: Path, frames: int = 6) -> tuple[Path, Path]:
    folder.mkdir()
    for path in sorted((davis_mini / "JPEGImages" / "480p" / "car-shadow").glob("*.jpg"))[:frames]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder, davis_mini / "Annotations" / "480p" / "car-shadow" / "00000.png"


def test_the_composite_computes_each_source_once(davis_mini, dinov3_run, tmp_path, capsys, monkeypatch) -> None:
    frames, mask = short_clip(davis_mini, tmp_path / "clip")
    propagate = ["propagate", frames, "--mask", mask, "--sam", "none", "--no-overlay", *dinov3_run]
    first = run_cli([*propagate, "--instance-prior", "pdm", "-o", tmp_path / "first"], capsys, monkeypatch)
    assert first.code == 0, first.err
    assert "0 frames from cache, 6 computed" in first.out
    again = run_cli([*propagate, "--instance-prior", "pdm", "-o", tmp_path / "again"], capsys, monkeypatch)
    assert "6 frames from cache, 0 computed" in again.out, again.out
    for png in sorted((tmp_path / "first").glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "again" / png.name)))
    dinov3_alone = run_cli([*propagate, "-o", tmp_path / "dinov3"], capsys, monkeypatch)
    assert "6 frames from cache, 0 computed" in dinov3_alone.out, dinov3_alone.out
    pdm = [word for word in propagate if word not in ("--features", "dinov3")]
    pdm_alone = run_cli([*pdm, "-o", tmp_path / "pdm"], capsys, monkeypatch)
    assert "6 frames from cache, 0 computed" in pdm_alone.out, pdm_alone.out
    # the prior changes the masks: the two runs are not the same tracker
    differs = [
        not np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "dinov3" / png.name)))
        for png in sorted((tmp_path / "first").glob("*.png"))[1:]
    ]
    assert any(differs)


@pytest.mark.parametrize("extra", [["--protocol", "dift"], ["--instance-prior", "pdm"]], ids=["dift-protocol", "pdm-prior"])
def test_eval_davis_with_dinov3(davis_mini, dinov3_run, extra, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "davis"
    args = ["eval", "davis", "--root", davis_mini, "-o", out, "--sequences", "car-shadow", "--sam", "none", *dinov3_run, *extra]
    result = run_cli(args, capsys, monkeypatch)
    assert result.code == 0, result.err
    assert len(list((out / "results" / "car-shadow").glob("*.png"))) == 40
    scores = (out / "global_results-val.csv").read_text().splitlines()[1].split(",")
    assert 0.0 < float(scores[0]) <= 1.0, scores  # J&F of a real run (random weights: low, not zero)


def test_tracker_takes_a_custom_prior_beside_custom_features(tmp_path: Path) -> None:
    frames, a, _ = crossing_squares()
    folder = tmp_path / "clip"
    track(frames[:3], a[0], folder)
    tracker = Tracker(features=ColourSource(), prior=BrightRed(), sam="none", device="cpu")
    state = tracker.init_state(folder)
    tracker.add_mask(state, 0, a[0].astype(np.uint8))
    assert len(list(tracker.propagate(state))) == 3
    assert state.computed_frames == 3 and state.cached_frames == 0


def test_class_names_start_from_pdms_class_attention_in_the_composite(davis_mini, dinov3_run, tmp_path, capsys, monkeypatch) -> None:
    frames, _ = short_clip(davis_mini, tmp_path / "clip", frames=3)
    by_name = ["propagate", frames, "--cls", "car", "--sam", "none", "--no-overlay", *dinov3_run]
    assert_one_line_error(run_cli([*by_name, "-o", tmp_path / "plain"], capsys, monkeypatch), "--cls", "class attention")
    result = run_cli([*by_name, "--instance-prior", "pdm", "-o", tmp_path / "prior"], capsys, monkeypatch)
    assert result.code == 0, result.err
    first = np.asarray(Image.open(tmp_path / "prior" / "first_frame_mask.png"))
    assert first.shape == (480, 854) and set(np.unique(first)) <= {0, 1}
    assert len(list((tmp_path / "prior").glob("0*.png"))) == 3
