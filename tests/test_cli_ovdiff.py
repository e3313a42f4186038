"""OVDiff through the CLI with the tiny models: prototypes build, segment-ov, eval voc, bad inputs."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdmtrack.ovdiff.config import PrototypeConfig
from pdmtrack.ovdiff.store import MANIFEST
from pdmtrack.runs.record import OUTPUTS_LIST
from tests.cli_runner import assert_one_line_error, run_cli

FRAMES = ("00000.jpg", "00001.jpg")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pdmtrack.testing.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture()
def ov_run(tiny_sdxl: Path, tmp_path: Path) -> list[str]:
    """Flags for a quick OVDiff run: tiny model, one small support image per class, no SAM
    (``--batch-size`` left at its default, auto, as a user leaves it)."""
    return [
        "--model", str(tiny_sdxl), "--size", "64", "--inversion", "noise", "--sam", "none", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"), "--support", "1", "--support-size", "64", "--parts", "4",
    ]  # fmt: skip


def test_prototypes_build_then_stored(ov_run, tmp_path, capsys, monkeypatch) -> None:
    protos = tmp_path / "protos"
    args = ["prototypes", "build", "--classes", "dog,cat", "-o", protos, "--support-dir", tmp_path / "support", *ov_run]
    first = run_cli(args, capsys, monkeypatch)
    assert first.code == 0, first.err
    assert "dog: built" in first.out and "cat: built" in first.out and "images/s" in first.out
    assert (protos / MANIFEST).is_file() and len(list(protos.glob("*.safetensors"))) == 2
    assert (tmp_path / "support" / "dog" / "0000.png").is_file()
    second = run_cli(args[: -2 - len(ov_run)] + ov_run, capsys, monkeypatch)
    assert second.code == 0, second.err
    assert "dog: stored" in second.out and "cat: stored" in second.out and "built" not in second.out


@pytest.mark.parametrize(("classes", "fragment"), [("", "class list is empty"), (" , ", "class list is empty"), ("dog,cat,Dog", "twice")])
def test_bad_class_lists_are_one_line_errors(classes, fragment, ov_run, tmp_path, capsys, monkeypatch) -> None:
    result = run_cli(["prototypes", "build", "--classes", classes, "-o", tmp_path / "p", *ov_run], capsys, monkeypatch)
    assert_one_line_error(result, "--classes", fragment)


def test_prototype_folder_of_another_model_is_refused(ov_run, tmp_path, capsys, monkeypatch) -> None:
    protos = tmp_path / "protos"
    protos.mkdir()
    (protos / MANIFEST).write_text(json.dumps({"format": "pdmtrack-prototypes", "version": 1, "model": "hub:other@1"}))
    result = run_cli(["prototypes", "build", "--classes", "dog", "-o", protos, *ov_run], capsys, monkeypatch)
    assert_one_line_error(result, "-o", "hub:other@1", "another folder")  # prototypes build names its -o
    assert "--prototypes" not in result.err
    images = [tmp_path / "x.jpg"]
    Image.new("RGB", (8, 8)).save(images[0])
    result = run_cli(["segment-ov", *images, "--classes", "dog", "--prototypes", protos, *ov_run], capsys, monkeypatch)
    assert_one_line_error(result, "--prototypes", "hub:other@1")


def test_segment_ov_on_davis_frames(davis_mini, ov_run, tiny_clip, tmp_path, capsys, monkeypatch) -> None:
    images = [davis_mini / "JPEGImages" / "480p" / "blackswan" / name for name in FRAMES]
    out = tmp_path / "out"
    args = ["segment-ov", *images, "--classes", "swan,water,sky", "-o", out, "--prototypes", tmp_path / "protos"]
    args += ["--clip", tiny_clip, "--clip-min-classes", "2", *ov_run]
    result = run_cli(args, capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "2 image(s)" in result.out and "images/s" in result.out
    for name in FRAMES:
        stem = Path(name).stem
        with Image.open(out / f"{stem}.png") as png:
            assert png.mode == "P" and png.size == (854, 480)
            labels = np.asarray(png)
        assert labels.max() <= 3  # ids within background + the three classes
        with Image.open(out / f"{stem}_overlay.jpg") as overlay:
            assert overlay.size == (854, 480)
    legend = json.loads((out / "legend.json").read_text())
    assert [entry["class"] for entry in legend] == ["background", "swan", "water", "sky"]
    again = run_cli(args, capsys, monkeypatch)
    assert again.code == 0 and "none (all stored)" in again.out


def test_segment_ov_refuses_to_overwrite_its_input(ov_run, tmp_path, capsys, monkeypatch) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    result = run_cli(["segment-ov", image, "--classes", "dog", "-o", tmp_path, *ov_run], capsys, monkeypatch)
    assert_one_line_error(result, "outputs must not mix with inputs")  # a.png would be a's output too


def _fake_voc(davis_mini: Path, root: Path) -> Path:
    """A two-image VOC2012 tree: DAVIS frames with hand-made labels (background, dog, void)."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    ids = []
    for index, name in enumerate(FRAMES):
        image_id = f"2007_{index:06d}"
        ids.append(image_id)
        Image.open(davis_mini / "JPEGImages" / "480p" / "blackswan" / name).save(root / "JPEGImages" / f"{image_id}.jpg")
        labels = np.zeros((480, 854), np.uint8)
        labels[100:300, 200:500] = 12  # dog
        labels[98:102, 200:500] = 255  # void border
        label_image = Image.fromarray(labels, mode="P")
        label_image.putpalette([0] * 768)
        label_image.save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.mark.slow
