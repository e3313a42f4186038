"""Prompts on the Tracker: clicks and boxes by object id at any frame, objects removed, scores.

SAM parity runs the tiny random-weight SAM (vit_b shapes scaled down) and SAM 2.1 against
segment-anything's ``SamPredictor`` and transformers' ``Sam2Model`` on a davis-mini frame.
Tracking with prompts runs on synthetic clips with the pixel-statistics stand-in features and
a stand-in SAM that answers a click with the drawn object under it (``TruthSam``), so "the
clicked object is tracked from its frame on" is a measured IoU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdmtrack import Tracker, TrackSettings
from pdmtrack.errors import ParameterError
from pdmtrack.runs.video_folder import FIRST_FRAME_MASK
from pdmtrack.sam.prompting import Decoded, ObjectPrompt
from pdmtrack.sam.refine import FrameEmbedding, FramePrompts, SamRefiner
from pdmtrack.tracking.models import Models
from pdmtrack.tracking.tracker import VideoState
from tests.cli_runner import run_cli
from tests.test_e2e import PixelStatistics
from tests.test_propagate import MIN_IOU_VISIBLE, CellStatistics, Track, draw_clip, iou

SEQUENCE = "blackswan"
NO_SAM = TrackSettings.from_options(sam="none", device="cpu", context=4)
LENGTH, ADDED_AT, REMOVED_FROM = 10, 3, 6
MIN_IOU_CARRIED = 0.5  # an object carried through a frame where another one was clicked


class TruthSam:
    """Stand-in SAM backend: a click answers with the drawn object under its first positive
    point (from the clip's truth), a box with the object filling most of it; refinement
    keeps the coarse masks. Counts encoded frames."""

    def __init__(self, frames: np.ndarray, truth: np.ndarray) -> None:
        self.frames, self.truth = frames, truth
        self.encoded = 0

    def embed(self, frames: np.ndarray) -> list[FrameEmbedding]:
        self.encoded += len(frames)
        index = [int(np.flatnonzero((self.frames == frame).all(axis=(1, 2, 3)))[0]) for frame in frames]
        return [FrameEmbedding((torch.tensor([t]),), frame.shape[:2], frame.shape[:2]) for t, frame in zip(index, frames)]

    def decode(self, embedding: FrameEmbedding, prompt: ObjectPrompt, mask_input: torch.Tensor | None, multimask: bool) -> Decoded:
        truth = self.truth[int(embedding.features[0])]
        if prompt.points:
            (x, y), _ = next((point, label) for point, label in zip(prompt.points, prompt.labels) if label == 1)
            object_id = truth[int(y), int(x)]
        else:
            x0, y0, x1, y1 = (int(v) for v in prompt.box)  # type: ignore[union-attr]
            object_id = np.bincount(truth[y0:y1, x0:x1].ravel()).argmax()
        mask = torch.from_numpy((truth == object_id) & (object_id > 0))
        return Decoded(mask[None], torch.ones(1), torch.zeros(1, 4, 4))

    def predict(self, embedding: FrameEmbedding, prompts: FramePrompts) -> torch.Tensor:
        return (prompts.log_odds > 0)[:, None]

    def mask_input(self, log_odds: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(log_odds), 1, 4, 4)


def synthetic_session(folder: Path) -> tuple[Tracker, VideoState, np.ndarray, TruthSam]:
    """Two objects crossing a 10-frame clip (PNG frames), a tracker with stand-in features and
    ``TruthSam``, a fresh state; returns the truth (T, H, W) too."""
    stripes = Track(1, "stripes", [(20, 10 + 6 * t) for t in range(LENGTH)])
    columns = Track(2, "columns", [(80, 120 - 5 * t) for t in range(LENGTH)])
    frames, truth = draw_clip([stripes, columns], seed=5)
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.png")
    sam = TruthSam(frames, truth)
    tracker = Tracker(NO_SAM, features=CellStatistics())
    tracker.models = replace(tracker.models, refiner=SamRefiner(sam, min_iou=0.5))  # type: ignore[arg-type]
    return tracker, tracker.init_state(folder), truth, sam


def centre(truth: np.ndarray, object_id: int) -> tuple[float, float]:
    """(x, y) of a pixel inside ``object_id``'s drawn square."""
    ys, xs = np.nonzero(truth == object_id)
    return float(np.median(xs)), float(np.median(ys))


def around(truth: np.ndarray, object_id: int) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) around ``object_id``'s drawn square."""
    ys, xs = np.nonzero(truth == object_id)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def test_an_object_clicked_mid_video_is_tracked_from_there_and_the_others_go_on(tmp_path: Path) -> None:
    tracker, state, truth, _ = synthetic_session(tmp_path / "clip")
    first = tracker.add_points(state, 0, obj_id=1, points=[centre(truth[0], 1)], labels=[1])
    np.testing.assert_array_equal(first, np.where(truth[0] == 1, 1, 0))  # the whole label map of the frame
    at_k = tracker.add_box(state, ADDED_AT, obj_id=2, box=around(truth[ADDED_AT], 2))
    np.testing.assert_array_equal(at_k, np.where(truth[ADDED_AT] == 2, 2, 0))  # object 1 is not given there
    results = dict(tracker.propagate(state))
    assert all(not (results[t] == 2).any() for t in range(ADDED_AT))
    np.testing.assert_array_equal(results[ADDED_AT] == 2, truth[ADDED_AT] == 2)  # the clicked mask is the output there
    assert min(iou(results[t] == 2, truth[t] == 2) for t in range(ADDED_AT + 1, LENGTH)) >= MIN_IOU_VISIBLE
    # object 1 is tracked through the frame where only object 2 was clicked, and after it; its
    # tracked mask there joins the keyframe (worst IoU 0.61 without the click, 0.54 with it)
    assert min(iou(results[t] == 1, truth[t] == 1) for t in range(1, LENGTH)) >= MIN_IOU_CARRIED


