"""PASCAL VOC 2012 semantic segmentation with OVDiff: background + 20 classes, mIoU.

Layout (VOCdevkit/VOC2012): ``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/<id>.jpg``,
``SegmentationClass/<id>.png`` (palette PNGs, class ids as pixel values, 255 = void). Every
image of the split is segmented into the background and the 20 classes (prompted with
readable names: "dining table", "potted plant", "tv monitor"), one confusion matrix is
accumulated over the split with void ignored, and the report gives the IoU of each class and
their mean (the standard protocol). The paper reports 63.6 mIoU with SD features alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.eval.permirs import read_rgb
from pdmtrack.eval.semseg import class_iou, confusion_matrix, mean_iou
from pdmtrack.io.reports import Table, print_tables, write_csv, write_json
from pdmtrack.io.writers import check_output_folder, write_palette_png
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig
from pdmtrack.ovdiff.pipeline import open_ovdiff

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
PROMPT_NAMES = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def read_split(root: str | Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Segmentation/<split>.txt``."""
    path = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise ParameterError("root", f"{path} not found (give the VOC2012 folder of VOCdevkit and a split it has)")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise InputError(path, "the split lists no image")
    return ids


def read_label(path: Path) -> np.ndarray:
    """A VOC ground-truth PNG as (H, W) uint8 class ids (palette indices; 255 = void)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise InputError(path, f"a VOC label must be a palette or grey PNG, not mode {image.mode}")
            return np.asarray(image)
    except FileNotFoundError:
        raise InputError(path, "ground truth not found") from None
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(path, f"cannot read the label ({err})") from err


@dataclass
class VocReport:
    """mIoU and per-class IoU over the images evaluated."""

    miou: float
    ious: dict[str, float]
    images: int
    seconds: float
    settings: dict

    def tables(self) -> list[Table]:
        overall = Table("VOC", ["images", "mIoU", "images/s"], [[self.images, self.miou, self.images / max(self.seconds, 1e-9)]])
        per_class = Table("IoU per class", ["class", "IoU"], [[name, iou] for name, iou in self.ious.items()])
        return [overall, per_class]

    def write(self, out_dir: Path, split: str) -> list[Path]:
        overall, per_class = self.tables()
        payload = {"split": split, "mIoU": self.miou, "IoU": self.ious, "images": self.images, "seconds": self.seconds}
        return [
            write_csv(out_dir / f"voc_global-{split}.csv", overall),
            write_csv(out_dir / f"voc_per-class-{split}.csv", per_class),
            write_json(out_dir / f"voc_report-{split}.json", {**payload, "settings": self.settings}),
        ]


def evaluate_voc(
    root: str | Path,
    split: str,
    out_dir: str | Path,
    *,
    settings: TrackSettings,
    prototypes: PrototypeConfig,
    segment: SegmentConfig,
    prototypes_dir: str | Path | None = None,
    limit: int | None = None,
    save_predictions: bool = False,
) -> VocReport:
    """Segment the split (its first ``limit`` images) and score it; reports go to ``out_dir``."""
    out_dir = check_output_folder(out_dir)
    if limit is not None and limit < 1:
        raise ParameterError("limit", f"must be at least 1, got {limit}")
    root = Path(root)
    ids = read_split(root, split)[:limit]
    for image_id in ids:
        for path in (root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"):
            if not path.is_file():
                raise InputError(path, "listed in the split but not found")
    names = [PROMPT_NAMES.get(name, name) for name in VOC_CLASSES[1:]]
    run = open_ovdiff(names, settings, prototypes, segment, prototypes_dir)
    began = time.perf_counter()
    confusion = np.zeros((len(VOC_CLASSES), len(VOC_CLASSES)), dtype=np.int64)
    for image_id in tqdm(ids, desc=f"voc {split}", unit="image", disable=None):
        image = read_rgb(root / "JPEGImages" / f"{image_id}.jpg")
        truth = read_label(root / "SegmentationClass" / f"{image_id}.png")
        if truth.shape != image.shape[:2]:
            raise InputError(
                root / "SegmentationClass" / f"{image_id}.png", f"size {truth.shape} differs from its image's {image.shape[:2]}"
            )
        labels = run.segment(image).labels
        try:
            confusion += confusion_matrix(labels, truth, len(VOC_CLASSES))
        except ValueError as err:
            raise InputError(root / "SegmentationClass" / f"{image_id}.png", str(err)) from err
        if save_predictions:
            write_palette_png(out_dir / "predictions" / f"{image_id}.png", labels)
    report = VocReport(
        miou=mean_iou(confusion),
        ious=dict(zip(VOC_CLASSES, class_iou(confusion).tolist())),
        images=len(ids),
        seconds=time.perf_counter() - began,
        settings={"track": settings.to_dict(), "prototypes": asdict(prototypes), "segment": asdict(segment)},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write(out_dir, split)
    print_tables(report.tables())
    return report
