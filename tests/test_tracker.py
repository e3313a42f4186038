"""The session API: ``Tracker`` loads models once, ``propagate`` streams masks, given masks
correct the track, add and end objects, and tracking runs backwards and both ways.

Tracking quality is measured with the pixel-statistics stand-in features of the end-to-end
tests (colour/texture statistics of 16-px cells), fed through the public feature seam
``Tracker(features=...)``, so "frames after a correction follow it" is a number."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pdmtrack.sam.loading
import pdmtrack.tracking.models
from pdmtrack import Tracker, TrackSettings
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.eval.davis import evaluate_davis
from pdmtrack.io.files import LOCK_FILE
from pdmtrack.io.masks import DAVIS_PALETTE
from pdmtrack.tracking.models import Models
from tests.cli_runner import run_cli
from tests.test_e2e import PixelStatistics
from tests.test_eval_davis import make_davis, moving_squares
from tests.test_propagate import MIN_IOU_VISIBLE, CellStatistics, Track, draw_clip, iou

SEQUENCE = "blackswan"
FRAMES = 8
NO_SAM = TrackSettings.from_options(sam="none", device="cpu", context=4)


@pytest.fixture(scope="module")
def swan(davis_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The first frames of blackswan as a frame folder, and their ground-truth ids."""
    folder = tmp_path_factory.mktemp("swan") / SEQUENCE
    folder.mkdir()
    truth = []
    for index in range(FRAMES):
        shutil.copy(davis_mini / "JPEGImages" / "480p" / SEQUENCE / f"{index:05d}.jpg", folder)
        truth.append(np.asarray(Image.open(davis_mini / "Annotations" / "480p" / SEQUENCE / f"{index:05d}.png")))
    return folder, truth


def tracker() -> Tracker:
    return Tracker(NO_SAM, features=PixelStatistics())


def box(shape: tuple[int, ...], top: int, left: int, size: int, object_id: int = 1) -> np.ndarray:
    labels = np.zeros(shape[:2], dtype=np.uint8)
    labels[top : top + size, left : left + size] = object_id
    return labels


def test_a_session_tracks_from_the_first_mask(swan) -> None:
    folder, truth = swan
    session = tracker()
    state = session.init_state(folder)
    session.add_mask(state, 0, truth[0])
    results = list(session.propagate(state))
    assert [frame for frame, _ in results] == list(range(FRAMES))
    np.testing.assert_array_equal(results[0][1], truth[0])  # the given mask is the output there
    assert min(iou(labels == 1, truth[frame] == 1) for frame, labels in results[1:]) > 0.7


def synthetic_clip(folder: Path, tracks: list[Track], seed: int) -> np.ndarray:
    """Draw ``tracks`` into a folder of PNG frames; return the truth (T, H, W) ids."""
    frames, truth = draw_clip(tracks, seed=seed)
    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.png")
    return truth


def test_a_correction_is_the_output_at_its_frame_and_later_frames_follow_it(tmp_path: Path) -> None:
    """The object changes its look at frame 4 (it turns around: stripes become a checker
    pattern, and it jumps): alone, the track loses it; corrected at frame 4, it follows."""
    corrected_at, length = 4, 9
    gone = (-100, -100)
    before = Track(1, "stripes", [(20, 10 + 6 * t) if t < corrected_at else gone for t in range(length)])
    after = Track(1, "checker", [gone if t < corrected_at else (70, 90 + 4 * (t - corrected_at)) for t in range(length)])
    folder = tmp_path / "clip"
    truth = synthetic_clip(folder, [before, after], seed=3)
    scores = {}
    for corrected in (False, True):
        session = Tracker(NO_SAM, features=CellStatistics())
        state = session.init_state(folder)
        session.add_mask(state, 0, truth[0])
        if corrected:
            session.add_mask(state, corrected_at, truth[corrected_at])
        results = dict(session.propagate(state))
        scores[corrected] = [iou(results[t] == 1, truth[t] == 1) for t in range(corrected_at + 1, length)]
        if corrected:
            np.testing.assert_array_equal(results[corrected_at], truth[corrected_at])
        assert min(iou(results[t] == 1, truth[t] == 1) for t in range(1, corrected_at)) >= MIN_IOU_VISIBLE
    assert max(scores[False]) < 0.2, scores[False]  # alone, the track loses the new look
    assert min(scores[True]) >= MIN_IOU_VISIBLE, scores[True]  # corrected, every later frame follows it


