"""Every tunable of pdmtrack, grouped by the stage that uses it.

Defaults follow ../shared/DESIGN.md (sections 3 and 4); each field says where its default
comes from. The CLI builds these from its flags; the library never reads flags itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Inversion = Literal["aidi", "ddim", "noise"]
AppearanceAgg = Literal["mean", "topk-vote"]
SamType = Literal["vit_b", "vit_l", "vit_h", "none"]

DEFAULT_MODEL = "stabilityai/sdxl-turbo"


@dataclass(frozen=True)
class FeatureConfig:
    """How PDM features are computed (the feature cache keys on all of it)."""

    model: str = DEFAULT_MODEL  # HF hub id or local diffusers folder
    revision: str | None = None  # hub revision (branch, tag or commit)
    layer: str | None = None  # transformer block to hook; None = last block of last attn up-block
    size: int = 512  # short side in pixels; long side rounded to a multiple of 64
    square: bool = False  # squash to size x size, as the paper does
    inversion: Inversion = "aidi"  # aidi (paper), ddim (authors' code), noise (DIFT style)
    feature_timestep: int = 249  # first (least noisy) step of SDXL-turbo's 4-step trailing schedule
    schedule_steps: int = 4  # steps of the trailing schedule the aidi inversion walks
    fixed_point_iters: int = 2  # AIDI fixed-point iterations K per inversion step
    ddim_steps: int = 50  # steps of the full-range DDIM schedule for --inversion ddim
    prompt_template: str = "a photo of a {cls}"  # empty prompt when no class is given
    seed: int = 0  # seeds the noise of --inversion noise


@dataclass(frozen=True)
class MatchConfig:
    """PDM maps (paper Eq. 3-7)."""

    tau: float = 0.5  # threshold of the min-max cross-attention map (reference from class name)
    appearance_agg: AppearanceAgg = "mean"  # pooling over reference tokens
    topk: int = 100  # tokens that vote with appearance_agg="topk-vote" (authors' code)
    min_fraction: float = 0.5  # mask cover making a grid cell a reference token (else best cell)
    segment_threshold: float = 0.5  # PerMIS-image without SAM: mask = upsampled combined map >= this


@dataclass(frozen=True)
class MemoryConfig:
    """Label propagation (DINO/DIFT protocol); defaults are DIFT's best SD setting."""

    context: int = 28  # n: last frames kept besides the first frame
    topk: int = 15  # context entries kept per target cell
    radius: int = 15  # spatial window radius in cells, for a 30-cell short side; scaled with the grid
    temperature: float = 0.2  # affinity = exp(cos / temperature)
    instance_weight: float = 0.5  # weight of the PDM instance prior when fused with propagation
    global_first_frame: bool = True  # first frame matched without the window (re-entry anywhere); False = DINO/DIFT exact


@dataclass(frozen=True)
class SamConfig:
    """Segment Anything refinement."""

    model_type: SamType = "vit_b"  # none = no refinement
    checkpoint: Path | None = None  # local checkpoint; None = download the official one
    min_iou: float = 0.5  # keep the coarse mask when SAM's best output has a lower IoU with it


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how things run; never changes results beyond floating point."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 4
    cache_dir: Path | None = None  # None = the user's cache folder (see features.cache)
    use_cache: bool = True
    backend: str = "auto"  # video decoding backend: auto, decord or pyav


@dataclass(frozen=True)
class TrackSettings:
    """Everything ``pdmtrack propagate`` (and the evaluators) need besides the inputs."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        """Plain-JSON view (paths as strings), for reports and run records."""

        def clean(value: object) -> object:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return str(value) if isinstance(value, Path) else value

        return clean(asdict(self))  # type: ignore[return-value]