def test_remove_object_from_a_frame_on_and_everywhere(tmp_path: Path) -> None:
    tracker, state, truth, _ = synthetic_session(tmp_path / "clip")
    tracker.add_points(state, 0, 1, [centre(truth[0], 1)])
    tracker.add_points(state, ADDED_AT, 2, [centre(truth[ADDED_AT], 2)])
    before = dict(tracker.propagate(state))
    tracker.remove_object(state, 2, from_frame=REMOVED_FROM)
    after = dict(tracker.propagate(state))
    for t in range(REMOVED_FROM):  # frames before the removal are unchanged
        np.testing.assert_array_equal(after[t], before[t])
    assert all(not (after[t] == 2).any() for t in range(REMOVED_FROM, LENGTH))
    assert min(iou(after[t] == 1, truth[t] == 1) for t in range(1, LENGTH)) >= MIN_IOU_CARRIED
    tracker.remove_object(state, 2, from_frame=ADDED_AT)  # from its first frame: gone everywhere
    assert state.prompts.ends == {} and ADDED_AT not in state.given_frames
    assert all(not (labels == 2).any() for _, labels in tracker.propagate(state))
    with pytest.raises(ParameterError, match=r"^obj_id: object 2 is in no given mask or prompt \(objects: 1\)"):
        tracker.remove_object(state, 2)


