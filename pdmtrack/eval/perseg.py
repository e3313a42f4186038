"""PerSeg (PerSAM, Zhang et al. 2023): personalised segmentation of 40 objects.

Layout: ``ROOT/Images/<object>/NN.jpg`` and ``ROOT/Annotations/<object>/NN.png``; the first
image (by name, ``00``) and its mask are the reference, the others the targets. A mask pixel
is foreground where its grey value is > 0 (PerSAM's reading).

Scores as PerSAM's ``eval_miou.py`` computes them: per object, IoU = the sum of
intersections over its targets / the sum of unions (not a mean of per-image IoUs); mIoU =
the mean over objects. PerSAM's code has no bIoU; here bIoU is aggregated the same way from
the boundary bands of Cheng et al. (dilation ratio 0.02): per object, summed band
intersections / summed band unions, then the mean over objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.eval.metrics import boundary_counts
from pdmtrack.io.images import read_rgb
from pdmtrack.io.reports import Table, write_report
from pdmtrack.io.video import IMAGE_SUFFIXES
from pdmtrack.io.writers import write_palette_png
from pdmtrack.personal.segmenter import ImageSegmenter
from pdmtrack.tracking.tracker import Tracker


@dataclass(frozen=True)
class PersegObject:
    """One object: its images and masks, in name order (the first pair is the reference)."""

    name: str
    images: tuple[Path, ...]
    masks: tuple[Path, ...]

    @property
    def class_name(self) -> str:
        """The folder name as a class name ("colorful_sneaker" -> "colorful sneaker")."""
        return self.name.replace("_", " ")


def read_binary_mask(path: Path) -> np.ndarray:
    """(H, W) bool: grey value > 0."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > 0
    except FileNotFoundError:
        raise InputError(path, "mask not found") from None
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(path, f"cannot read the mask ({err})") from err


def load_perseg(root: str | Path, objects: list[str] | None = None) -> list[PersegObject]:
    """The objects under ``root`` (all, or those named), each with >= 2 image/mask pairs."""
    root = Path(root)
    image_root, mask_root = root / "Images", root / "Annotations"
    if not image_root.is_dir() or not mask_root.is_dir():
        raise InputError(root, "not a PerSeg folder (expected Images/<object>/ and Annotations/<object>/)")
    names = objects if objects is not None else sorted(p.name for p in image_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    result = []
    for name in names:
        folder = image_root / name
        if not folder.is_dir():
            raise InputError(folder, "object folder not found")
        images = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")))
        masks = tuple(mask_root / name / f"{image.stem}.png" for image in images)
        missing = [m for m in masks if not m.is_file()]
        if missing:
            raise InputError(missing[0], "mask not found for its image")
        if len(images) < 2:
            raise InputError(folder, "needs a reference and at least one target image")
        result.append(PersegObject(name, images, masks))
    if not result:
        raise InputError(image_root, "holds no object folders")
    return result


@dataclass(frozen=True)
class ObjectCounts:
    """One object's pixel counts summed over its targets."""

    name: str
    targets: int
    intersection: int
    union: int
    band_intersection: int
    band_union: int

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 1.0

    @property
    def biou(self) -> float:
        return self.band_intersection / self.band_union if self.band_union else 1.0


def count_object(name: str, predictions: list[np.ndarray], truths: list[np.ndarray]) -> ObjectCounts:
    """Sum the IoU and boundary-band counts of an object's (prediction, truth) pairs."""
    inter = union = band_inter = band_union = 0
    for pred, truth in zip(predictions, truths, strict=True):
        inter += int(np.count_nonzero(pred & truth))
        union += int(np.count_nonzero(pred | truth))
        b_inter, b_union = boundary_counts(pred, truth)
        band_inter += b_inter
        band_union += b_union
    return ObjectCounts(name, len(predictions), inter, union, band_inter, band_union)


@dataclass(frozen=True)
class PersegReport:
    """Per-object counts; mIoU and bIoU are means over objects."""

    objects: list[ObjectCounts]
    settings: dict

    def global_scores(self) -> dict[str, float]:
        return {"mIoU": float(np.mean([o.iou for o in self.objects])), "bIoU": float(np.mean([o.biou for o in self.objects]))}

    def tables(self) -> tuple[Table, Table]:
        scores = self.global_scores()
        rows = [[o.name, o.targets, o.iou, o.biou] for o in self.objects]
        return (
            Table("Global PerSeg results", list(scores), [list(scores.values())]),
            Table("Per-object PerSeg results", ["Object", "Targets", "IoU", "bIoU"], rows),
        )

    def write(self, out_dir: Path) -> list[Path]:
        payload = {
            "benchmark": "PerSeg",
            "global": self.global_scores(),
            "per_object": [{**asdict(o), "iou": o.iou, "biou": o.biou} for o in self.objects],
            "settings": self.settings,
        }
        return write_report(out_dir, "perseg", *self.tables(), payload)


def evaluate_perseg(
    root: str | Path,
    *,
    out_dir: str | Path,
    settings: TrackSettings | None = None,
    tracker: Tracker | None = None,
    names_as_classes: bool = False,
    objects: list[str] | None = None,
) -> PersegReport:
    """Segment every object's targets from its reference (PerSAM(PDM), or the threshold
    without SAM); write the predicted masks to ``out_dir/masks/<object>/`` and the reports.

    ``tracker`` (loaded from ``settings`` when none is given) supplies the features
    (``--features``) and SAM. ``names_as_classes``: each object's folder name is its class
    name (semantic map on); otherwise matching is appearance-only.
    """
    data = load_perseg(root, objects)
    tracker = tracker if tracker is not None else Tracker(settings or TrackSettings())
    settings, refiner, device = tracker.settings, tracker.refiner, tracker.device
    classes = sorted({o.class_name for o in data}) if names_as_classes else []
    source = tracker.feature_source(classes, task="image")
    counts = []
    for item in tqdm(data, desc="PerSeg", unit="object", disable=None):
        reference_mask = read_binary_mask(item.masks[0]).astype(np.uint8)
        row = classes.index(item.class_name) if classes else None
        segmenter = ImageSegmenter(source, read_rgb(item.images[0]), reference_mask, [row], settings.match, device, refiner)
        predictions, truths = [], []
        for image_path, mask_path in zip(item.images[1:], item.masks[1:]):
            image = read_rgb(image_path)
            predicted = segmenter(image).labels > 0
            truth = read_binary_mask(mask_path)
            if truth.shape != predicted.shape:
                raise InputError(mask_path, f"mask {truth.shape} and image {predicted.shape} differ in size")
            write_palette_png(Path(out_dir) / "masks" / item.name / f"{image_path.stem}.png", predicted.astype(np.uint8))
            predictions.append(predicted)
            truths.append(truth)
        counts.append(count_object(item.name, predictions, truths))
    report = PersegReport(counts, settings.to_dict())
    report.write(out_dir)
    return report