def test_eval_voc_end_to_end(davis_mini, ov_run, tmp_path, capsys, monkeypatch) -> None:
    root = _fake_voc(davis_mini, tmp_path / "VOC2012")
    out = tmp_path / "eval"
    args = ["eval", "voc", "--root", root, "-o", out, "--prototypes", tmp_path / "protos", "--clip", "none"]
    result = run_cli([*args, "--save-predictions", *ov_run], capsys, monkeypatch)
    assert result.code == 0, result.err
    report = json.loads((out / "voc_report-val.json").read_text())
    assert report["images"] == 2 and len(report["IoU"]) == 21
    assert report["mIoU"] is None or 0.0 <= report["mIoU"] <= 1.0
    assert (out / "voc_global-val.csv").is_file() and (out / "predictions" / "2007_000001.png").is_file()
    missing = run_cli(["eval", "voc", "--root", tmp_path, "-o", out, *ov_run], capsys, monkeypatch)
    assert_one_line_error(missing, "--root", "val.txt")


@pytest.fixture(scope="module")
def three_frames(davis_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first three frames of blackswan as a frame folder."""
    folder = tmp_path_factory.mktemp("frames") / "blackswan"
    folder.mkdir()
    for path in sorted((davis_mini / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))[:3]:
        Image.open(path).save(folder / path.name)
    return folder


def test_propagate_init_ovdiff(three_frames, ov_run, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    args = ["propagate", three_frames, "--cls", "swan", "--init", "ovdiff", "-o", out, "--no-overlay"]
    result = run_cli([*args, "--prototypes", tmp_path / "protos", *ov_run], capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "--init ovdiff:" in result.err and "swan" in result.err
    with Image.open(out / "first_frame_mask.png") as first:
        objects = np.asarray(first)
    assert objects.shape == (480, 854) and objects.max() >= 1
    assert np.array_equal(np.asarray(Image.open(out / "00000.png")), objects)  # frame 0 is the OVDiff mask
    assert sorted(p.name for p in out.glob("0000[0-9].png")) == ["00000.png", "00001.png", "00002.png"]
    assert "3 frames" in result.out
    # the same objects through the API: an initialiser's mask for add_mask
    from pdmtrack import Tracker
    from pdmtrack.io.video import FrameReader
    from pdmtrack.ovdiff.first_frame import ovdiff_objects

    options = dict(zip(ov_run[0::2], ov_run[1::2]))
    tracker = Tracker(model=options["--model"], size=64, inversion="noise", sam="none", device="cpu", cache_dir=options["--cache-dir"])
    config = PrototypeConfig(num_support=1, support_size=64, parts=4)
    api_objects, classes = ovdiff_objects(
        tracker, FrameReader(three_frames).read(0), ["swan"], prototypes=config, prototypes_dir=tmp_path / "protos"
    )
    assert np.array_equal(api_objects, objects) and classes == ["swan"] * int(objects.max())


def test_propagate_init_flag_errors(three_frames, ov_run, davis_mini, tmp_path, capsys, monkeypatch) -> None:
    bad = run_cli(["propagate", three_frames, "--cls", "swan", "--init", "cutler", *ov_run], capsys, monkeypatch)
    assert_one_line_error(bad, "--init", "cutler")
    mask = davis_mini / "Annotations" / "480p" / "blackswan" / "00000.png"
    both = ["propagate", three_frames, "--mask", mask, "--init", "ovdiff", "-o", tmp_path / "o", *ov_run]
    assert_one_line_error(run_cli(both, capsys, monkeypatch), "--init", "not both")


def test_missing_clip_model_is_a_one_line_error(ov_run, tmp_path, capsys, monkeypatch) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    args = ["segment-ov", image, "--classes", "a,b,c,d", "-o", tmp_path / "o", "--clip", tmp_path / "no-clip", *ov_run]
    assert_one_line_error(run_cli(args, capsys, monkeypatch), "--clip", "--clip none")
    assert not (tmp_path / "o").exists()


def test_a_refused_run_leaves_no_default_output_folder(ov_run, tmp_path, capsys, monkeypatch) -> None:
    """``segment-ov`` with its default -o (./pdmtrack_ov), refused when a model fails to load."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    args = ["segment-ov", "a.png", "--classes", "dog", *ov_run, "--model", "no-model"]
    assert_one_line_error(run_cli(args, capsys, monkeypatch), "--model")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.png", "cache"]  # cache: --cache-dir


def test_propagate_init_ovdiff_without_objects_is_a_one_line_error(three_frames, ov_run, tmp_path, capsys, monkeypatch) -> None:
    import pdmtrack.ovdiff.first_frame as first_frame

    monkeypatch.setattr(first_frame, "split_instances", lambda labels, names, min_area: (np.zeros_like(labels), []))
    args = ["propagate", three_frames, "--cls", "swan", "--init", "ovdiff", "-o", tmp_path / "out", *ov_run]
    assert_one_line_error(run_cli(args, capsys, monkeypatch), "--init", "found no swan", "give a mask")


def test_ovdiff_offline_example_word_for_word(tiny_sdxl, tmp_path, capsys, monkeypatch) -> None:
    """docs/ovdiff.md's try-it-offline ``segment-ov`` line, with every default (--batch-size auto)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default prototype folder
    (tmp_path / "tiny-sdxl").symlink_to(tiny_sdxl, target_is_directory=True)
    Image.effect_mandelbrot((320, 240), (-2, -1.2, 1, 1.2), 60).convert("RGB").save("photo.jpg")
    line = "segment-ov photo.jpg --classes swan,water --model ./tiny-sdxl --size 64 --support 2 --support-size 64 --sam none --device cpu -o ov_out/"
    result = run_cli(line.split(), capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "prototypes built: swan, water" in result.out
    assert sorted(p.name for p in (tmp_path / "ov_out").iterdir()) == [OUTPUTS_LIST, "legend.json", "photo.png", "photo_overlay.jpg"]


def test_bad_support_prompt_is_a_one_line_error(tmp_path, capsys, monkeypatch) -> None:
    for prompt in ("a {bad} {cls}", "a {cls} and a {cls}", "a {cls", "{}"):
        args = ["prototypes", "build", "--classes", "dog", "--support-prompt", prompt, "--model", tmp_path / "no-model"]
        assert_one_line_error(run_cli(args, capsys, monkeypatch), "--support-prompt", prompt)


def test_prototypes_build_into_a_file_names_o(ov_run, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("mine")
    result = run_cli(["prototypes", "build", "--classes", "dog", "-o", "afile", *ov_run], capsys, monkeypatch)
    assert_one_line_error(result, "-o", "afile is a file")
    assert "--prototypes" not in result.err and Path("afile").read_text() == "mine"


@pytest.mark.parametrize(
    "args",
    [
        ["prototypes", "build", "--classes", ""],
        ["prototypes", "build", "--classes", ","],
        ["segment-ov", "IMAGE", "--classes", ""],
        ["segment-ov", "IMAGE", "--classes", ","],
        ["propagate", "FRAMES", "--cls", ""],
        ["propagate", "FRAMES", "--cls", "", "--init", "ovdiff"],
        ["propagate", "FRAMES", "--cls", "dog", "--cls", " "],
    ],
)
def test_empty_class_names_fail_before_any_model_loads(args, tmp_path, capsys, monkeypatch) -> None:
    """With the default --sam and a --model that does not exist, only the class name can be blamed."""
    image = _image(tmp_path / "a.png", (0, 0, 0))
    frames = tmp_path / "frames"
    for index in range(3):
        _image(frames / f"{index:05d}.jpg", (index, 0, 0))
    args = [{"IMAGE": image, "FRAMES": frames}.get(arg, arg) for arg in args]
    result = run_cli([*args, "-o", tmp_path / "out", "--model", tmp_path / "no-model"], capsys, monkeypatch)
    flag = "--cls" if args[0] == "propagate" else "--classes"
    assert_one_line_error(result, flag)
    assert "no-model" not in result.err and "--sam" not in result.err


def _image(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 32), colour).save(path)
    return path


def test_segment_ov_images_of_different_folders_with_one_name(ov_run, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    dog, goat = _image(Path("dog/00000.jpg"), (200, 30, 30)), _image(Path("goat/00000.jpg"), (30, 200, 30))
    plain = _image(Path("other/00001.jpg"), (30, 30, 200))
    args = ["segment-ov", dog, goat, plain, "--classes", "dog,goat", "-o", "out", "--prototypes", "protos", *ov_run]
    result = run_cli(args, capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "3 image(s)" in result.out
    assert sorted(p.name for p in Path("out").iterdir()) == [
        OUTPUTS_LIST, "00001.png", "00001_overlay.jpg", "dog_00000.png", "dog_00000_overlay.jpg", "goat_00000.png",
        "goat_00000_overlay.jpg", "legend.json",
    ]  # fmt: skip
    for stem in ("dog_00000", "goat_00000", "00001"):
        with Image.open(Path("out") / f"{stem}.png") as png:
            assert png.mode == "P" and png.size == (48, 32) and np.asarray(png).max() <= 2
    legend = json.loads(Path("out/legend.json").read_text())
    assert [entry["class"] for entry in legend] == ["background", "dog", "goat"]
    twice = run_cli(["segment-ov", dog, Path("dog/../dog/00000.jpg"), "--classes", "dog", *ov_run], capsys, monkeypatch)
    assert_one_line_error(twice, "given twice")


@pytest.fixture()
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder nothing can be written in (chmod 555; as root, which writes anyway, creating
    files or folders in it fails with EACCES as it would for a user)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:

        def refuse(call):
            def guarded(path, *args, **kwargs):
                if Path(os.fsdecode(path)).absolute().is_relative_to(folder):
                    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
                return call(path, *args, **kwargs)

            return guarded

        monkeypatch.setattr(os, "open", refuse(os.open))
        monkeypatch.setattr(os, "mkdir", refuse(os.mkdir))
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("where", ["in", "itself"])
def test_read_only_outputs_are_one_line_errors(where, read_only, ov_run, tmp_path, capsys, monkeypatch) -> None:
    out = read_only / "out" if where == "in" else read_only
    image = _image(tmp_path / "a.jpg", (10, 20, 30))
    built = run_cli(["prototypes", "build", "--classes", "dog", "-o", out, *ov_run], capsys, monkeypatch)
    assert_one_line_error(built, str(out), "cannot write", "-o")
    segmented = run_cli(["segment-ov", image, "--classes", "dog", "-o", out, *ov_run], capsys, monkeypatch)
    assert_one_line_error(segmented, str(out), "cannot write", "-o")
    stored = run_cli(["segment-ov", image, "--classes", "dog", "-o", tmp_path / "o", "--prototypes", out, *ov_run], capsys, monkeypatch)
    assert_one_line_error(stored, str(out), "cannot write", "--prototypes")
    support = run_cli(["prototypes", "build", "--classes", "dog", "-o", tmp_path / "p", "--support-dir", out, *ov_run], capsys, monkeypatch)
    assert_one_line_error(support, str(out), "cannot write", "--support-dir")
    assert list(read_only.iterdir()) == []


def test_segment_ov_into_a_used_folder_replaces_the_previous_run_whole(ov_run, tmp_path, capsys, monkeypatch) -> None:
    """A second run into one -o holds only its own masks (the first run's stayed beside them),
    and a folder holding a file no pdmtrack image run wrote is refused and kept."""
    monkeypatch.chdir(tmp_path)
    first, second = _image(Path("a/first.jpg"), (200, 30, 30)), _image(Path("b/second.jpg"), (30, 200, 30))
    run = ["--classes", "dog", "-o", "out", "--prototypes", "protos", *ov_run]
    assert run_cli(["segment-ov", first, *run], capsys, monkeypatch).code == 0
    again = run_cli(["segment-ov", second, *run], capsys, monkeypatch)
    assert again.code == 0, again.err
    assert sorted(p.name for p in Path("out").iterdir()) == [OUTPUTS_LIST, "legend.json", "second.png", "second_overlay.jpg"]
    Path("out/notes.txt").write_text("mine\n")
    refused = run_cli(["segment-ov", first, *run], capsys, monkeypatch)
    assert_one_line_error(refused, "notes.txt", "no pdmtrack run of this kind wrote")
    assert Path("out/notes.txt").read_text() == "mine\n" and Path("out/second.png").is_file()
