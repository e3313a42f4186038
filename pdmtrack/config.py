"""Every tunable of pdmtrack, grouped by the stage that uses it.

Defaults follow ../shared/DESIGN.md (sections 3 and 4); each field says where its default
comes from. The CLI builds these from its flags; the library never reads flags itself.
"""

from __future__ import annotations

import math
import numbers
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, get_args

from pdmtrack.errors import InputError

Inversion = Literal["aidi", "ddim", "ddim-reconstruct", "noise"]
AppearanceAgg = Literal["mean", "topk-vote", "euclidean-vote"]
SamType = Literal[
    "vit_b", "vit_l", "vit_h", "sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large", "none"
]
Backend = Literal["auto", "decord", "pyav"]
FeatureKind = Literal["pdm", "dift", "dinov2"]
Pooling = Literal["gem", "cls"]
Protocol = Literal["pdmtrack", "dift", "authors-code"]


def check_choice(flag: str, value: object, allowed: tuple) -> None:
    """InputError naming ``flag`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise InputError(flag, f"unknown value '{value}' (choose from {', '.join(map(str, allowed))})")


def check_at_least(flag: str, value: float, least: float) -> None:
    """InputError naming ``flag`` unless ``value >= least``."""
    if value < least:
        raise InputError(flag, f"must be at least {least}, got {value}")


def check_finite(flag: str, value: float) -> None:
    """InputError naming ``flag`` when ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise InputError(flag, f"must be a finite number, got {value}")


# Settings fields whose CLI flag has another name (the flag is --<name> with dashes otherwise).
FLAG_NAMES = {
    "feature_timestep": "timestep",
    "model_type": "sam",
    "checkpoint": "sam_checkpoint",
    "min_iou": "sam_min_iou",
    "kind": "features",
}


def check_finite_fields(config: object, flag_names: Mapping[str, str] = FLAG_NAMES) -> None:
    """``check_finite`` on every number field of the dataclass ``config`` (flags from ``flag_names``);
    every settings class calls it first in ``__post_init__``, so no NaN or inf gets through."""
    for item in fields(config):  # type: ignore[arg-type]
        value = getattr(config, item.name)
        if isinstance(value, numbers.Real):
            check_finite("--" + flag_names.get(item.name, item.name).replace("_", "-"), value)


# Largest --size (short side in pixels): twice the 1024 pixels SDXL was trained at (SD 1.x: 512);
# inputs far beyond the training resolution give no better features and exhaust memory.
MAX_SIZE = 2048