def test_reset_state_gives_what_a_fresh_state_gives(tmp_path: Path) -> None:
    tracker, state, truth, _ = synthetic_session(tmp_path / "clip")

    def session(state: VideoState) -> list[tuple[int, np.ndarray]]:
        tracker.add_points(state, 0, 1, [centre(truth[0], 1)])
        tracker.add_box(state, ADDED_AT, 2, (0, 0, 159, 127), points=[centre(truth[ADDED_AT], 2)], labels=[1])
        return list(tracker.propagate(state))

    first = session(state)
    tracker.add_points(state, 5, 1, [centre(truth[5], 1)])
    tracker.remove_object(state, 2, from_frame=7)
    tracker.reset_state(state)
    assert state.given_frames == [] and not state.prompts.clicks and not state.prompts.ends
    with pytest.raises(ParameterError, match="^masks: give a mask"):
        tracker.propagate(state)
    again = session(state)
    fresh = session(tracker.init_state(tmp_path / "clip"))
    for (frame_a, a), (frame_b, b), (frame_c, c) in zip(first, again, fresh, strict=True):
        assert frame_a == frame_b == frame_c
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def test_a_second_click_on_a_frame_runs_no_image_encoder(tmp_path: Path) -> None:
    tracker, state, truth, sam = synthetic_session(tmp_path / "clip")
    tracker.add_points(state, 0, 1, [centre(truth[0], 1)])
    tracker.add_points(state, 0, 1, [(150, 120)], labels=[0])
    tracker.add_box(state, 0, 2, (100, 60, 159, 127))
    assert sam.encoded == 1
    for frame in (1, 2, 3, 4):  # four more frames: frame 0 leaves the cache of 4
        tracker.add_points(state, frame, 1, [centre(truth[frame], 1)])
    assert sam.encoded == 5
    tracker.add_points(state, 4, 1, [(5, 5)], labels=[0])
    assert sam.encoded == 5
    tracker.add_points(state, 0, 1, [(5, 5)], labels=[0])
    assert sam.encoded == 6


def test_clear_prompts_takes_the_object_out_of_its_frame(tmp_path: Path) -> None:
    tracker, state, truth, _ = synthetic_session(tmp_path / "clip")
    tracker.add_points(state, 0, 1, [centre(truth[0], 1)])
    both = tracker.add_points(state, 0, 2, [centre(truth[0], 2)])
    assert set(np.unique(both)) == {0, 1, 2}
    left = tracker.clear_prompts(state, 0, obj_id=2)
    np.testing.assert_array_equal(left, np.where(truth[0] == 1, 1, 0))
    assert state.prompts.objects_at(0) == {1}
    with pytest.raises(ParameterError, match="^obj_id: object 2 has no clicks or box at frame 0"):
        tracker.clear_prompts(state, 0, obj_id=2)
    assert not tracker.clear_prompts(state, 0, obj_id=1).any() and state.given_frames == []


def test_clicks_on_a_given_mask_refine_it_and_keep_the_other_objects(tmp_path: Path) -> None:
    tracker, state, truth, _ = synthetic_session(tmp_path / "clip")
    given = np.where(truth[2] == 1, 1, 0).astype(np.uint8)
    given[:5, :5] = 2  # a second object in the given mask
    tracker.add_mask(state, 2, given)
    labels = tracker.add_points(state, 2, 3, [centre(truth[2], 2)])
    assert 2 in state.masks and 2 not in state.prompts.masks  # still the whole truth of its frame
    np.testing.assert_array_equal(labels == 3, truth[2] == 2)
    np.testing.assert_array_equal(labels == 1, (given == 1) & (truth[2] != 2))
    assert (labels[:5, :5] == 2).all()
    tracker.add_mask(state, 2, given)  # a new mask replaces the frame's clicks
    assert state.prompts.objects_at(2) == set() and state.prompts.masks == {}


