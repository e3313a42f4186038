"""OVDiff settings: how prototypes are built (the store keys on all of it) and how images
are segmented with them (nothing is stored from these), plus the class-list check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from pdmtrack.config import check_at_least, check_choice, check_finite_fields, split_prompt_template
from pdmtrack.errors import InputError

FeatureKind = Literal["semantic", "appearance", "both"]

# Classes treated as "stuff" by default (amorphous regions, no distinct object): a union of
# the usual stuff names of COCO-Stuff and Pascal Context. ``--stuff`` replaces the list.
DEFAULT_STUFF = (
    "sky", "cloud", "clouds", "grass", "water", "sea", "ocean", "river", "lake", "road", "ground",
    "dirt", "sand", "snow", "mountain", "hill", "rock", "wall", "floor", "ceiling", "field",
    "fog", "tree", "trees", "bush", "building",
)  # fmt: skip


@dataclass(frozen=True)
class PrototypeConfig:
    """How a class's prototypes are built (paper defaults where it gives them)."""

    num_support: int = 64  # N support images per class (the paper: saturates at 64-128)
    steps: int = 1  # sampling steps (trailing schedule, no guidance): 1-4 for SDXL-turbo; 20-30 for SD 1.x
    support_size: int = 512  # side of the square support images in pixels (SDXL-turbo's native 512)
    support_prompt: str = "a good photo of a {cls}"  # the paper's template
    seed: int = 0  # seeds the initial noise of every class's support images
    fg_threshold: float = 0.5  # the min-max normalised class-token attention >= this is foreground
    bg_max_fraction: float = 0.1  # a grid cell is background when at most this much of it is foreground
    parts: int = 32  # K of the part-level k-means (foreground and background each)
    kmeans_iters: int = 30  # Lloyd iterations at most
    feature: FeatureKind = "semantic"  # PDM feature compared: semantic (attn2 Q), appearance (attn1 Q+K) or both

    def __post_init__(self) -> None:
        check_finite_fields(self, {"num_support": "support", "seed": "support_seed"})
        check_at_least("--support", self.num_support, 1)
        check_at_least("--steps", self.steps, 1)
        if self.support_size < 64 or self.support_size % 64:
            raise InputError("--support-size", f"must be a positive multiple of 64, got {self.support_size}")
        split_prompt_template("--support-prompt", self.support_prompt)
        if not 0.0 < self.fg_threshold <= 1.0:
            raise InputError("--fg-threshold", f"must lie in (0, 1], got {self.fg_threshold}")
        if not 0.0 <= self.bg_max_fraction < 0.5:
            raise InputError("--bg-max-fraction", f"must lie in [0, 0.5), got {self.bg_max_fraction}")
        check_at_least("--parts", self.parts, 1)
        check_at_least("--kmeans-iters", self.kmeans_iters, 1)
        check_choice("--feature", self.feature, get_args(FeatureKind))


@dataclass(frozen=True)
class SegmentConfig:
    """How an image is segmented with the prototypes (not stored)."""

    stuff: tuple[str, ...] = DEFAULT_STUFF  # classes treated as stuff (stuff filtering)
    stuff_threshold: float = 0.8  # background prototypes this similar (cosine) to a stuff class are dropped
    clip: str | None = "openai/clip-vit-base-patch16"  # CLIP for category pre-filtering; None = off
    clip_min_classes: int = 4  # pre-filter only with at least this many classes
    clip_min_prob: float = 0.05  # keep classes whose CLIP probability (softmax over the classes) reaches this

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if not -1.0 <= self.stuff_threshold <= 1.0:
            raise InputError("--stuff-threshold", f"must lie in [-1, 1] (a cosine), got {self.stuff_threshold}")
        check_at_least("--clip-min-classes", self.clip_min_classes, 1)
        if not 0.0 <= self.clip_min_prob <= 1.0:
            raise InputError("--clip-min-prob", f"must lie in [0, 1], got {self.clip_min_prob}")


def check_classes(classes: Sequence[str], flag: str = "--classes") -> list[str]:
    """The class names stripped; InputError for an empty list, an empty name or a duplicate."""
    names = [name.strip() for name in classes]
    if not names:
        raise InputError(flag, "the class list is empty; give at least one class name")
    if any(not name for name in names):
        raise InputError(flag, "a class name is empty")
    seen: dict[str, str] = {}
    for name in names:
        folded = " ".join(name.lower().split())
        if folded in seen:
            raise InputError(flag, f"'{name}' is given twice (as '{seen[folded]}' too); class names must be distinct")
        seen[folded] = name
    if len(names) > 254:
        raise InputError(flag, f"{len(names)} classes; at most 254 fit in a palette PNG beside the background")
    return names