def split_prompt_template(flag: str, template: str) -> tuple[str, str]:
    """The text before and after the one ``{cls}`` of ``template``; InputError naming ``flag``
    for any other field (``{bad}``, ``{}``, ``{cls.x}``), a second ``{cls}`` or a lone brace."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputError(flag, f"'{template}' is not a valid template ({err}); write {{{{ or }}}} for a literal brace") from None
    fields_given = [(name, spec, conversion) for _, name, spec, conversion in parsed if name is not None]
    if fields_given != [("cls", "", None)]:
        problem = f"'{template}' must contain '{{cls}}' exactly once and no other {{...}} field (write {{{{ or }}}} for a literal brace)"
        raise InputError(flag, problem)
    at = next(i for i, (_, name, _, _) in enumerate(parsed) if name is not None)
    return "".join(piece[0] for piece in parsed[: at + 1]), "".join(piece[0] for piece in parsed[at + 1 :])


DEFAULT_MODEL = "stabilityai/sdxl-turbo"
DEFAULT_DINOV2 = "facebook/dinov2-base"


@dataclass(frozen=True)
class FeatureConfig:
    """How PDM features are computed (the feature cache keys on all of it)."""

    model: str = DEFAULT_MODEL  # HF hub id or local diffusers folder
    revision: str | None = None  # hub revision (branch, tag or commit)
    layer: str | None = None  # transformer block to hook; None = last block of last attn up-block
    size: int = 512  # short side in pixels; long side rounded to a multiple of 64
    square: bool = False  # squash to size x size, as the paper does
    inversion: Inversion = "aidi"  # aidi (paper), ddim, ddim-reconstruct (authors' code), noise (DIFT style)
    feature_timestep: int = 249  # first (least noisy) step of SDXL-turbo's 4-step trailing schedule
    schedule_steps: int = 4  # steps of the trailing schedule the aidi inversion walks
    fixed_point_iters: int = 2  # AIDI fixed-point iterations K per inversion step
    ddim_steps: int = 50  # steps of the full-range DDIM schedule for --inversion ddim / ddim-reconstruct
    prompt_template: str = "a photo of a {cls}"  # empty prompt when no class is given
    seed: int = 0  # seeds the noise of --inversion noise
    separate_qk: bool = False  # also keep attn1's query and key apart (appearance_parts), as the authors' code matches them

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice("--inversion", self.inversion, get_args(Inversion))
        if self.size < 64 or self.size % 64:
            raise InputError("--size", f"must be a positive multiple of 64, got {self.size}")
        if self.size > MAX_SIZE:
            raise InputError(
                "--size",
                f"{self.size} is too large: at most {MAX_SIZE} (SDXL was trained at 1024 pixels, SD 1.x at 512; "
                "far larger inputs give no better features and exhaust memory)",
            )
        check_at_least("--timestep", self.feature_timestep, 0)
        check_at_least("--fixed-point-iters", self.fixed_point_iters, 0)


@dataclass(frozen=True)
class MatchConfig:
    """PDM maps (paper Eq. 3-7) and their fusion with label propagation."""

    tau: float = 0.5  # threshold of the min-max cross-attention map (reference from class name)
    appearance_agg: AppearanceAgg = "mean"  # pooling over reference tokens
    vote_topk: int = 100  # tokens each reference token votes for with the *-vote aggregations (authors' code)
    min_fraction: float = 0.5  # mask cover making a grid cell a reference token (else best cell)
    segment_threshold: float = 0.5  # PerMIS-image without SAM: mask = upsampled combined map >= this
    instance_weight: float = 0.5  # weight of the PDM instance prior when fused with propagation

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice("--appearance-agg", self.appearance_agg, get_args(AppearanceAgg))
        if not 0.0 <= self.tau <= 1.0:
            raise InputError("--tau", f"must lie in [0, 1] (it thresholds a min-max normalised map), got {self.tau}")
        check_at_least("--vote-topk", self.vote_topk, 1)
        if not 0.0 <= self.instance_weight <= 1.0:
            raise InputError("--instance-weight", f"must lie in [0, 1], got {self.instance_weight}")


@dataclass(frozen=True)
class MemoryConfig:
    """Label propagation (DINO/DIFT protocol); defaults are DIFT's best SD setting."""

    context: int = 28  # n: last frames kept besides the first frame
    context_topk: int = 15  # context entries kept per target cell
    radius: int = 15  # window radius in cells, for a 30-cell short side, scaled with the grid (dift/authors-code: cells, as is)
    temperature: float = 0.2  # affinity = exp(cos / temperature)
    global_first_frame: bool = True  # first frame matched without the window (re-entry anywhere); False = DINO/DIFT exact
    max_keyframes: int = 8  # given masks kept as permanent references besides the first (oldest given out first)
    protocol: Protocol = "pdmtrack"  # dift / authors-code: DINO's and DIFT's eval_davis label propagation step for step

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice("--protocol", self.protocol, get_args(Protocol))
        check_at_least("--context", self.context, 0)
        check_at_least("--context-topk", self.context_topk, 1)
        check_at_least("--radius", self.radius, 0)
        if self.temperature <= 0:
            raise InputError("--temperature", f"must be positive, got {self.temperature}")
        check_at_least("--max-keyframes", self.max_keyframes, 0)


@dataclass(frozen=True)
class SamConfig:
    """Segment Anything refinement."""

    model_type: SamType = "vit_b"  # none = no refinement
    checkpoint: Path | None = None  # local checkpoint file (vit_*) or folder (sam2.1-*); None = download
    min_iou: float = 0.5  # keep the coarse mask when SAM's best output has a lower IoU with it

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice("--sam", self.model_type, get_args(SamType))


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how things run; never changes results beyond floating point."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | str = "auto"  # frames per feature batch; auto: from free GPU memory on CUDA, 4 on the CPU
    cache_dir: Path | None = None  # None = the user's cache folder (see features.cache)
    use_cache: bool = True
    cache_max_gb: float | None = None  # None = $PDMTRACK_CACHE_MAX_GB, else 20 (features.cache_folder)
    compile: bool = False  # torch.compile the UNet's blocks (features.compile); pays off on long GPU runs
    backend: Backend = "auto"  # video decoding backend: auto, decord or pyav

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if self.batch_size != "auto":
            try:
                frames = int(self.batch_size)
            except (TypeError, ValueError):
                raise InputError("--batch-size", f"must be a positive number of frames or auto, got '{self.batch_size}'") from None
            check_at_least("--batch-size", frames, 1)
            object.__setattr__(self, "batch_size", frames)
        if self.cache_max_gb is not None and not self.cache_max_gb > 0:
            raise InputError("--cache-max-gb", f"must be a positive number of GB, got {self.cache_max_gb} (--no-cache turns the cache off)")
        check_choice("--backend", self.backend, get_args(Backend))


@dataclass(frozen=True)
class SourceConfig:
    """Which features feed matching: PDM (the default) or a baseline of the paper's tables.

    dift: the UNet up-block output of the same diffusion model (``--model``) at DIFT's
    timestep; None picks DIFT's published setting for the task (images: t = 261, up-block 1;
    video propagation: t = 51, up-block 2). dinov2: the patch tokens of ``dinov2_model``.
    Both are appearance-only (no semantic map, no class vectors).
    """

    kind: FeatureKind = "pdm"
    dift_timestep: int | None = None
    dift_up_block: int | None = None
    dift_ensemble: int = 8  # noise draws averaged (DIFT's ensemble_size)
    dinov2_model: str = DEFAULT_DINOV2  # hub id or local transformers folder
    dinov2_size: int = 448  # short side; 32 patches of 14 pixels, the PDM grid at size 512

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice("--features", self.kind, get_args(FeatureKind))
        check_at_least("--dift-ensemble", self.dift_ensemble, 1)
        check_at_least("--dinov2-size", self.dinov2_size, 14)
        if self.dift_timestep is not None and not 0 < self.dift_timestep < 1000:
            raise InputError("--dift-timestep", f"must lie in 1..999, got {self.dift_timestep}")