@pytest.mark.parametrize("protocol", ["pdmtrack", "dift"])
def test_with_scores_argmax_equals_the_labels(tmp_path: Path, protocol: str) -> None:
    stripes = Track(1, "stripes", [(20, 10 + 6 * t) for t in range(6)])
    columns = Track(2, "columns", [(80, 120 - 5 * t) for t in range(6)])
    frames, truth = draw_clip([stripes, columns], seed=3)
    (tmp_path / "clip").mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "clip" / f"{index:05d}.png")
    tracker = Tracker(replace(NO_SAM, memory=replace(NO_SAM.memory, protocol=protocol)), features=CellStatistics())
    state = tracker.init_state(tmp_path / "clip")
    tracker.add_mask(state, 0, truth[0])
    plain = list(tracker.propagate(state))
    scored = list(tracker.propagate(state, with_scores=True))
    assert len(scored) == len(plain) == 6
    for (frame, labels), (frame_s, labels_s, scores) in zip(plain, scored):
        assert frame == frame_s and scores.object_ids == (1, 2)
        np.testing.assert_array_equal(labels_s, labels)
        np.testing.assert_array_equal(scores.argmax(), labels)
        assert scores.objects.shape == (2, *labels.shape) and scores.objects.dtype == np.float32
    assert float(scored[3][2].of(2)[truth[3] == 2].mean()) > float(scored[3][2].of(1)[truth[3] == 2].mean())
    tracker.add_mask(state, 5, truth[5])
    backward = list(tracker.propagate(state, start=5, direction="backward", with_scores=True))
    assert [frame for frame, _, _ in backward] == [5, 4, 3, 2, 1, 0]
    assert all(np.array_equal(scores.argmax(), labels) for _, labels, scores in backward)
    with pytest.raises(ParameterError, match="^with_scores: scores come with forward or backward passes"):
        tracker.propagate(state, direction="both", with_scores=True)


def test_bad_prompts_are_one_line_errors_and_change_nothing(tmp_path: Path) -> None:
    tracker, state, truth, sam = synthetic_session(tmp_path / "clip")
    kept = tracker.add_points(state, 0, 1, [centre(truth[0], 1)])
    bad = [
        (dict(points=[(160.5, 10)]), r"^points: \(160.5, 10\) lies outside the 160x128 frame"),
        (dict(points=[(-1, 10)]), "^points: .* lies outside the 160x128 frame"),
        (dict(points=[(float("nan"), 10)]), r"^points: \(nan, 10.0\) is not a finite pixel position"),
        (dict(points=[(1, 2), (3, 4)], labels=[1]), r"^labels: 1 labels for 2 points"),
        (dict(points=[(1, 2)], labels=[2]), "^labels: 2 is not a point label"),
        (dict(points=[]), "^points: no points and no box"),
        (dict(points=[1, 2, 3]), r"^points: expected a list of \(x, y\) pairs"),
        (dict(points=[(1, 2)], obj_id=0), "^obj_id: 0 is not an object id"),
        (dict(points=[(1, 2)], obj_id=256), "^obj_id: 256 is not an object id"),
        (dict(points=[(1, 2)], frame_idx=LENGTH), r"^frame_idx: 10 is outside the video's frames 0..9"),
        (dict(box=(50, 10, 40, 30)), r"^box: \(50, 10, 40, 30\) is empty or inverted"),
        (dict(box=(0, 0, 161, 30)), r"^box: \(0, 0, 161, 30\) reaches outside the 160x128 frame"),
        (dict(box=(0, 0, 10)), r"^box: expected \(x0, y0, x1, y1\)"),
    ]
    for arguments, message in bad:
        call = {"frame_idx": 0, "obj_id": 2, **arguments}
        add = tracker.add_box if "box" in call else tracker.add_points
        with pytest.raises(ParameterError, match=message):
            add(state, **call)
    assert state.given_frames == [0] and list(state.prompts.clicks) == [(0, 1)]
    np.testing.assert_array_equal(state.prompts.masks[0], kept)
    assert sam.encoded == 1
    with pytest.raises(ParameterError, match="^from_frame: 12 is outside"):
        tracker.remove_object(state, 1, from_frame=12)
    no_sam = Tracker(NO_SAM, features=CellStatistics())
    with pytest.raises(ParameterError, match="^sam: points and boxes need a SAM model: set sam"):
        no_sam.add_points(no_sam.init_state(tmp_path / "clip"), 0, 1, [(5, 5)])


