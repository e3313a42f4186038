"""``pdmtrack export`` and ``propagate --export``: every format read back by a reader that is
not its writer (pycocotools, the standard library's XML parser, a CVAT RLE decoder written
here from CVAT's format documentation, PIL) equals the run's palette PNGs; bad input is one
line and exit 2."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from tests.cli_runner import assert_one_line_error, run_cli

H, W = 48, 64
FRAMES = [f"{i:05d}" for i in range(8)]
CLASSES = ["dog", "cat", "dog", "person"]  # one per object, in id order
OBJECTS = [1, 2, 3, 7]
CLASS_IDS = {"dog": 1, "person": 2, "cat": 3}  # person: MOTS's pedestrian; the others in object order
EMPTY_FRAME = 4


def _labels(frame: int) -> np.ndarray:
    """Object 1 leaves after frame 2 and re-enters at 5; object 2 touches the borders; object 7
    is in two pieces; frame 4 is empty."""
    labels = np.zeros((H, W), np.uint8)
    if frame == EMPTY_FRAME:
        return labels
    if frame not in (3, 4):
        labels[10 + frame : 20 + frame, 20:30] = 1
    labels[0 : 8 + frame, 0:6] = 2  # the top-left corner
    labels[H - 3 :, W - 10 :] = 2  # the bottom-right corner
    labels[30:33, 40 + frame : 42 + frame] = 3
    if frame % 2 == 0:
        labels[25:27, 5:9] = 7
        labels[40:44, 20:21] = 7
    return labels


def _truth() -> dict[int, list[np.ndarray]]:
    """Object id -> its boolean mask per frame."""
    return {object_id: [_labels(frame) == object_id for frame in range(len(FRAMES))] for object_id in OBJECTS}


def _names(truth: dict[int, list[np.ndarray]]) -> list[str]:
    """The frame names of the frames ``truth`` covers."""
    return FRAMES[: len(next(iter(truth.values())))]


def _rle_mask(rle: dict) -> np.ndarray:
    counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts}).astype(bool)


@pytest.fixture()
def run_folder(tmp_path: Path) -> Path:
    """A finished output folder written with the project's own writers: PNG frames (the
    video), the palette PNGs and run.json."""
    from pdmtrack.io.writers import write_palette_png
    from pdmtrack.runs import record as run_record

    rng = np.random.default_rng(0)
    video = tmp_path / "clip"
    video.mkdir()
    for name in FRAMES:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(video / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    for frame, name in enumerate(FRAMES):
        write_palette_png(out / f"{name}.png", _labels(frame))
    record = run_record.describe(
        video=video, start=0, end=len(FRAMES), direction="forward", masks={0: _labels(0)}, classes=CLASSES,
        outputs={"png": True, "overlay": False, "rle": False}, files=[f"{name}.png" for name in FRAMES], settings=None,
        frame_names=FRAMES, size=(H, W), fps=24.0, objects=dict(zip(OBJECTS, CLASSES)),
    )  # fmt: skip
    run_record.write_started(out, record)
    run_record.write_finished(out, record, len(FRAMES), 0.5)
    return out


def _export(run_folder: Path, fmt: str, capsys, monkeypatch, *extra: object) -> Path:
    result = run_cli(["export", run_folder, "--format", fmt, *extra], capsys, monkeypatch)
    assert result.code == 0, result.err
    return Path(result.out.strip().rsplit(" in ", 1)[1])


# ---------------------------------------------------------------------- each format read back
def check_youtube_vis(path: Path, truth: dict[int, list[np.ndarray]], classes: dict[int, str]) -> None:
    data = json.loads(path.read_text())
    (video,) = data["videos"]
    assert (video["height"], video["width"], video["length"]) == (H, W, len(_names(truth)))
    names = {category["id"]: category["name"] for category in data["categories"]}
    assert sorted(annotation["id"] for annotation in data["annotations"]) == sorted(truth)
    for annotation in data["annotations"]:
        masks = truth[annotation["id"]]
        assert names[annotation["category_id"]] == classes[annotation["id"]]
        for frame, (rle, area, bbox) in enumerate(zip(annotation["segmentations"], annotation["areas"], annotation["bboxes"])):
            if not masks[frame].any():
                assert rle is None and area is None and bbox is None
                continue
            assert np.array_equal(_rle_mask(rle), masks[frame])
            assert area == masks[frame].sum()
            encoded = mask_utils.encode(np.asfortranarray(masks[frame].astype(np.uint8)))
            assert bbox == mask_utils.toBbox(encoded).tolist()


def check_coco(path: Path, truth: dict[int, list[np.ndarray]], classes: dict[int, str]) -> None:
    data = json.loads(path.read_text())
    frame_of = {image["id"]: image["frame_index"] for image in data["images"]}
    assert sorted(frame_of.values()) == list(range(len(_names(truth))))
    names = {category["id"]: category["name"] for category in data["categories"]}
    found = {}
    for annotation in data["annotations"]:
        object_id, frame = annotation["track_id"], frame_of[annotation["image_id"]]
        assert names[annotation["category_id"]] == classes[object_id]
        found[object_id, frame] = _rle_mask(annotation["segmentation"])
        assert annotation["area"] == found[object_id, frame].sum()
    expected = {(i, f): mask for i, masks in truth.items() for f, mask in enumerate(masks) if mask.any()}
    assert found.keys() == expected.keys()
    assert all(np.array_equal(found[key], expected[key]) for key in expected)


def check_mots_txt(path: Path, truth: dict[int, list[np.ndarray]], classes: dict[int, str]) -> None:
    found = {}
    for line in path.read_text().splitlines():
        frame, track, class_id, height, width, counts = line.split(" ")
        assert (int(height), int(width)) == (H, W)
        object_id = int(track) % 1000
        assert int(track) // 1000 == int(class_id) == CLASS_IDS[classes[object_id]]
        found[object_id, int(frame)] = _rle_mask({"size": [H, W], "counts": counts})
    expected = {(i, f): mask for i, masks in truth.items() for f, mask in enumerate(masks) if mask.any()}
    assert found.keys() == expected.keys()
    assert all(np.array_equal(found[key], expected[key]) for key in expected)


def check_mots_png(folder: Path, truth: dict[int, list[np.ndarray]], classes: dict[int, str]) -> None:
    assert sorted(path.name for path in folder.glob("*.png")) == [f"{frame:06d}.png" for frame in range(len(_names(truth)))]
    for frame in range(len(_names(truth))):
        ids = np.asarray(Image.open(folder / f"{frame:06d}.png")).astype(np.int64)
        expected = np.zeros((H, W), np.int64)
        for object_id, masks in truth.items():
            expected[masks[frame]] = CLASS_IDS[classes[object_id]] * 1000 + object_id
        assert np.array_equal(ids, expected)


def cvat_mask(shape: ET.Element, height: int, width: int) -> np.ndarray:
    """CVAT's mask RLE, as its XML format documents it: comma-separated run lengths over the
    box left/top/width/height, row by row, alternating background and object, background first."""
    left, top, box_width, box_height = (int(shape.get(key)) for key in ("left", "top", "width", "height"))
    flat = np.zeros(box_width * box_height, bool)
    position, value = 0, False
    for run in map(int, shape.get("rle").split(",")):
        flat[position : position + run] = value
        position, value = position + run, not value
    assert position == flat.size
    mask = np.zeros((height, width), bool)
    mask[top : top + box_height, left : left + box_width] = flat.reshape(box_height, box_width)
    return mask


def check_cvat_video(path: Path, truth: dict[int, list[np.ndarray]], classes: dict[int, str]) -> None:
    root = ET.parse(path).getroot()
    assert root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert (int(task.findtext("original_size/width")), int(task.findtext("original_size/height"))) == (W, H)
    assert int(task.findtext("size")) == len(_names(truth))
    tracks = root.findall("track")
    assert len(tracks) == len(truth)
    for track in tracks:
        shapes = {int(shape.get("frame")): shape for shape in track.findall("mask")}
        # the track's masks as CVAT shows them: a frame takes its last shape, unless outside
        matches = [object_id for object_id, masks in truth.items() if classes[object_id] == track.get("label")]
        shown = []
        for frame in range(len(_names(truth))):
            before = [f for f in shapes if f <= frame]
            shape = shapes[max(before)] if before else None
            shown.append(np.zeros((H, W), bool) if shape is None or shape.get("outside") == "1" else cvat_mask(shape, H, W))
        assert any(all(np.array_equal(a, b) for a, b in zip(shown, truth[i])) for i in matches)


def check_binary(folder: Path, truth: dict[int, list[np.ndarray]], classes: dict[int, str]) -> None:
    for object_id, masks in truth.items():
        for name, mask in zip(FRAMES, masks):
            assert np.array_equal(np.asarray(Image.open(folder / str(object_id) / f"{name}.png")), mask.astype(np.uint8) * 255)


CHECKS = {
    "youtube-vis": check_youtube_vis,
    "coco": check_coco,
    "mots-txt": check_mots_txt,
    "mots-png": check_mots_png,
    "cvat-video": check_cvat_video,
    "binary": check_binary,
}


@pytest.mark.parametrize("fmt", list(CHECKS))
def test_export_reads_back_as_the_masks(fmt: str, run_folder: Path, capsys, monkeypatch) -> None:
    target = _export(run_folder, fmt, capsys, monkeypatch)
    assert target.parent == run_folder / "exports"
    CHECKS[fmt](target, _truth(), dict(zip(OBJECTS, CLASSES)))


def test_cvat_marks_the_frame_an_object_leaves_as_outside(run_folder: Path, capsys, monkeypatch) -> None:
    root = ET.parse(_export(run_folder, "cvat-video", capsys, monkeypatch)).getroot()
    first = root.findall("track")[0]  # object 1: frames 0-2, gone 3-4, back 5-7
    outside = [(int(shape.get("frame")), shape.get("outside")) for shape in first.findall("mask")]
    assert outside == [(0, "0"), (1, "0"), (2, "0"), (3, "1"), (5, "0"), (6, "0"), (7, "0")]


def test_cutout_is_the_frame_over_transparency(run_folder: Path, capsys, monkeypatch) -> None:
    import av

    target = _export(run_folder, "cutout", capsys, monkeypatch, "--matte")
    for object_id, masks in _truth().items():
        for name, mask in zip(FRAMES, masks):
            frame = np.asarray(Image.open(run_folder.parent / "clip" / f"{name}.png"))
            rgba = np.asarray(Image.open(target / str(object_id) / f"{name}.png"))
            assert np.array_equal(rgba[..., 3], mask.astype(np.uint8) * 255)
            assert np.array_equal(rgba[..., :3][mask], frame[mask]) and not rgba[..., :3][~mask].any()
        with av.open(str(target / f"{object_id}.mp4")) as container:
            greys = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
        assert len(greys) == len(FRAMES)
        for grey, mask in zip(greys, masks):  # lossy H.264: most pixels on the right side of grey
            assert ((grey[:H, :W] > 127) == mask).mean() > 0.97


def test_memory_is_flat_in_the_video_length(tmp_path: Path) -> None:
    """The memory every writer holds after its last frame (before it completes the file) for
    600 frames stays within that for 60 plus a margin. Allocations of pathlib are left out:
    it interns each new file name, and a resize of the interpreter's table of interned
    strings (megabytes, once its size crosses a threshold, so when depends on the modules
    the process imported) is not the writer's."""
    import pathlib
    import tracemalloc

    from pdmtrack.io.exports import FORMATS, ExportInfo, open_export

    labels = _labels(0)
    held = {}
    for fmt in [f for f in FORMATS if f != "cutout"]:
        for frames in (60, 600):
            info = ExportInfo("clip", [f"{i:05d}" for i in range(frames)], H, W, 24.0, dict(zip(OBJECTS, CLASSES)))
            tracemalloc.start()
            with open_export(fmt, tmp_path / f"{fmt}-{frames}", info) as writer:
                for position in range(frames):
                    writer.write(position, labels)
                snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, pathlib.__file__)])
            tracemalloc.stop()
            held[fmt, frames] = sum(stat.size for stat in snapshot.statistics("filename"))
    grown = {fmt: (held[fmt, 60], held[fmt, 600]) for fmt, _ in held if held[fmt, 600] > held[fmt, 60] + 200_000}
    assert not grown, grown