def test_an_object_added_by_a_correction_is_tracked_after_it_and_ended_ones_stop(tmp_path: Path) -> None:
    length, added_at, ended_at = 10, 3, 7
    stripes = Track(1, "stripes", [(20, 10 + 6 * t) for t in range(length)])
    columns = Track(2, "columns", [(80, 120 - 5 * t) for t in range(length)])
    truth = synthetic_clip(tmp_path / "clip", [stripes, columns], seed=5)
    session = Tracker(NO_SAM, features=CellStatistics())
    state = session.init_state(tmp_path / "clip")
    session.add_mask(state, 0, np.where(truth[0] == 1, 1, 0).astype(np.uint8))  # object 1 only
    session.add_mask(state, added_at, truth[added_at])  # both: object 2 starts here
    session.add_mask(state, ended_at, np.where(truth[ended_at] == 2, 2, 0).astype(np.uint8))  # object 1 ends
    results = dict(session.propagate(state))
    assert all(not (results[t] == 2).any() for t in range(added_at))
    assert min(iou(results[t] == 2, truth[t] == 2) for t in range(added_at + 1, length)) >= MIN_IOU_VISIBLE
    assert min(iou(results[t] == 1, truth[t] == 1) for t in range(1, ended_at)) >= MIN_IOU_VISIBLE
    assert all(not (results[t] == 1).any() for t in range(ended_at, length))


def test_a_mask_at_the_last_frame_tracked_in_reverse_reaches_frame_zero(swan) -> None:
    folder, truth = swan
    session = tracker()
    state = session.init_state(folder)
    session.add_mask(state, FRAMES - 1, truth[-1])
    results = list(session.propagate(state, direction="backward"))
    assert [frame for frame, _ in results] == list(range(FRAMES - 1, -1, -1))
    assert iou(results[-1][1] == 1, truth[0] == 1) > 0.7
    partial = [frame for frame, _ in session.propagate(state, start=FRAMES - 1, end=3, direction="backward")]
    assert partial == list(range(FRAMES - 1, 3, -1))  # end is exclusive going backwards too


def test_several_states_live_side_by_side(swan) -> None:
    folder, truth = swan
    session = tracker()
    first, second = session.init_state(folder), session.init_state(folder)
    session.add_mask(first, 0, truth[0])
    session.add_mask(second, 0, box(truth[0].shape, 20, 20, 80))
    one, two = session.propagate(first), session.propagate(second)
    for (frame_a, labels_a), (frame_b, labels_b) in zip(one, two):  # interleaved generators
        assert frame_a == frame_b
        if frame_a > 0:
            assert iou(labels_a == 1, labels_b == 1) < 0.1