def davis_frame(davis_mini: Path, index: int = 0) -> Path:
    return davis_mini / "JPEGImages" / "480p" / SEQUENCE


def test_clicks_and_boxes_equal_segment_anythings_sam_predictor(davis_mini: Path, tiny_sam: Path) -> None:
    """add_points / add_box on a davis-mini frame give what ``SamPredictor.predict`` gives for
    the same prompts: one click -> its best of three by predicted IoU; more clicks -> one
    output with the previous low-res logits as mask input; a box (with a click)."""
    from segment_anything import SamPredictor

    tracker = Tracker(TrackSettings.from_options(sam="vit_b", sam_checkpoint=tiny_sam, device="cpu"), features=CellStatistics())
    state = tracker.init_state(davis_frame(davis_mini))
    frame = state.reader.read(0)
    predictor = SamPredictor(tracker.refiner.backend.model)  # type: ignore[union-attr]
    predictor.set_image(frame)
    click, second = (430.0, 250.0), (600.0, 120.0)

    masks, scores, logits = predictor.predict(point_coords=np.array([click]), point_labels=np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    labels = tracker.add_points(state, 0, obj_id=1, points=[click], labels=[1])
    assert 0 < masks[best].sum() < masks[best].size  # not a degenerate answer
    np.testing.assert_array_equal(labels == 1, masks[best])

    masks, _, _ = predictor.predict(
        point_coords=np.array([click, second]), point_labels=np.array([1, 0]), mask_input=logits[best][None], multimask_output=False
    )
    labels = tracker.add_points(state, 0, obj_id=1, points=[second], labels=[0])
    np.testing.assert_array_equal(labels == 1, masks[0])

    box = (300.0, 150.0, 700.0, 400.0)
    masks, _, _ = predictor.predict(box=np.array(box), multimask_output=False)
    labels = tracker.add_box(state, 0, obj_id=2, box=box)
    np.testing.assert_array_equal(labels == 2, masks[0])

    state = tracker.init_state(davis_frame(davis_mini))
    masks, _, _ = predictor.predict(point_coords=np.array([click]), point_labels=np.array([1]), box=np.array(box), multimask_output=False)
    labels = tracker.add_box(state, 0, obj_id=3, box=box, points=[click], labels=[1])
    np.testing.assert_array_equal(labels == 3, masks[0])


def test_clicks_and_boxes_equal_transformers_sam2(davis_mini: Path, tiny_sam2: Path) -> None:
    """The same with SAM 2.1 against transformers' ``Sam2Processor`` + ``Sam2Model`` called
    directly (their preprocessing resizes on the CPU, pdmtrack's on the device: a few pixels
    on mask edges may differ)."""
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

    settings = TrackSettings.from_options(sam="sam2.1-hiera-tiny", sam_checkpoint=tiny_sam2, device="cpu")
    tracker = Tracker(settings, features=CellStatistics())
    state = tracker.init_state(davis_frame(davis_mini))
    frame = state.reader.read(0)
    model = Sam2Model.from_pretrained(tiny_sam2).eval()
    processor = Sam2Processor(Sam2ImageProcessor(size={"height": 128, "width": 128}))
    click, box = (430.0, 250.0), (300.0, 150.0, 700.0, 400.0)

    def reference(pixels: str, **prompts: object) -> np.ndarray:
        """The kept mask: processor's prompts and post-processing, ``pixels`` its or pdmtrack's."""
        inputs = processor(images=frame, return_tensors="pt", **prompts)
        if pixels == "pdmtrack's":  # the same pixels in: the prompts' scaling must match exactly
            inputs["pixel_values"] = tracker.refiner.backend.pixel_values(frame[None])  # type: ignore[union-attr]
        with torch.inference_mode():
            output = model(**inputs, multimask_output="input_boxes" not in prompts)
        masks = processor.post_process_masks(output.pred_masks, inputs["original_sizes"])[0][0].numpy()
        return masks[int(np.argmax(output.iou_scores[0, 0].numpy()))]

    labels = tracker.add_points(state, 0, obj_id=1, points=[click])
    for pixels, tolerance in (("pdmtrack's", 0), ("transformers'", 5e-3)):
        expected = reference(pixels, input_points=[[[list(click)]]], input_labels=[[[1]]])
        assert 0 < expected.sum() < expected.size
        assert ((labels == 1) != expected).mean() <= tolerance

    labels = tracker.add_box(state, 0, obj_id=2, box=box)
    for pixels, tolerance in (("pdmtrack's", 0), ("transformers'", 5e-3)):
        expected = reference(pixels, input_boxes=[[list(box)]])
        assert 0 < expected.sum() < expected.size
        assert ((labels == 2) != expected).mean() <= tolerance


@pytest.fixture()
def short_swan(davis_mini: Path, tmp_path: Path) -> Path:
    """The first 6 frames of davis-mini's blackswan as a frame folder."""
    folder = tmp_path / SEQUENCE
    folder.mkdir()
    for index in range(6):
        (folder / f"{index:05d}.jpg").symlink_to(davis_frame(davis_mini) / f"{index:05d}.jpg")
    return folder


def test_cli_prompts_give_what_the_api_gives(
    short_swan: Path, tiny_sdxl: Path, tiny_sam: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``propagate --prompts FILE`` and ``--point``/``--box`` one-liners write what the same
    add_points/add_box calls and propagate give through the API, first_frame_mask.png too."""
    monkeypatch.setattr(Models, "pdm_source", lambda self, classes: PixelStatistics())
    entries = [
        {"frame": 0, "obj_id": 1, "points": [[430, 250], [600, 120]], "labels": [1, 0]},
        {"frame": 0, "obj_id": 2, "box": [50, 40, 300, 200]},
        {"frame": 3, "obj_id": 3, "points": [[700, 400]], "cls": "swan"},
    ]
    (tmp_path / "prompts.json").write_text(json.dumps(entries))
    common = ["--model", tiny_sdxl, "--size", "64", "--sam", "vit_b", "--sam-checkpoint", tiny_sam, "--context", "4", "--device", "cpu"]
    result = run_cli(["propagate", short_swan, "--prompts", tmp_path / "prompts.json", *common, "--no-overlay", "-o", tmp_path / "file"],
                     capsys, monkeypatch)  # fmt: skip
    assert result.code == 0, result.err
    flags = ["--point", "0:1:430,250", "--point", "0:1:600,120:neg", "--box", "0:2:50,40,300,200", "--point", "3:3:700,400"]
    result = run_cli(["propagate", short_swan, *flags, *common, "--no-overlay", "-o", tmp_path / "flags"], capsys, monkeypatch)
    assert result.code == 0, result.err

    tracker = Tracker(TrackSettings.from_options(sam="vit_b", sam_checkpoint=tiny_sam, context=4, device="cpu"), features=PixelStatistics())
    for out, classes in (("file", {3: "swan"}), ("flags", None)):
        state = tracker.init_state(short_swan, classes)
        first = tracker.add_points(state, 0, 1, [(430, 250), (600, 120)], [1, 0])
        first = tracker.add_box(state, 0, 2, (50, 40, 300, 200))
        tracker.add_points(state, 3, 3, [(700, 400)])
        assert set(np.unique(first)) == {0, 1, 2}
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / out / FIRST_FRAME_MASK)), first)
        for frame, labels in tracker.propagate(state):
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / out / f"{frame:05d}.png")), labels, err_msg=f"{out} {frame}")
    record = json.loads((tmp_path / "file" / "run.json").read_text())
    assert record["prompts"][2] == {"frame": 3, "obj_id": 3, "points": [[700.0, 400.0]], "labels": [1], "box": None, "cls": "swan"}
    assert record["classes"] == {"3": "swan"}


def test_cli_prompt_mistakes_are_one_line_errors(
    short_swan: Path, tiny_sam: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: object, file: object = None) -> list[str]:
        if file is not None:
            (tmp_path / "p.json").write_text(json.dumps(file))
            args = ("--prompts", tmp_path / "p.json", *args)
        result = run_cli(["propagate", short_swan, *args, "--sam-checkpoint", tiny_sam, "-o", tmp_path / "out"], capsys, monkeypatch)
        return [result.code, result.err.strip()]  # type: ignore[list-item]

    assert fails("--point", "0:1:900,10") == [
        2,
        "pdmtrack: error: --point 0:1: points: (900, 10) lies outside the 854x480 frame (x in 0..854, y in 0..480)",
    ]
    assert fails("--point", "0:1:10") == [
        2,
        "pdmtrack: error: --point: '0:1:10' is not FRAME:OBJ:X,Y or FRAME:OBJ:X,Y:neg (e.g. 0:1:412,230)",
    ]
    assert fails("--box", "0:1:50,10,40,30")[1].endswith(
        "--box 0:1: box: (50, 10, 40, 30) is empty or inverted: x1 must exceed x0 and y1 exceed y0"
    )
    assert fails("--point", "9:1:5,5")[1] == "pdmtrack: error: --point 9:1: frame: 9 is outside the video's frames 0..5"
    assert fails("--point", "0:0:5,5")[1].startswith("pdmtrack: error: --point 0:0: obj_id: 0 is not an object id")
    assert fails("--point", "0:1:5,5", "--sam", "none")[1].startswith("pdmtrack: error: --sam: clicks and boxes need a SAM model")
    where = f"pdmtrack: error: {tmp_path / 'p.json'}"
    assert (
        fails(file=[{"frame": 0, "obj_id": 1, "point": [[1, 2]]}])[1]
        == f"{where} entry 0: unknown key 'point' (keys: frame, obj_id, points, labels, box, cls, mask, end)"
    )
    assert fails(file=[{"frame": 0, "obj_id": 1}]) == [
        2,
        f"{where} entry 0: points: no points and no box: give at least one point or a box",
    ]
    assert fails(file={"frame": 0})[1].startswith(f"{where}: expected a JSON list of entries")
    assert fails(file=[{"frame": 0, "obj_id": 1, "points": [[1, 2]], "labels": [2]}])[1].endswith(
        "'labels' must be a list of 1 (on the object) or 0 (not on it), one per point"
    )
    named = [{"frame": 0, "obj_id": 1, "points": [[1, 2]], "cls": "swan"}]
    assert fails("--cls", "bird", file=named)[1].startswith("pdmtrack: error: --cls: ")
    assert not (tmp_path / "out").exists()


NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tracker_api.ipynb"


def test_the_tracker_api_notebook_runs_top_to_bottom(davis_mini: Path, tiny_sdxl: Path, tiny_sam: Path, tmp_path: Path) -> None:
    """examples/tracker_api.ipynb in a real kernel, its parameters cell pointing at the tiny
    models and davis-mini: every cell runs, frames before the correction stay unchanged, and
    the masks and strips are shown."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source = "\n".join([
        f"MODEL = {str(tiny_sdxl)!r}", 'SAM = "vit_b"', f"SAM_CHECKPOINT = {str(tiny_sam)!r}", f"DAVIS = {str(davis_mini)!r}",
        'SEQUENCE = "blackswan"', "FRAMES = 24", 'OPTIONS = {"size": 64, "inversion": "noise", "no_cache": True, "device": "cpu"}',
    ])  # fmt: skip
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "50 frames of 854 x 480" in text and "frames before 12 unchanged: True" in text
    assert "scores at the last frame for objects (1, 2)" in text and "object 1: J " in text
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 5  # two masks, three strips


