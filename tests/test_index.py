"""Gallery index: global descriptors (tiny DINOv2, GeM and CLS) in FAISS with a manifest;
build, add, search, and the index reloaded from disk answering the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from colour_source import box_image
from PIL import Image

from pdmtrack.config import GlobalConfig
from pdmtrack.errors import InputError
from pdmtrack.io.images import read_rgb
from pdmtrack.personal.global_descriptor import GlobalDescriptor
from pdmtrack.personal.index import GalleryIndex, add_to_index, build_index, file_sha256

BOXES = ["red", "green", "blue", "red", "blue"]


def write_images(folder: Path, count: int, offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(offset, offset + count):
        colour = BOXES[index % len(BOXES)]
        image = box_image(48, 64, [(colour, 4 * index % 24, 8, 4 * index % 24 + 20, 40)])
        paths.append(folder / f"img_{index:02d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.mark.parametrize("pooling", ["gem", "cls"])
def test_descriptors_are_unit_vectors(tiny_dinov2: Path, pooling: str, tmp_path: Path) -> None:
    descriptor = GlobalDescriptor(GlobalConfig(model=str(tiny_dinov2), pooling=pooling, size=56), device="cpu")
    image = read_rgb(write_images(tmp_path, 1)[0])
    vector = descriptor(image)
    assert vector.shape == (32,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert descriptor.record["pooling"] == pooling and descriptor.record["fingerprint"].startswith("local:")


def test_build_add_search_and_reload(tiny_dinov2: Path, tmp_path: Path) -> None:
    config = GlobalConfig(model=str(tiny_dinov2), size=56)
    first = write_images(tmp_path / "gallery", 4)
    summary = build_index([tmp_path / "gallery"], tmp_path / "index", config, device="cpu", kind="flat")
    assert (summary.added, summary.skipped, summary.total) == (4, 0, 4)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["descriptor"]["model"] == str(tiny_dinov2) and manifest["dim"] == 32
    assert [item["path"] for item in manifest["images"]] == [str(p.resolve()) for p in first]
    assert manifest["images"][0]["sha256"] == file_sha256(first[0])

    more = write_images(tmp_path / "more", 2, offset=4)
    shutil.copy(first[0], tmp_path / "more" / "copy_of_first.png")  # same content: skipped
    added = add_to_index(tmp_path / "index", [tmp_path / "more"], device="cpu")
    assert (added.added, added.skipped, added.total) == (2, 1, 6)

    index = GalleryIndex.load(tmp_path / "index")
    assert index.paths[4:] == [str(p.resolve()) for p in more]
    descriptor = GlobalDescriptor(config, device="cpu")
    query = descriptor(read_rgb(more[1]))
    scores, rows = index.search(query, 10)
    assert rows.shape == (1, 6) and rows[0, 0] == 5 and scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    expected = np.argsort(-np.stack([descriptor(read_rgb(Path(p))) for p in index.paths]) @ query, kind="stable")
    assert list(rows[0]) == list(expected)
    again_scores, again_rows = GalleryIndex.load(tmp_path / "index").search(query, 10)
    assert list(again_rows[0]) == list(rows[0]) and np.allclose(again_scores, scores)


def test_index_errors(tiny_dinov2: Path, tmp_path: Path) -> None:
    config = GlobalConfig(model=str(tiny_dinov2), size=56)
    write_images(tmp_path / "gallery", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        build_index([tmp_path / "empty"], tmp_path / "index", config, device="cpu")
    build_index([tmp_path / "gallery"], tmp_path / "index", config, device="cpu")
    with pytest.raises(InputError, match="already holds an index"):
        build_index([tmp_path / "gallery"], tmp_path / "index", config, device="cpu")
    with pytest.raises(InputError, match="manifest.json: not found"):
        GalleryIndex.load(tmp_path / "gallery")
    manifest = tmp_path / "index" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["images"] = record["images"][:1]
    manifest.write_text(json.dumps(record))
    with pytest.raises(InputError, match="holds 2 vectors"):
        GalleryIndex.load(tmp_path / "index")
    with pytest.raises(InputError, match="^pooling: "):
        GlobalConfig(pooling="max")  # type: ignore[arg-type]


def test_flat_and_hnsw_indexes_agree_on_a_small_gallery(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    results = {}
    for kind in ("hnsw", "flat"):
        index = GalleryIndex.empty({"model": "m"}, 16, kind)
        index.add(vectors, [f"p{i}" for i in range(300)], [f"h{i}" for i in range(300)])
        index.save(tmp_path / kind)
        loaded = GalleryIndex.load(tmp_path / kind)
        assert loaded.kind == kind and json.loads((tmp_path / kind / "manifest.json").read_text())["kind"] == kind
        results[kind] = loaded.search(vectors[7], 10)[1][0]
    assert results["flat"][0] == 7 and list(results["hnsw"]) == list(results["flat"])
    with pytest.raises(InputError, match="^kind: "):
        GalleryIndex.empty({"model": "m"}, 16, "ivf")


def test_a_killed_add_leaves_the_previous_index_whole(tiny_dinov2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed between writing the index and writing its manifest: the folder still
    loads as the index it was (it used to hold the new index beside the old manifest, which
    load refuses: the index was lost), and the next add completes."""
    import pdmtrack.personal.index as index_module

    config = GlobalConfig(model=str(tiny_dinov2), size=56)
    write_images(tmp_path / "gallery", 3)
    build_index([tmp_path / "gallery"], tmp_path / "index", config, device="cpu", kind="flat")
    before = GalleryIndex.load(tmp_path / "index").paths
    write_images(tmp_path / "more", 2, offset=3)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process stops before the manifest is written

    monkeypatch.setattr(index_module, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(tmp_path / "index", [tmp_path / "more"], device="cpu")
    monkeypatch.undo()
    assert GalleryIndex.load(tmp_path / "index").paths == before
    added = add_to_index(tmp_path / "index", [tmp_path / "more"], device="cpu")
    assert (added.added, added.total) == (2, 5) and len(GalleryIndex.load(tmp_path / "index").paths) == 5
    assert len(list((tmp_path / "index").glob("*.faiss"))) == 1  # the replaced ones are gone


def test_an_index_saved_before_manifests_named_their_file_loads(tmp_path: Path) -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = GalleryIndex.empty({"model": "m"}, 4, "flat")
    index.add(vectors, [f"p{i}" for i in range(4)], [f"h{i}" for i in range(4)])
    index.save(tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    (tmp_path / "old" / manifest.pop("index_file")).rename(tmp_path / "old" / "index.faiss")
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    loaded = GalleryIndex.load(tmp_path / "old")
    assert loaded.search(vectors[2], 1)[1][0][0] == 2
    loaded.save(tmp_path / "old")  # a save moves it to a named file and removes index.faiss
    assert [p.name for p in (tmp_path / "old").glob("*.faiss")] == [
        json.loads((tmp_path / "old" / "manifest.json").read_text())["index_file"]
    ]
    bad = {**manifest, "index_file": "../elsewhere.faiss"}
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="index file of another form"):
        GalleryIndex.load(tmp_path / "old")