# ---------------------------------------------------------------------- the command line
def test_defaults_overwrite_and_targets(run_folder: Path, capsys, monkeypatch) -> None:
    target = _export(run_folder, "coco", capsys, monkeypatch)
    assert target == run_folder / "exports" / "coco.json"
    result = run_cli(["export", run_folder, "--format", "coco"], capsys, monkeypatch)
    assert_one_line_error(result, "coco.json", "--overwrite")
    target.write_text("not this")
    _export(run_folder, "coco", capsys, monkeypatch, "--overwrite")
    check_coco(target, _truth(), dict(zip(OBJECTS, CLASSES)))
    chosen = _export(run_folder, "mots-txt", capsys, monkeypatch, "-o", run_folder.parent / "elsewhere" / "seq.txt")
    assert chosen == run_folder.parent / "elsewhere" / "seq.txt" and chosen.is_file()


def test_overwrite_replaces_only_an_export_folder(run_folder: Path, capsys, monkeypatch) -> None:
    binary = _export(run_folder, "binary", capsys, monkeypatch)
    (binary / "1" / f"{FRAMES[0]}.png").unlink()
    _export(run_folder, "binary", capsys, monkeypatch, "--overwrite")
    check_binary(binary, _truth(), {})
    mine = run_folder.parent / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    result = run_cli(["export", run_folder, "--format", "binary", "-o", mine, "--overwrite"], capsys, monkeypatch)
    assert_one_line_error(result, "mine", "did not export")
    assert (mine / "keep.txt").read_text() == "mine"
    result = run_cli(["export", run_folder, "--format", "coco", "-o", run_folder / "run.json", "--overwrite"], capsys, monkeypatch)
    assert_one_line_error(result, "run.json", "the run's own")


