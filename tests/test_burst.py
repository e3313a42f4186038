"""build_permirs on a synthetic BURST tree the test writes (frames + real pycocotools RLE).

Every track is a solid box of its own palette colour on a black frame; box sizes per frame
are chosen by hand so the expected track and frames follow from the selection rule
directly (see the comments at each video).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from pdmtrack.burst import (
    DROPPED_SOURCE,
    DUPLICATE,
    FRAMES_MISSING,
    MALFORMED,
    NO_SHARED_CATEGORY,
    PERMIS_VIDEO_DIR,
    TOO_FEW_FRAMES,
    UNSAFE_NAME,
    build_permirs,
    choose_frames,
    choose_track,
)
from pdmtrack.errors import InputError
from pdmtrack.eval.davis_dataset import DavisDataset
from pdmtrack.io.masks import decode_rle

HEIGHT, WIDTH = 64, 96
CATEGORIES = {1: "dog", 2: "cat", 3: "car", 4: "person"}
# Palette colours; each (kept video, track) has its own so colour identifies the instance.
COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "orange": (255, 128, 0),
}


@dataclass
class TrackSpec:
    track_id: int
    category: int
    colour: str
    origin: tuple[int, int]  # (x, y) of the box's top-left corner
    frames: range  # annotated frames where the track is present
    size: tuple[int, int] = (8, 8)  # (w, h) of the box on most frames
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # per-frame exceptions

    def box(self, frame: int) -> np.ndarray:
        mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
        if frame in self.frames:
            w, h = self.sizes.get(frame, self.size)
            x, y = self.origin
            mask[y : y + h, x : x + w] = True
        return mask


@dataclass
class VideoSpec:
    split: str
    seq_id: int
    dataset: str
    seq_name: str
    num_frames: int
    tracks: list[TrackSpec]
    ext: str = ".jpg"
    write_frames: bool = True
    corrupt_rle: bool = False

    @property
    def name(self) -> str:
        return f"{self.split}_{self.seq_id:06d}_{self.dataset}_{self.seq_name}"

    def frame_file(self, index: int) -> str:
        return f"frame{index:04d}{self.ext}"

    def image(self, index: int) -> np.ndarray:
        image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        for track in self.tracks:
            image[track.box(index)] = COLOURS[track.colour]
        return image

    def present(self, index: int) -> list[int]:
        return [t.track_id for t in self.tracks if index in t.frames]


def _dogs_three_tracks(split: str, seq_id: int, dataset: str, seq_name: str, **kw) -> VideoSpec:
    # Video A. Dogs 1 (frames 0-9), 2 (0-39), 3 (20-39); cat 4 alone. Track 2 shares 30
    # frames with another dog (0-9 and 20-39), track 1 only 10, track 3 20 -> track 2,
    # although it is not the lowest id. Its multi-instance areas: frame 25 768 (largest),
    # 20 512 (only 5 away), 8 384 (17 away), 2 and 9 256 each (tie: 2 first), the rest 64
    # or less. Frame 12 has the largest box of all but no other dog -> ignored.
    # Expected frames: (25, 8, 2).
    return VideoSpec(
        split,
        seq_id,
        dataset,
        seq_name,
        40,
        [
            TrackSpec(1, 1, "red", (0, 0), range(0, 10)),
            TrackSpec(
                2,
                1,
                "green",
                (24, 8),
                range(0, 40),
                sizes={25: (32, 24), 20: (32, 16), 12: (40, 40), 8: (24, 16), 2: (16, 16), 9: (16, 16), 39: (8, 24)},
            ),
            TrackSpec(3, 1, "blue", (72, 0), range(20, 40), size=(16, 16)),
            TrackSpec(4, 2, "yellow", (0, 48), range(0, 40), size=(16, 16)),
        ],
        **kw,
    )


def synthetic_videos() -> list[VideoSpec]:
    """The synthetic BURST sequences: three qualify, one per drop reason."""
    return [
        _dogs_three_tracks("train", 1, "YFCC100M", "good_one"),
        # B: a dog and a cat, no category with two tracks.
        VideoSpec(
            "train", 2, "BDD", "one_per_cat", 20, [TrackSpec(1, 1, "red", (0, 0), range(20)), TrackSpec(2, 2, "blue", (40, 0), range(20))]
        ),
        # C: two dogs on 10 frames: nothing can lie more than 15 frames from the largest.
        VideoSpec("train", 4, "BDD", "short", 10, [TrackSpec(1, 1, "red", (0, 0), range(10)), TrackSpec(2, 1, "blue", (40, 0), range(10))]),
        _dogs_three_tracks("train", 5, "HACS", "dropped"),  # D: a dropped source
        _dogs_three_tracks("train", 6, "YFCC100M", "no_frames", write_frames=False),  # E
        _dogs_three_tracks("train", 8, "YFCC100M", "bad_rle", corrupt_rle=True),  # F
        _dogs_three_tracks("train", 9, "YFCC100M", "../escape"),  # G: escapes the frames folder
        # H: cars 1 and 2 on all 20 frames: equal counts -> the lower id (1), although track 2
        # is bigger. Track 1: frame 0 576 (largest), 15 512 (exactly 15 away: too close),
        # 16, 17, 18 384 each (tie: 16, 17 first), the rest 64. Expected (0, 16, 17).
        VideoSpec(
            "val",
            7,
            "ArgoVerse",
            "png_video",
            20,
            [
                TrackSpec(1, 3, "magenta", (0, 0), range(20), sizes={0: (24, 24), 15: (32, 16), 16: (16, 24), 17: (24, 16), 18: (16, 24)}),
                TrackSpec(2, 3, "cyan", (48, 24), range(20), size=(32, 32)),
            ],
            ext=".png",
        ),
        # I: persons 1 (0-19) and 2 (2-19) share frames 2-19: tie -> track 1. Track 1 there:
        # 19 576, 3 256, 2 128, the rest 64; frame 0 is bigger but track 2 is absent.
        # Expected (19, 3, 2).
        VideoSpec(
            "test",
            3,
            "Charades",
            "third",
            20,
            [
                TrackSpec(1, 4, "white", (0, 0), range(20), sizes={19: (24, 24), 3: (16, 16), 2: (8, 16), 0: (32, 32)}),
                TrackSpec(2, 4, "orange", (56, 24), range(2, 20), size=(16, 16)),
            ],
        ),
    ]


EXPECTED = {  # kept video -> (track id, chosen annotated frames, query first)
    "train_000001_YFCC100M_good_one": (2, (25, 8, 2)),
    "val_000007_ArgoVerse_png_video": (1, (0, 16, 17)),
    "test_000003_Charades_third": (1, (19, 3, 2)),
}


def _rle_string(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def _sequence_json(video: VideoSpec) -> dict:
    files = [video.frame_file(i) for i in range(video.num_frames)]
    segmentations = []
    for index in range(video.num_frames):
        frame = {}
        for track in video.tracks:
            if index in track.frames:
                frame[str(track.track_id)] = {"rle": _rle_string(track.box(index)), "is_gt": True, "score": 1.0}
        segmentations.append(frame)
    if video.corrupt_rle:
        segmentations[3]["2"]["rle"] = "not an RLE \x7f"
    return {
        "id": video.seq_id,
        "dataset": video.dataset,
        "seq_name": video.seq_name,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": 6,
        "all_image_paths": files,
        "annotated_image_paths": files,
        "track_category_ids": {str(t.track_id): t.category for t in video.tracks},
        "neg_category_ids": [],
        "not_exhaustive_category_ids": [],
        "segmentations": segmentations,
    }


def write_synthetic_burst(root: Path, videos: list[VideoSpec] | None = None) -> Path:
    """Write annotations/<split>/all_classes.json and frames/<split>/<dataset>/<seq>/ under root."""
    videos = synthetic_videos() if videos is None else videos
    categories = [{"id": cid, "name": name, "synset": name} for cid, name in CATEGORIES.items()]
    for split in ("train", "val", "test"):
        sequences = [_sequence_json(v) for v in videos if v.split == split]
        path = root / "annotations" / split / "all_classes.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sequences": sequences, "categories": categories, "split": split}))
    for video in videos:
        if not video.write_frames:
            continue
        folder = (root / "frames" / video.split / video.dataset / video.seq_name).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(video.num_frames):
            image = Image.fromarray(video.image(index))
            if video.ext == ".jpg":
                image.save(folder / video.frame_file(index), quality=95)
            else:
                image.save(folder / video.frame_file(index))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_burst(tmp_path_factory.mktemp("burst") / "BURST")


@pytest.fixture(scope="module")
def built(burst: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("built") / "PerMIRS"
    return out, build_permirs(burst, out)


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# --------------------------------------------------------------------------- rule
def test_choose_track_counts_shared_frames_and_breaks_ties_by_lower_id() -> None:
    present = [{1: 5, 2: 5}, {2: 5, 3: 5}, {2: 5, 3: 5}, {3: 5, 4: 5}, {1: 5, 3: 5}]
    categories = {1: 7, 2: 7, 3: 7, 4: 8}
    assert choose_track(present, categories) == (2, [0, 1, 2])  # 3 also has 3 but 2 < 3
    assert choose_track(present, {1: 7, 2: 8, 3: 9, 4: 10}) is None


def test_choose_frames_needs_more_than_the_gap() -> None:
    areas = {0: 100, 15: 99, 16: 50, 30: 50, 31: 60}
    assert choose_frames(areas) == (0, 31, 16)  # 15 is exactly 15 away; 16 before 30 (equal area)
    assert choose_frames({0: 100, 15: 90, 16: 80}) is None


# --------------------------------------------------------------------------- builder
def test_kept_set_track_and_frames(built) -> None:
    out, summary = built
    manifest = _manifest(out)
    chosen = {v["video"]: (v["track_id"], tuple(f["annotated_index"] for f in v["frames"])) for v in manifest["videos"]}
    assert chosen == EXPECTED
    assert summary.kept == 3
    assert summary.dropped == {
        DUPLICATE: 0,
        UNSAFE_NAME: 1,
        DROPPED_SOURCE: 1,
        NO_SHARED_CATEGORY: 1,
        MALFORMED: 1,
        TOO_FEW_FRAMES: 1,
        FRAMES_MISSING: 1,
    }
    assert summary.class_histogram == {"dog": 1, "car": 1, "person": 1}
    specs = {v.name: v for v in synthetic_videos()}
    instances = [len(specs[name].present(i)) for name, (_, frames) in EXPECTED.items() for i in frames]
    assert summary.mean_instances_per_frame == pytest.approx(np.mean(instances))
    text = summary.format()
    assert "kept 3 videos, 3 classes" in text and f"1  {MALFORMED}" in text
    record = next(v for v in manifest["videos"] if v["video"] == "train_000001_YFCC100M_good_one")
    assert (record["dataset"], record["seq_name"], record["category"], record["split"]) == ("YFCC100M", "good_one", "dog", "train")
    assert [f["role"] for f in record["frames"]] == ["query", "gallery", "gallery"]


def test_frames_copied_and_masks_round_trip(built, burst: Path) -> None:
    out, _ = built
    specs = {v.name: v for v in synthetic_videos()}
    for name, (track_id, frames) in EXPECTED.items():
        spec = specs[name]
        masks = json.loads((out / "videos" / name / "masks.json").read_text())
        assert masks["track_id"] == track_id
        assert [f["annotated_index"] for f in masks["frames"]] == list(frames)
        for frame in masks["frames"]:
            index = frame["annotated_index"]
            source = burst / "frames" / spec.split / spec.dataset / spec.seq_name / spec.frame_file(index)
            assert (out / frame["frame"]).read_bytes() == source.read_bytes()
            assert sorted(int(t) for t in frame["objects"]) == spec.present(index)
            for tid, obj in frame["objects"].items():
                track = next(t for t in spec.tracks if t.track_id == int(tid))
                np.testing.assert_array_equal(decode_rle(obj["rle"]), track.box(index))
                assert obj["category"] == CATEGORIES[track.category]
            assert frame["mask_area"] == int(next(t for t in spec.tracks if t.track_id == track_id).box(index).sum())


def test_split_lists(built) -> None:
    out, _ = built
    permir = json.loads((out / "permir.json").read_text())
    assert [q["video"] for q in permir["queries"]] == sorted(EXPECTED)
    assert len(permir["gallery"]) == 2 * len(EXPECTED)
    query_frames = {q["frame"] for q in permir["queries"]}
    assert not query_frames & {g["frame"] for g in permir["gallery"]}
    pairs = json.loads((out / "permis_image.json").read_text())["pairs"]
    assert len(pairs) == 2 * len(EXPECTED)
    assert all(p["reference"] in query_frames and p["target"] != p["reference"] for p in pairs)


def test_permis_video_is_a_davis_tree(built) -> None:
    out, _ = built
    dataset = DavisDataset(out / PERMIS_VIDEO_DIR, "val")
    assert sorted(dataset.sequences) == sorted(EXPECTED)
    specs = {v.name: v for v in synthetic_videos()}
    for name, (track_id, _) in EXPECTED.items():
        spec = specs[name]
        track = next(t for t in spec.tracks if t.track_id == track_id)
        start = track.frames.start  # the video starts where the track first appears
        labels = dataset.load_annotations(name)
        assert len(labels) == spec.num_frames - start
        expected = np.stack([track.box(i) for i in range(start, spec.num_frames)]).astype(np.uint8)
        np.testing.assert_array_equal(labels, expected)
    classes = json.loads((out / PERMIS_VIDEO_DIR / "classes.json").read_text())
    assert classes == {
        "train_000001_YFCC100M_good_one": "dog",
        "val_000007_ArgoVerse_png_video": "car",
        "test_000003_Charades_third": "person",
    }


def test_rerun_is_byte_identical_and_needs_overwrite(built, burst: Path, tmp_path: Path) -> None:
    out, _ = built
    before = tree_digest(out)
    burst_before = tree_digest(burst)
    with pytest.raises(InputError, match="--overwrite"):
        build_permirs(burst, out)
    assert tree_digest(out) == before
    second = tmp_path / "again"
    build_permirs(burst, second)
    assert tree_digest(second) == before
    (second / "stale.txt").write_text("left from an older build")
    build_permirs(burst, second, overwrite=True)
    assert tree_digest(second) == before  # replaced cleanly: the stale file is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no staging folders left
    assert tree_digest(burst) == burst_before  # inputs untouched


def test_nothing_written_outside_the_output(tmp_path: Path) -> None:
    burst = write_synthetic_burst(tmp_path / "BURST")
    burst_before = tree_digest(burst)
    out_parent = tmp_path / "outputs"
    build_permirs(burst, out_parent / "PerMIRS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BURST", "outputs"]
    assert [p.name for p in out_parent.iterdir()] == ["PerMIRS"]
    assert tree_digest(burst) == burst_before
    assert not any("escape" in path for path in tree_digest(out_parent / "PerMIRS"))


def test_drop_sources_and_splits(burst: Path, tmp_path: Path) -> None:
    summary = build_permirs(burst, tmp_path / "all", drop_sources=[], splits=["train"])
    names = [v["video"] for v in _manifest(tmp_path / "all")["videos"]]
    assert names == ["train_000001_YFCC100M_good_one", "train_000005_HACS_dropped"]
    assert summary.dropped[DROPPED_SOURCE] == 0


def test_missing_annotation_file_is_an_input_error(burst: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="annotation file not found"):
        build_permirs(burst, tmp_path / "out", splits=["train", "nosuchsplit"])
    with pytest.raises(InputError, match="annotation file not found"):
        build_permirs(burst, tmp_path / "out", annotations=[tmp_path / "missing.json"])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        build_permirs(burst, tmp_path / "out", annotations=[broken])
    assert not (tmp_path / "out").exists()


def test_given_annotation_file(burst: Path, tmp_path: Path) -> None:
    build_permirs(burst, tmp_path / "val-only", annotations=[burst / "annotations" / "val" / "all_classes.json"])
    manifest = _manifest(tmp_path / "val-only")
    assert [v["video"] for v in manifest["videos"]] == ["val_000007_ArgoVerse_png_video"]
    source = manifest["annotation_files"][0]
    assert source["path"] == "annotations/val/all_classes.json"
    digest = hashlib.sha256((burst / "annotations" / "val" / "all_classes.json").read_bytes()).hexdigest()
    assert source["sha256"] == digest