def test_bad_session_input_is_a_one_line_error(swan) -> None:
    folder, truth = swan
    session = tracker()
    state = session.init_state(folder)
    with pytest.raises(InputError, match="^masks: give a mask"):
        next(session.propagate(state))  # no mask and no class name
    with pytest.raises(InputError, match="^frame_idx: 99 is outside"):
        session.add_mask(state, 99, truth[0])
    with pytest.raises(InputError, match="^labels: frame 0: mask is 10x10"):
        session.add_mask(state, 0, np.zeros((10, 10), np.uint8))
    session.add_mask(state, 2, truth[2])
    with pytest.raises(ParameterError, match="^start: frame 0 has no mask") as error:
        session.propagate(state, start=0)  # the library names its own parameters, at the call
    assert error.value.parameter == "start" and "--" not in str(error.value)
    with pytest.raises(ParameterError, match="^start: 40 is outside the video's frames"):
        session.propagate(state, start=40, direction="backward")
    with pytest.raises(ParameterError, match="^end: 1 must lie after start 2"):
        session.propagate(state, end=1)
    with pytest.raises(ParameterError, match="^direction: unknown value 'sideways'"):
        session.propagate(state, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown tracker option"):
        Tracker(sam="none", contxt=3)


def write_palette(path: Path, labels: np.ndarray) -> Path:
    image = Image.fromarray(labels, mode="P")
    image.putpalette(DAVIS_PALETTE.tobytes())
    image.save(path)
    return path


def test_cli_and_api_give_identical_masks_with_corrections_both_ways(
    swan, tiny_sdxl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``propagate --mask 2:F --mask 6:F --direction both`` writes what the API's two passes give:
    frames before the first mask and nearer the next mask from the backward pass."""
    folder, truth = swan
    monkeypatch.setattr(Models, "pdm_source", lambda self, classes: PixelStatistics())
    masks = {2: write_palette(tmp_path / "m2.png", truth[2]), 6: write_palette(tmp_path / "m6.png", truth[6])}
    args = ["propagate", folder, "--mask", f"2:{masks[2]}", "--mask", f"6:{masks[6]}", "--direction", "both"]
    args += ["--model", tiny_sdxl, "--size", "64", "--sam", "none", "--context", "4", "--device", "cpu", "--no-overlay"]
    result = run_cli([*args, "-o", tmp_path / "out"], capsys, monkeypatch)
    assert result.code == 0, result.err
    written = {t: np.asarray(Image.open(tmp_path / "out" / f"{t:05d}.png")) for t in range(FRAMES)}

    session = Tracker(NO_SAM, features=PixelStatistics())
    state = session.init_state(folder)
    session.add_mask(state, 2, truth[2])
    session.add_mask(state, 6, truth[6])
    backward = dict(session.propagate(state, direction="backward"))
    forward = dict(session.propagate(state))
    expected = {0: backward[0], 1: backward[1], 2: truth[2], 3: forward[3], 4: forward[4], 5: backward[5]}
    expected |= {6: truth[6], 7: forward[7]}
    both = list(session.propagate(state, direction="both"))  # the API's own two-way stream
    assert [frame for frame, _ in both] == list(range(FRAMES))
    for frame, labels in both:
        np.testing.assert_array_equal(written[frame], expected[frame], err_msg=f"frame {frame}")
        np.testing.assert_array_equal(labels, written[frame], err_msg=f"frame {frame} (API both)")
    assert [p.name for p in (tmp_path / "out").glob(".*")] == [LOCK_FILE]  # no scratch left in the output folder


def test_eval_davis_loads_each_model_once(tiny_sdxl: Path, tiny_sam: Path, tmp_path: Path, monkeypatch) -> None:
    squares = {name: moving_squares(5, (64, 64), [(8, 8 + 4 * k, 16)]) for k, name in enumerate(["a", "b", "c"])}
    root = make_davis(tmp_path / "davis", squares)
    loads = {"diffusion": 0, "sam": 0}
    for module, name, key in (
        (pdmtrack.tracking.models, "load_diffusion_parts", "diffusion"),
        (pdmtrack.sam.loading, "load_sam_model", "sam"),
    ):
        original = getattr(module, name)

        def counted(*args, _original=original, _key=key, **kwargs):
            loads[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    settings = TrackSettings.from_options(model=str(tiny_sdxl), size=64, sam_checkpoint=tiny_sam, device="cpu", no_cache=True)
    report = evaluate_davis(root, "val", out_dir=tmp_path / "out", settings=settings)
    assert report.tracking is not None and report.tracking.tracked == ["a", "b", "c"]
    assert loads == {"diffusion": 1, "sam": 1}


def _first_python_block(doc: Path) -> str:
    return doc.read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("doc", ["README.md", "docs/python-api.md"])
def test_the_documented_python_examples_run(
    doc: str, davis_mini: Path, tiny_sdxl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's short Python example and the Python API page's full one, with the tiny
    model for SDXL-turbo and the first 24 frames of davis-mini's blackswan for DAVIS."""
    for kind, suffix in (("JPEGImages", "jpg"), ("Annotations", "png")):
        folder = tmp_path / kind / "480p" / SEQUENCE
        folder.mkdir(parents=True)
        for index in range(24):
            (folder / f"{index:05d}.{suffix}").symlink_to(davis_mini / kind / "480p" / SEQUENCE / f"{index:05d}.{suffix}")
    code = _first_python_block(Path(__file__).resolve().parents[1] / doc)
    assert 'model="stabilityai/sdxl-turbo"' in code and 'sam="vit_b"' in code and '"DAVIS/' in code
    code = code.replace('model="stabilityai/sdxl-turbo"', f'model="{tiny_sdxl}", size=64, inversion="noise", no_cache=True')
    code = code.replace('sam="vit_b"', 'sam="none"').replace('"DAVIS/', f'"{tmp_path}/')
    exec(compile(code, doc, "exec"), {})
    out = capsys.readouterr().out
    if doc == "README.md":  # one line per frame, in order
        assert [line.split()[0] for line in out.splitlines()] == [str(index) for index in range(24)]
    else:
        assert "24 frames tracked; 21 tracked backwards from frame 20" in out


def test_features_are_computed_ahead_in_a_worker_thread(tmp_path: Path) -> None:
    """The feature source runs in the feature thread, a batch or two ahead of the tracking
    loop; a slow source changes no result."""
    import threading
    import time

    track = Track(1, "stripes", [(20, 10 + 4 * t) for t in range(9)])
    folder = tmp_path / "clip"
    truth = synthetic_clip(folder, [track], seed=5)

    class Recording(CellStatistics):
        def __init__(self, delay: float) -> None:
            super().__init__()
            self.delay, self.threads, self.batches = delay, set(), 0

        def __call__(self, frames):
            self.threads.add(threading.current_thread().name)
            self.batches += 1
            time.sleep(self.delay)
            return super().__call__(frames)

    outputs = {}
    for delay in (0.0, 0.2):
        source = Recording(delay)
        session = Tracker(TrackSettings.from_options(sam="none", device="cpu", context=4, batch_size=2), features=source)
        state = session.init_state(folder)
        session.add_mask(state, 0, truth[0])
        stream = session.propagate(state)
        next(stream)  # frame 0 (its batch): the worker goes on with the next batches meanwhile
        time.sleep(1.0)
        assert source.batches >= 2
        outputs[delay] = dict(stream)
        assert source.threads == {"pdmtrack-features"}
    for frame_idx, labels in outputs[0.0].items():
        np.testing.assert_array_equal(outputs[0.2][frame_idx], labels)