def _edit_record(run_folder: Path, **changes: object) -> None:
    path = run_folder / "run.json"
    record = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("breakage", "fragments"),
    [
        ("no record", ("run.json", "missing")),
        ("no frame", (f"{FRAMES[3]}.png", "missing", "1 of the 8")),
        ("unfinished", ("run.json", "did not finish")),
        ("old record", ("run.json", "lacks frame_names, objects")),
        ("no pngs", ("--no-png",)),
        ("bad png", (f"{FRAMES[5]}.png", "cannot read")),
    ],
)
def test_bad_folder_is_one_line_and_writes_nothing(
    breakage: str, fragments: tuple[str, ...], run_folder: Path, capsys, monkeypatch
) -> None:
    if breakage == "no record":
        (run_folder / "run.json").unlink()
    elif breakage == "no frame":
        (run_folder / f"{FRAMES[3]}.png").unlink()
    elif breakage == "unfinished":
        _edit_record(run_folder, finished=None)
    elif breakage == "old record":
        _edit_record(run_folder, frame_names=None, objects=None)
    elif breakage == "no pngs":
        _edit_record(run_folder, outputs={"png": False, "overlay": False, "rle": True})
    else:
        (run_folder / f"{FRAMES[5]}.png").write_bytes(b"not a png")
    result = run_cli(["export", run_folder, "--format", "youtube-vis"], capsys, monkeypatch)
    assert_one_line_error(result, *fragments)
    exports = run_folder / "exports"
    assert not exports.exists() or not any(exports.iterdir())  # no target, no temporary


