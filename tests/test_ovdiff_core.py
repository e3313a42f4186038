"""OVDiff's pure parts: k-means, prototypes, store, segmentation, stuff, instances, checks, mIoU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pdmtrack.errors import InputError
from pdmtrack.eval.semseg import class_iou, confusion_matrix, mean_iou
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig, check_classes
from pdmtrack.ovdiff.instances import split_instances
from pdmtrack.ovdiff.kmeans import spherical_kmeans
from pdmtrack.ovdiff.prototypes import ClassPrototypes, build_class_prototypes
from pdmtrack.ovdiff.segment import OVSegmenter
from pdmtrack.ovdiff.split import CellSplit, foreground_masks, split_cells
from pdmtrack.ovdiff.store import MANIFEST, PrototypeStore
from pdmtrack.ovdiff.stuff import filter_background, stuff_flags


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_kmeans_finds_separated_clusters_deterministically() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    points = torch.cat([c + 0.05 * torch.randn(20, 3, generator=generator) for c in centres])
    found = spherical_kmeans(points, 3, 20, seed=1)
    assert found.shape == (3, 3)
    assert torch.allclose(found.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (found @ centres.T).amax(0).min() > 0.99  # every true centre is matched
    assert torch.equal(found, spherical_kmeans(points, 3, 20, seed=1))


def test_kmeans_caps_k_at_the_number_of_points_and_handles_duplicates() -> None:
    points = _unit([1, 0], [1, 0], [1, 0])
    assert spherical_kmeans(points, 32, 5, seed=0).shape == (3, 2)
    with pytest.raises(ValueError):
        spherical_kmeans(torch.zeros(0, 2), 4, 5, seed=0)


def _support_maps() -> tuple[torch.Tensor, CellSplit]:
    """Two 2x2 support images: foreground features along x, background along y."""
    maps = torch.zeros(2, 3, 2, 2)
    maps[:, 0, 0, :] = 1.0  # top row: foreground
    maps[:, 1, 1, :] = 1.0  # bottom row: background
    foreground = torch.zeros(2, 2, 2, dtype=torch.bool)
    foreground[:, 0, :] = True
    return maps, CellSplit(foreground, ~foreground)


def test_prototypes_pool_foreground_and_background_separately() -> None:
    maps, cells = _support_maps()
    protos = build_class_prototypes(maps, cells, parts=32, iterations=10, seed=0)
    x, y = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    assert protos.fg_class.shape == (1, 3) and torch.allclose(protos.fg_class[0], x)
    assert protos.fg_instance.shape == (2, 3) and torch.allclose(protos.fg_instance, x.expand(2, 3))
    assert len(protos.fg_part) == 4  # K capped at the 4 foreground cells
    assert torch.allclose(protos.background @ y, torch.ones(len(protos.background)))
    assert len(protos.foreground) == 1 + 2 + 4
    roundtrip = ClassPrototypes.from_tensors(protos.tensors())
    assert all(torch.equal(a, b) for a, b in zip(roundtrip.tensors().values(), protos.tensors().values()))


def test_prototypes_without_background_cells() -> None:
    maps, cells = _support_maps()
    protos = build_class_prototypes(maps, CellSplit(cells.foreground | cells.background, cells.background & False), 4, 5, 0)
    assert protos.background.shape == (0, 3)


def test_foreground_masks_threshold_the_normalised_attention() -> None:
    attention = torch.tensor([[[0.0, 1.0], [0.2, 0.9]], [[0.5, 0.5], [0.5, 0.5]]])
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    masks = foreground_masks(images, attention, 0.5, None)
    assert masks.shape == (2, 4, 4)
    assert masks[0, 0, 3] and masks[0, 3, 3] and not masks[0, 0, 0]
    assert not masks[1].any()  # a flat map carries no evidence
    cells = split_cells(masks, (2, 2), 0.1)
    assert cells.foreground[0].tolist() == [[False, True], [False, True]]
    assert cells.background[0].tolist() == [[True, False], [True, False]]
    assert not (cells.foreground & cells.background).any()


class _Refiner:
    """Stand-in SAM: makes the whole image foreground."""

    def refine(self, image: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        assert scores.shape[0] == 2
        return torch.ones(scores.shape[1:], dtype=torch.int64)


def test_foreground_masks_use_the_refiner_when_given() -> None:
    attention = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    masks = foreground_masks(np.zeros((1, 4, 4, 3), np.uint8), attention, 0.5, _Refiner())  # type: ignore[arg-type]
    assert masks.all()


def _protos(fg: torch.Tensor, bg: torch.Tensor) -> ClassPrototypes:
    empty = fg.new_zeros((0, fg.shape[1]))
    return ClassPrototypes(fg[:1], fg[1:], empty, bg, empty)


def test_segmenter_nearest_prototype_with_union_background() -> None:
    # channels: dog, cat, grass-like background, sky
    dog = _protos(_unit([1, 0, 0, 0], [1, 0.1, 0, 0]), _unit([0, 0, 1, 0]))
    cat = _protos(_unit([0, 1, 0, 0]), _unit([0, 0, 0, 1]))
    segmenter = OVSegmenter(["dog", "cat"], [dog, cat], SegmentConfig(clip=None))
    maps = torch.zeros(4, 2, 2)
    maps[:, 0, 0] = torch.tensor([1.0, 0, 0, 0])  # dog
    maps[:, 0, 1] = torch.tensor([0, 1.0, 0, 0])  # cat
    maps[:, 1, 0] = torch.tensor([0, 0, 1.0, 0])  # dog's background
    maps[:, 1, 1] = torch.tensor([0, 0, 0, 1.0])  # cat's background: the union counts
    result = segmenter(np.zeros((2, 2, 3), np.uint8), maps)
    assert result.labels.tolist() == [[1, 2], [0, 0]]
    assert result.labels.dtype == np.uint8 and result.kept == [True, True]


def test_stuff_filtering_drops_background_that_looks_like_stuff() -> None:
    sky_fg = _unit([0, 0, 0, 1])
    cow = _protos(_unit([1, 0, 0, 0]), _unit([0, 0, 0, 1], [0, 0, 1, 0]))  # sky behind the cow
    sky = _protos(sky_fg, _unit([0, 0, 1, 0]))
    maps = torch.zeros(4, 1, 1)
    maps[3] = 1.0  # a sky pixel
    image = np.zeros((1, 1, 3), np.uint8)
    with_filter = OVSegmenter(["cow", "sky"], [cow, sky], SegmentConfig(clip=None))
    assert with_filter(image, maps).labels.tolist() == [[2]]
    without = OVSegmenter(["cow", "sky"], [cow, sky], SegmentConfig(clip=None, stuff=()))
    assert without(image, maps).labels.tolist() == [[0]]  # tie goes to the background (argmax order)
    assert stuff_flags(["Sky ", "cow", "tv  monitor"], ["sky", "TV monitor"]) == [True, False, True]
    assert len(filter_background(_unit([0, 0, 0, 1], [1, 0, 0, 0]), [sky_fg], 0.8)) == 1


class _Clip:
    def keep(self, image: np.ndarray, names: list[str]) -> list[bool]:
        return [name != "cat" for name in names]


def test_prefiltered_classes_cannot_win() -> None:
    protos = [_protos(_unit([1.0, 0]), _unit([0, 1.0])), _protos(_unit([0.9, 0.1]), _unit([0, 1.0]))]
    config = SegmentConfig(clip="unused", clip_min_classes=2)
    segmenter = OVSegmenter(["cat", "dog"], protos, config, clip=_Clip())  # type: ignore[arg-type]
    maps = torch.tensor([1.0, 0]).reshape(2, 1, 1)
    result = segmenter(np.zeros((3, 3, 3), np.uint8), maps)
    assert result.kept == [False, True] and result.labels.tolist() == [[2] * 3] * 3
    few = OVSegmenter(["cat", "dog"], protos, SegmentConfig(clip="unused", clip_min_classes=3), clip=_Clip())  # type: ignore[arg-type]
    assert few(np.zeros((1, 1, 3), np.uint8), maps).labels.tolist() == [[1]]


def test_store_round_trip_keys_and_foreign_model(tmp_path) -> None:
    maps, cells = _support_maps()
    protos = build_class_prototypes(maps, cells, 4, 5, 0)
    store = PrototypeStore(tmp_path / "protos", "model-a")
    assert store.load("dog", "k1") is None
    store.save("dog", "k1" * 8, protos, {"support_images": 2})
    loaded = store.load("dog", "k1" * 8)
    assert loaded is not None and torch.equal(loaded.fg_part, protos.fg_part)
    assert store.load("dog", "k2" * 8) is None  # another setting is another entry
    assert json.loads((tmp_path / "protos" / MANIFEST).read_text())["model"] == "model-a"
    with pytest.raises(InputError, match="model-a"):
        PrototypeStore(tmp_path / "protos", "model-b")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not a prototype folder"):
        PrototypeStore(tmp_path / "other", "model-a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        PrototypeStore(tmp_path / "file", "model-a")


def test_store_removes_a_corrupt_entry(tmp_path) -> None:
    maps, cells = _support_maps()
    store = PrototypeStore(tmp_path, "m")
    path = store.save("dog", "a" * 64, build_class_prototypes(maps, cells, 4, 5, 0), {})
    path.write_bytes(b"garbage")
    assert store.load("dog", "a" * 64) is None
    assert not path.exists() and not path.with_suffix(".json").exists()


def test_split_instances_by_connected_components() -> None:
    class_map = np.zeros((10, 10), np.uint8)
    class_map[0:2, 0:2] = 1  # small dog
    class_map[5:10, 5:10] = 1  # big dog
    class_map[0:3, 6:9] = 2  # cat
    class_map[9, 0] = 2  # a one-pixel speck
    objects, classes = split_instances(class_map, ["dog", "cat"], min_area=0.02)
    assert classes == ["dog", "dog", "cat"]
    assert (objects[5:10, 5:10] == 1).all() and (objects[0:2, 0:2] == 2).all() and (objects[0:3, 6:9] == 3).all()
    assert objects[9, 0] == 0


@pytest.mark.parametrize(("names", "fragment"), [([], "empty"), (["dog", " "], "empty"), (["dog", "cat", "Dog "], "twice")])
def test_class_list_checks(names: list[str], fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        check_classes(names)
    assert check_classes([" dog", "hot dog"]) == ["dog", "hot dog"]


def test_config_checks() -> None:
    with pytest.raises(InputError, match="^support_size: "):
        PrototypeConfig(support_size=100)
    with pytest.raises(InputError, match="^support_prompt: "):
        PrototypeConfig(support_prompt="a photo")
    with pytest.raises(InputError, match="^feature: "):
        PrototypeConfig(feature="dino")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="^fg_threshold: "):
        PrototypeConfig(fg_threshold=0.0)


def test_voc_confusion_and_miou_by_hand() -> None:
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]], dtype=np.uint8)
    confusion = confusion_matrix(pred, truth, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # void pixels ignored
    # IoU: bg 1/(1+1+1)... = 1/3, class 1: 2/3, class 2: 1/2
    assert np.allclose(class_iou(confusion), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # one matrix over the split: summing per-image matrices, then the IoU (not a mean of per-image mIoUs)
    second = confusion_matrix(np.array([[3]], np.uint8), np.array([[3]], np.uint8), 4)
    total = np.pad(confusion, ((0, 1), (0, 1))) + second
    assert mean_iou(total) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2 + 1) / 4)
    absent = confusion_matrix(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), 3)
    assert np.isnan(class_iou(absent)[1:]).all() and mean_iou(absent) == 1.0
    with pytest.raises(ValueError):
        confusion_matrix(np.array([[5]], np.uint8), np.array([[0]], np.uint8), 3)


def test_feature_maps_kinds() -> None:
    from pdmtrack.features.types import PDMFeatures
    from pdmtrack.ovdiff.prototypes import feature_maps

    features = PDMFeatures(appearance=torch.ones(1, 2, 3, 3, dtype=torch.float16), semantic=torch.zeros(1, 4, 3, 3))
    assert feature_maps(features, "semantic").shape == (1, 4, 3, 3)
    assert feature_maps(features, "appearance").dtype == torch.float32
    both = feature_maps(features, "both")
    assert both.shape == (1, 6, 3, 3) and torch.allclose(both[0, 4:].norm(dim=0), torch.ones(3, 3))