@dataclass(frozen=True)
class GlobalConfig:
    """Which global descriptor an index holds (recorded in its manifest)."""

    model: str = DEFAULT_DINOV2  # hub id or local folder (transformers ViT)
    pooling: Pooling = "gem"
    size: int = 224  # short side of the input in pixels
    gem_p: float = 3.0

    def __post_init__(self) -> None:
        check_finite_fields(self, {"model": "global_model", "size": "global_size"})
        check_choice("--pooling", self.pooling, get_args(Pooling))
        check_at_least("--global-size", self.size, 14)
        if self.gem_p <= 0:
            raise InputError("gem_p", f"must be positive, got {self.gem_p}")


@dataclass(frozen=True)
class TrackSettings:
    """Everything ``pdmtrack propagate`` (and the evaluators) need besides the inputs."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: SourceConfig = field(default_factory=SourceConfig)

    def to_dict(self) -> dict:
        """Plain-JSON view (paths as strings), for reports and run records."""

        def clean(value: object) -> object:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return str(value) if isinstance(value, Path) else value

        return clean(asdict(self))  # type: ignore[return-value]

    @classmethod
    def from_options(cls, **options: object) -> TrackSettings:
        """Settings from the CLI's flat option names (``model=..., sam="none", context=7``);
        every option not given keeps its default. Unknown names are a ``TypeError``."""
        unknown = sorted(set(options) - set(OPTION_FIELDS))
        if unknown:
            raise TypeError(f"unknown tracker option(s) {', '.join(unknown)}; known: {', '.join(OPTION_FIELDS)}")
        protocol = options.get("protocol", "pdmtrack")
        check_choice("--protocol", protocol, get_args(Protocol))
        defaults = cls()
        for name, value in PROTOCOL_PRESETS[protocol].items():  # type: ignore[index]
            options.setdefault(name, value)  # an option the caller gave wins, even at its default value
        if "no_cache" in options:
            options["use_cache"] = not options.pop("no_cache")
        groups: dict[str, dict[str, object]] = {}
        for name, value in options.items():
            group, attribute = OPTION_FIELDS[name]
            groups.setdefault(group, {})[attribute] = value
        return cls(**{f.name: replace(getattr(defaults, f.name), **groups.get(f.name, {})) for f in fields(cls)})


def _option_fields() -> dict[str, tuple[str, str]]:
    """Flat option name (the CLI flag without dashes) -> (settings group, field)."""
    table: dict[str, tuple[str, str]] = {}
    for group in fields(TrackSettings):
        for item in fields(group.default_factory):  # type: ignore[misc]
            table[FLAG_NAMES.get(item.name, item.name)] = (group.name, item.name)
    table["no_cache"] = ("runtime", "use_cache")  # the CLI's --no-cache is the negation of use_cache
    return table


OPTION_FIELDS = _option_fields()

# What each --protocol sets, by flat option name. An option the caller does not give takes the
# protocol's value; an option given keeps it, whatever its value (so `--protocol dift --context 7
# --context-topk 5 --radius 12 --temperature 0.1` is DINO's setting, and `--protocol dift --sam
# vit_b` keeps SAM).
_DIFT_PROPAGATION: dict[str, object] = {
    "context": 28,  # DIFT's SD setting (eval_davis.py README): n_last_frames 28, topk 15,
    "context_topk": 15,  # size_mask_neighborhood 15 (cells, not scaled), temperature 0.2
    "radius": 15,
    "temperature": 0.2,
    "global_first_frame": False,  # the first frame is searched inside the window too
    "instance_weight": 0.0,  # label propagation alone
    "sam": "none",  # no refinement
}
PROTOCOL_PRESETS: dict[str, dict[str, object]] = {
    "pdmtrack": {},
    "dift": _DIFT_PROPAGATION,
    "authors-code": {  # the authors' public PDM code (pdm_matching.py, PerMIRS/), propagated as DIFT does
        **_DIFT_PROPAGATION,
        "model": "CompVis/stable-diffusion-v1-4",
        "layer": "up_blocks.3.attentions.1.transformer_blocks.0",  # their PerMIS/PerMIR feature block
        "size": 512,
        "square": True,
        "inversion": "ddim-reconstruct",
        "ddim_steps": 50,
        "timestep": 1,  # the reconstruction's last step (their attention_store[49])
        "prompt_template": "A photo",
        "separate_qk": True,
        "appearance_agg": "euclidean-vote",
        "vote_topk": 100,
    },
}