@pytest.mark.parametrize(
    ("args", "fragments"),
    [(["--format", "pascal"], ("--format", "pascal", "youtube-vis")), (["--format", "coco", "--matte"], ("--matte",))],
)
def test_bad_options_are_one_line(args: list[str], fragments: tuple[str, ...], run_folder: Path, capsys, monkeypatch) -> None:
    assert_one_line_error(run_cli(["export", run_folder, *args], capsys, monkeypatch), *fragments)


def test_full_disk_is_one_line_and_leaves_nothing(run_folder: Path, capsys, monkeypatch) -> None:
    """ENOSPC at a folder export's fifth PNG: one line naming the folder, no target and no
    temporary folder left (file exports go through atomic_path, as tests/test_hardening.py checks)."""
    import errno

    real_save = Image.Image.save
    saved = {"count": 0}

    def save(image: Image.Image, *args: object, **kwargs: object) -> None:
        saved["count"] += 1
        if saved["count"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(image, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    result = run_cli(["export", run_folder, "--format", "binary"], capsys, monkeypatch)
    assert_one_line_error(result, str(run_folder / "exports"), "no space left")
    assert not (run_folder / "exports").exists()  # the folder the export made for its target went too


def test_cutout_without_the_video_is_one_line(run_folder: Path, capsys, monkeypatch) -> None:
    import shutil

    shutil.rmtree(run_folder.parent / "clip")
    result = run_cli(["export", run_folder, "--format", "cutout"], capsys, monkeypatch)
    assert_one_line_error(result, "clip", "video is not there")
    assert not (run_folder / "exports" / "cutout").exists()


def test_library_export_takes_str_paths(run_folder: Path) -> None:
    import pdmtrack

    written = pdmtrack.export(str(run_folder), "mots-png", str(run_folder.parent / "mots"))
    check_mots_png(written, _truth(), dict(zip(OBJECTS, CLASSES)))


# ---------------------------------------------------------------------- propagate --export
@pytest.mark.slow
def test_propagate_exports_while_tracking(tmp_path: Path, tiny_sdxl: Path, capsys, monkeypatch) -> None:
    """The exports propagate writes as it tracks read back as its PNGs, and equal what
    ``pdmtrack export`` makes of the finished folder."""
    from pdmtrack.io.writers import write_palette_png

    rng = np.random.default_rng(1)
    video = tmp_path / "frames"
    video.mkdir()
    for name in FRAMES[:5]:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(video / f"{name}.png")
    first = _labels(0)
    write_palette_png(tmp_path / "first.png", first)
    out = tmp_path / "out"
    base = ["--model", tiny_sdxl, "--sam", "none", "--size", "64", "--cache-dir", tmp_path / "cache", "--no-overlay"]
    exports = [word for fmt in ("coco", "cvat-video", "mots-png") for word in ("--export", fmt)]
    result = run_cli(["propagate", video, "--mask", tmp_path / "first.png", "-o", out, *base, *exports], capsys, monkeypatch)
    assert result.code == 0, result.err
    pngs = [np.asarray(Image.open(out / f"{name}.png")) for name in FRAMES[:5]]
    truth = {object_id: [labels == object_id for labels in pngs] for object_id in OBJECTS}
    classes = dict.fromkeys(OBJECTS, "object")
    check_coco(out / "exports" / "coco.json", truth, classes)
    check_mots_png(out / "exports" / "mots-png", truth, {i: "dog" for i in OBJECTS})  # class id 1, as "dog"'s
    check_cvat_video(out / "exports" / "cvat-video.xml", truth, classes)
    again = _export(out, "coco", capsys, monkeypatch, "-o", tmp_path / "again.json")
    streamed, finished = (json.loads(path.read_text()) for path in (out / "exports" / "coco.json", again))
    assert streamed["annotations"] == finished["annotations"] and streamed["images"] == finished["images"]


def test_class_ids_keep_mots_classes_and_never_take_its_ignore_id() -> None:
    """MOTS reads class id 10 as an ignore region: the tenth class name gets 11; car and
    pedestrian keep MOTS's ids 1 and 2 whatever objects carry them."""
    from pdmtrack.io.exports import ExportInfo

    info = ExportInfo("clip", ["00000"], H, W, 24.0, {object_id: f"class {object_id}" for object_id in range(1, 12)})
    assert [info.class_id(object_id) for object_id in range(1, 12)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
    info = ExportInfo("clip", ["00000"], H, W, 24.0, {1: "dog", 2: "Pedestrian", 3: "car", 4: "person"})
    assert [info.class_id(object_id) for object_id in range(1, 5)] == [3, 2, 1, 4]
