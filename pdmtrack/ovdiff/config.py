"""OVDiff settings: how prototypes are built (the store keys on all of it) and how images
are segmented with them (nothing is stored from these), plus the class-list check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pdmtrack.config import check_at_least, check_fields, option, split_prompt_template
from pdmtrack.errors import ParameterError

FeatureKind = Literal["semantic", "appearance", "both"]

# Classes treated as "stuff" by default (amorphous regions, no distinct object): a union of
# the usual stuff names of COCO-Stuff and Pascal Context. ``stuff`` replaces the list.
DEFAULT_STUFF = (
    "sky", "cloud", "clouds", "grass", "water", "sea", "ocean", "river", "lake", "road", "ground",
    "dirt", "sand", "snow", "mountain", "hill", "rock", "wall", "floor", "ceiling", "field",
    "fog", "tree", "trees", "bush", "building",
)  # fmt: skip


@dataclass(frozen=True)
class PrototypeConfig:
    """How a class's prototypes are built (paper defaults where it gives them)."""

    num_support: int = option(64, "Support images sampled per class (the paper: saturates at 64-128).", "support")
    steps: int = option(1, "Sampling steps (trailing schedule, no guidance): 1-4 for SDXL-turbo; 20-30 for SD 1.x.")
    support_size: int = option(512, "Side of the square support images in pixels (a multiple of 64; SDXL-turbo's native 512).")
    support_prompt: str = option("a good photo of a {cls}", "Support prompt template ({cls} = the class name; the paper's).")
    seed: int = option(0, "Seed of the initial noise of every class's support images.", "support_seed")
    fg_threshold: float = option(0.5, "Foreground: the min-max normalised class-token attention >= this.")
    bg_max_fraction: float = option(0.1, "Background grid cell: at most this much of it is foreground.")
    parts: int = option(32, "K of the part-level k-means prototypes (foreground and background each).")
    kmeans_iters: int = option(30, "k-means (Lloyd) iterations at most.")
    feature: FeatureKind = option("semantic", "PDM features compared: semantic (attn2 Q), appearance (attn1 Q+K) or both.")

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least("support", self.num_support, 1)
        check_at_least("steps", self.steps, 1)
        if self.support_size < 64 or self.support_size % 64:
            raise ParameterError("support_size", f"must be a positive multiple of 64, got {self.support_size}")
        split_prompt_template("support_prompt", self.support_prompt)
        if not 0.0 < self.fg_threshold <= 1.0:
            raise ParameterError("fg_threshold", f"must lie in (0, 1], got {self.fg_threshold}")
        if not 0.0 <= self.bg_max_fraction < 0.5:
            raise ParameterError("bg_max_fraction", f"must lie in [0, 0.5), got {self.bg_max_fraction}")
        check_at_least("parts", self.parts, 1)
        check_at_least("kmeans_iters", self.kmeans_iters, 1)


@dataclass(frozen=True)
class SegmentConfig:
    """How an image is segmented with the prototypes (not stored)."""

    stuff: tuple[str, ...] = option(
        DEFAULT_STUFF, "Classes treated as stuff (stuff filtering; default: a built-in list of sky, grass, water, ...)."
    )
    stuff_threshold: float = option(0.8, "Drop background prototypes this similar (cosine) to a stuff class.")
    clip: str | None = option(
        "openai/clip-vit-base-patch16", "CLIP for category pre-filtering: hub id or local folder (none = off).", path=True
    )
    clip_min_classes: int = option(4, "Pre-filter only with at least this many classes.")
    clip_min_prob: float = option(0.05, "Keep classes whose CLIP probability (softmax over the classes) reaches this.")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.clip is not None and self.clip.lower() == "none":
            object.__setattr__(self, "clip", None)
        if not -1.0 <= self.stuff_threshold <= 1.0:
            raise ParameterError("stuff_threshold", f"must lie in [-1, 1] (a cosine), got {self.stuff_threshold}")
        check_at_least("clip_min_classes", self.clip_min_classes, 1)
        if not 0.0 <= self.clip_min_prob <= 1.0:
            raise ParameterError("clip_min_prob", f"must lie in [0, 1], got {self.clip_min_prob}")


def check_classes(classes: Sequence[str], name: str = "classes") -> list[str]:
    """The class names stripped; ParameterError naming ``name`` for an empty list, an empty
    class name or a duplicate."""
    names = [item.strip() for item in classes]
    if not names:
        raise ParameterError(name, "the class list is empty; give at least one class name")
    if any(not item for item in names):
        raise ParameterError(name, "a class name is empty")
    seen: dict[str, str] = {}
    for item in names:
        folded = " ".join(item.lower().split())
        if folded in seen:
            raise ParameterError(name, f"'{item}' is given twice (as '{seen[folded]}' too); class names must be distinct")
        seen[folded] = item
    if len(names) > 254:
        raise ParameterError(name, f"{len(names)} classes; at most 254 fit in a palette PNG beside the background")
    return names