def _python_block(document: Path, heading: str) -> str:
    """The first ```python block under ``heading`` in ``document``."""
    text = document.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_clicks_example_runs(davis_mini: Path, tiny_sdxl: Path, tiny_sam: Path, tmp_path: Path) -> None:
    """The Python API page's clicks-and-boxes example, with the tiny models and davis-mini."""
    code = _python_block(NOTEBOOK.parents[1] / "docs" / "python-api.md", "## Clicks, boxes and objects added or removed")
    assert 'model="stabilityai/sdxl-turbo", sam="vit_b"' in code and '"DAVIS/' in code
    tiny = f'model="{tiny_sdxl}", size=64, inversion="noise", no_cache=True, device="cpu", sam="vit_b", sam_checkpoint="{tiny_sam}"'
    code = code.replace('model="stabilityai/sdxl-turbo", sam="vit_b"', tiny).replace('"DAVIS/', f'"{davis_mini}/')
    exec(compile(code, "python-api.md", "exec"), {})


def test_the_click_benchmark_runs() -> None:
    """benchmarks/bench_prompts.py --smoke (the tiny SAM) prints both timings and their ratio."""
    script = NOTEBOOK.parents[1] / "benchmarks" / "bench_prompts.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[1])}
    result = subprocess.run([sys.executable, str(script), "--smoke", "--frames", "1", "--clicks", "2"], capture_output=True, text=True,
                            env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "first click on a frame (encoder + decoder): median" in result.stdout and "ratio first / later:" in result.stdout


def test_mask_entries_and_object_masks_give_what_the_api_gives(
    short_swan: Path, davis_mini: Path, tiny_sdxl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompts file of mask entries (an object's pixels of a file at a frame, or a whole
    frame's mask: what ``pdmtrack annotate`` saves) needs no SAM and equals ``add_object_mask``
    and ``add_mask`` through the API."""
    monkeypatch.setattr(Models, "pdm_source", lambda self, classes: PixelStatistics())
    truth = [np.asarray(Image.open(davis_mini / "Annotations" / "480p" / SEQUENCE / f"{t:05d}.png")) for t in range(6)]
    (tmp_path / "given").mkdir()
    second = truth[0].copy()
    second[:100, :100] = 2
    Image.fromarray(second).save(tmp_path / "given" / "00000.png")
    Image.fromarray(truth[4]).save(tmp_path / "given" / "00004.png")
    entries = [
        {"frame": 0, "obj_id": 1, "mask": "given/00000.png", "cls": "swan"},
        {"frame": 0, "obj_id": 2, "mask": "given/00000.png"},
        {"frame": 4, "mask": "given/00004.png"},
    ]
    (tmp_path / "prompts.json").write_text(json.dumps(entries))
    args = ["propagate", short_swan, "--prompts", tmp_path / "prompts.json", "--model", tiny_sdxl, "--size", "64", "--sam", "none"]
    result = run_cli([*args, "--context", "4", "--device", "cpu", "--no-overlay", "-o", tmp_path / "out"], capsys, monkeypatch)
    assert result.code == 0, result.err

    tracker = Tracker(TrackSettings.from_options(sam="none", context=4, device="cpu"), features=PixelStatistics())
    state = tracker.init_state(short_swan, {1: "swan"})
    tracker.add_object_mask(state, 0, 1, truth[0] == 1)
    labels = tracker.add_object_mask(state, 0, 2, second == 2)
    np.testing.assert_array_equal(labels, second)
    tracker.add_mask(state, 4, truth[4])
    for frame, labels in tracker.propagate(state):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{frame:05d}.png")), labels, err_msg=str(frame))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "00000.png")), second)
    with pytest.raises(ParameterError, match="^mask: frame 0: expected a bool or 0/1 mask of object 3"):
        tracker.add_object_mask(state, 0, 3, truth[0] * 2)
