"""Every tunable of pdmtrack, grouped by the stage that uses it.

Defaults follow the paper (PDM features) and DIFT's label propagation. Each field is an :func:`option`: it
carries its help and its flat option name, the keyword of ``Tracker(...)`` and
``TrackSettings.from_options(...)`` and, with dashes, the CLI's flag (``feature_timestep``:
``timestep``, ``--timestep``). Every field is checked against its type when a settings object
is made; a bad value is a :class:`ParameterError` naming the option.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import string
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, Union, get_args, get_origin, get_type_hints

from pdmtrack.errors import ParameterError

if TYPE_CHECKING:
    from typing_extensions import Unpack

Inversion = Literal["aidi", "ddim", "ddim-reconstruct", "noise"]
AppearanceAgg = Literal["mean", "topk-vote", "euclidean-vote"]
SamType = Literal[
    "vit_b", "vit_l", "vit_h", "sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large", "none"
]
Backend = Literal["auto", "decord", "pyav"]
FeatureKind = Literal["pdm", "dift", "dinov2", "dinov3"]
InstancePrior = Literal["features", "pdm"]
Pooling = Literal["gem", "cls"]
Protocol = Literal["pdmtrack", "dift", "authors-code"]


def check_choice(name: str, value: object, allowed: tuple) -> None:
    """ParameterError naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ParameterError(name, f"unknown value '{value}' (choose from {', '.join(map(str, allowed))})")


def check_at_least(name: str, value: float, least: float) -> None:
    """ParameterError naming ``name`` unless ``value >= least``."""
    if value < least:
        raise ParameterError(name, f"must be at least {least}, got {value}")


def check_finite(name: str, value: float) -> None:
    """ParameterError naming ``name`` when ``value`` is NaN or infinite."""
    if not math.isfinite(value):
        raise ParameterError(name, f"must be a finite number, got {value}")


def option(default: object, help: str, name: str | None = None, *, cli: bool = True, path: bool = False, negated: bool = False) -> Any:
    """A settings field with its ``help`` and its flat option ``name`` (default: the field's name).

    ``cli``: the CLI has a flag for it; ``path``: a ``str`` field that may name a local path
    (a ``Path`` is taken, stored as its string); ``negated``: the option is the field's
    negation (``no_cache`` sets ``use_cache``)."""
    metadata = {"help": help, "name": name, "cli": cli, "path": path, "negated": negated}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionField:
    """One settings field seen as a flat option."""

    name: str  # the flat option name: the library keyword; the CLI flag is --<name with dashes>
    field: str  # the settings field it sets
    group: str  # the TrackSettings group holding the field ("" for a settings class of its own)
    hint: Any  # the field's type
    default: object  # the option's default (the field's, negated for a negated option)
    help: str
    cli: bool  # the CLI has a flag for it
    path: bool  # a str field that may name a local path
    negated: bool  # the option is the negation of the (bool) field

    @property
    def accepted(self) -> Any:
        """The type a caller may give: the field's type, with str for a Path and Path for a path string."""
        members = get_args(self.hint) if _is_union(self.hint) else (self.hint,)
        extra = (str,) if Path in members else (Path,) if self.path else ()
        return Union[(*members, *extra)]  # one member: that type itself

    def to_field(self, value: object) -> object:
        """The field's value for the option's ``value``."""
        if not self.negated:
            return value
        return not _checked(self.name, bool, value, path=False)


def _is_union(hint: object) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


@functools.cache
def options_of(config_class: type) -> dict[str, OptionField]:
    """Flat option name -> its field, for a settings class (TrackSettings: over all its groups)."""
    hints = get_type_hints(config_class)
    table: dict[str, OptionField] = {}
    for item in fields(config_class):
        if is_dataclass(hints[item.name]):  # a group of TrackSettings
            table.update({name: replace(found, group=item.name) for name, found in options_of(hints[item.name]).items()})
            continue
        meta = item.metadata
        name = meta["name"] or item.name
        default = not item.default if meta["negated"] else item.default
        table[name] = OptionField(name, item.name, "", hints[item.name], default, meta["help"], meta["cli"], meta["path"], meta["negated"])
    return table


def check_fields(config: object) -> None:
    """Check every field of the settings dataclass ``config`` against its type (ParameterError
    naming its option): a Literal field holds one of its values, a number is finite and no bool;
    a str for a Path field becomes a Path, a Path for a path string its string, a list a tuple.
    Every settings class calls it first in ``__post_init__``."""
    for found in options_of(type(config)).values():
        value = getattr(config, found.field)
        checked = _checked(found.name, found.hint, value, found.path)
        if checked is not value:
            object.__setattr__(config, found.field, checked)


_MISMATCH = object()


def _checked(name: str, hint: Any, value: object, path: bool) -> object:
    """``value`` as a field of type ``hint`` holds it; ParameterError naming ``name`` otherwise."""
    converted = _converted(hint, value, path)
    if converted is _MISMATCH:
        if get_origin(hint) is Literal:
            check_choice(name, value, get_args(hint))
        raise ParameterError(name, f"expected {_describe(hint, path)}, got {value!r}")
    if isinstance(converted, numbers.Real) and not isinstance(converted, bool):
        check_finite(name, converted)
    return converted


def _converted(hint: Any, value: object, path: bool) -> object:
    """``value`` as a field of type ``hint`` holds it, or _MISMATCH."""
    if get_origin(hint) is Literal:
        return value if value in get_args(hint) else _MISMATCH
    if _is_union(hint):
        matches = (_converted(member, value, path) for member in get_args(hint))
        return next((match for match in matches if match is not _MISMATCH), _MISMATCH)
    if get_origin(hint) is tuple:  # tuple[str, ...]
        fits = isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
        return tuple(value) if fits else _MISMATCH  # type: ignore[arg-type]
    if hint is type(None):
        return value if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if hint in (int, float):
        kind = numbers.Integral if hint is int else numbers.Real
        return value if isinstance(value, kind) and not isinstance(value, bool) else _MISMATCH
    if hint is str:
        return os.fspath(value) if path and isinstance(value, os.PathLike) else value if isinstance(value, str) else _MISMATCH
    if hint is Path:
        return Path(value) if isinstance(value, (str, os.PathLike)) else _MISMATCH
    raise TypeError(f"settings fields of type {hint} are not checked")


def _describe(hint: Any, path: bool) -> str:
    """What a field of type ``hint`` takes, for an error message."""
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    if _is_union(hint):
        return " or ".join(_describe(member, path) for member in get_args(hint))
    if get_origin(hint) is tuple:
        return "a list of strings"
    names = {int: "an integer", float: "a number", bool: "True or False", str: "a string or Path" if path else "a string"}
    return names.get(hint) or {Path: "a path (str or Path)", type(None): "None"}[hint]


Config = TypeVar("Config")


def config_from_options(config_class: type[Config], **options: object) -> Config:
    """A settings object (not TrackSettings) from flat option names; the others keep their defaults."""
    table = options_of(config_class)
    unknown = sorted(set(options) - set(table))
    if unknown:
        raise TypeError(f"unknown {config_class.__name__} option(s) {', '.join(unknown)}; known: {', '.join(table)}")
    return config_class(**{table[name].field: table[name].to_field(value) for name, value in options.items()})


# Largest size (short side in pixels): twice the 1024 pixels SDXL was trained at (SD 1.x: 512);
# inputs far beyond the training resolution give no better features and exhaust memory.
MAX_SIZE = 2048


def split_prompt_template(name: str, template: str) -> tuple[str, str]:
    """The text before and after the one ``{cls}`` of ``template``; ParameterError naming ``name``
    for any other field (``{bad}``, ``{}``, ``{cls.x}``), a second ``{cls}`` or a lone brace."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ParameterError(name, f"'{template}' is not a valid template ({err}); write {{{{ or }}}} for a literal brace") from None
    fields_given = [(field_name, spec, conversion) for _, field_name, spec, conversion in parsed if field_name is not None]
    if fields_given != [("cls", "", None)]:
        problem = f"'{template}' must contain '{{cls}}' exactly once and no other {{...}} field (write {{{{ or }}}} for a literal brace)"
        raise ParameterError(name, problem)
    at = next(i for i, (_, field_name, _, _) in enumerate(parsed) if field_name is not None)
    return "".join(piece[0] for piece in parsed[: at + 1]), "".join(piece[0] for piece in parsed[at + 1 :])


DEFAULT_MODEL = "stabilityai/sdxl-turbo"
DEFAULT_DINOV2 = "facebook/dinov2-base"
DEFAULT_DINOV3 = "facebook/dinov3-vitl16-pretrain-lvd1689m"


@dataclass(frozen=True)
class FeatureConfig:
    """How PDM features are computed (the feature cache keys on all of it)."""

    model: str = option(DEFAULT_MODEL, "HF hub id or local diffusers folder.", path=True)
    revision: str | None = option(None, "Hub revision of the model (branch, tag or commit).")
    layer: str | None = option(None, "Transformer block to hook (default: the last block of the last attention up-block).")
    size: int = option(512, "Short side of the model input in pixels (a multiple of 64); the long side is rounded to a multiple of 64.")
    square: bool = option(False, "Squash frames to size x size (the paper).")
    inversion: Inversion = option(
        "aidi",
        "How frames are inverted to the feature timestep: aidi (the paper), ddim, ddim-reconstruct (the authors' code), noise (DIFT style).",
    )
    feature_timestep: int = option(
        249, "Feature timestep (249: the first, least noisy, step of SDXL-turbo's 4-step trailing schedule).", "timestep"
    )
    schedule_steps: int = option(4, "Steps of the trailing schedule the aidi inversion walks.", cli=False)
    fixed_point_iters: int = option(2, "AIDI fixed-point iterations K per inversion step.")
    ddim_steps: int = option(50, "Steps of the full-range DDIM schedule of the ddim and ddim-reconstruct inversions.", cli=False)
    prompt_template: str = option(
        "a photo of a {cls}", "Prompt naming the class ({cls}); the empty prompt when no class is given.", cli=False
    )
    seed: int = option(0, "Seeds the noise of the noise inversion.", cli=False)
    separate_qk: bool = option(
        False, "Also keep attn1's query and key apart (appearance_parts), as the authors' code matches them.", cli=False
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.size < 64 or self.size % 64:
            raise ParameterError("size", f"must be a positive multiple of 64, got {self.size}")
        if self.size > MAX_SIZE:
            raise ParameterError(
                "size",
                f"{self.size} is too large: at most {MAX_SIZE} (SDXL was trained at 1024 pixels, SD 1.x at 512; "
                "far larger inputs give no better features and exhaust memory)",
            )
        check_at_least("timestep", self.feature_timestep, 0)
        check_at_least("fixed_point_iters", self.fixed_point_iters, 0)


@dataclass(frozen=True)
class MatchConfig:
    """PDM maps (paper Eq. 3-7) and their fusion with label propagation."""

    tau: float = option(0.5, "Threshold of the min-max normalised cross-attention map that makes the reference mask from a class name.")
    appearance_agg: AppearanceAgg = option("mean", "Pooling of the appearance match over the reference tokens.")
    vote_topk: int = option(100, "Tokens each reference token votes for with the *-vote appearance pooling (the authors' code).")
    min_fraction: float = option(0.5, "Mask cover making a grid cell a reference token (else the best cell).", cli=False)
    segment_threshold: float = option(0.5, "PerMIS-image without SAM: the mask is the upsampled combined map >= this.", cli=False)
    instance_weight: float = option(0.5, "Weight of the PDM instance prior fused with propagation (0 = off).")

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0.0 <= self.tau <= 1.0:
            raise ParameterError("tau", f"must lie in [0, 1] (it thresholds a min-max normalised map), got {self.tau}")
        check_at_least("vote_topk", self.vote_topk, 1)
        if not 0.0 <= self.instance_weight <= 1.0:
            raise ParameterError("instance_weight", f"must lie in [0, 1], got {self.instance_weight}")


@dataclass(frozen=True)
class MemoryConfig:
    """Label propagation (DINO/DIFT protocol); defaults are DIFT's best SD setting."""

    context: int = option(28, "Context frames kept in memory besides the first frame (n).")
    context_topk: int = option(15, "Context entries kept per target cell (label propagation).")
    radius: int = option(
        15, "Window radius in cells, for a 30-cell short side and scaled with the grid (protocols dift and authors-code: cells, as is)."
    )
    temperature: float = option(0.2, "Affinity temperature: affinity = exp(cos / temperature).")
    global_first_frame: bool = option(
        True, "Match the first frame without the window (re-entry anywhere); False is DINO's and DIFT's exact step.", cli=False
    )
    max_keyframes: int = option(8, "Given masks (corrections) kept as permanent references besides the first (the oldest go first).")
    protocol: Protocol = option(
        "pdmtrack",
        "pdmtrack, dift (DINO's and DIFT's eval_davis label propagation, step for step) or authors-code (the authors' PDM code "
        "path); options you do not give take the protocol's values.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least("context", self.context, 0)
        check_at_least("context_topk", self.context_topk, 1)
        check_at_least("radius", self.radius, 0)
        if self.temperature <= 0:
            raise ParameterError("temperature", f"must be positive, got {self.temperature}")
        check_at_least("max_keyframes", self.max_keyframes, 0)


@dataclass(frozen=True)
class SamConfig:
    """Segment Anything refinement."""

    model_type: SamType = option("vit_b", "SAM refinement model (none: no refinement).", "sam")
    checkpoint: Path | None = option(
        None, "Local SAM checkpoint: a file (vit_*) or a transformers folder (sam2.1-*) (default: download).", "sam_checkpoint"
    )
    min_iou: float = option(0.5, "Keep the coarse mask when SAM's best output has a lower IoU with it.", "sam_min_iou", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how things run; never changes results beyond floating point."""

    device: str = option("auto", "auto | cuda | cpu.")
    dtype: str = option("auto", "auto | fp16 | bf16 | fp32.")
    batch_size: int | str = option("auto", "Frames per feature batch, or auto (from free GPU memory on CUDA; 4 on CPU).")
    cache_dir: Path | None = option(None, "Feature cache folder (default: $PDMTRACK_CACHE_DIR, else the user cache).")
    use_cache: bool = option(True, "Do not read or write the feature cache.", "no_cache", negated=True)
    cache_max_gb: float | None = option(
        None, "Feature cache bound in GB (default: $PDMTRACK_CACHE_MAX_GB, else 20); least recently used entries go first."
    )
    compile: bool = option(
        False, "torch.compile the UNet's blocks (compile time on the first batch of each frame size; pays off on long GPU runs)."
    )
    backend: Backend = option("auto", "Video decoding backend.")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.batch_size != "auto":
            try:
                frames = int(self.batch_size)
            except (TypeError, ValueError):
                raise ParameterError("batch_size", f"must be a positive number of frames or auto, got '{self.batch_size}'") from None
            check_at_least("batch_size", frames, 1)
            object.__setattr__(self, "batch_size", frames)
        if self.cache_max_gb is not None and not self.cache_max_gb > 0:
            raise ParameterError("cache_max_gb", f"must be a positive number of GB, got {self.cache_max_gb} (no_cache turns the cache off)")


# The DINOv3 paper's video segmentation tracking input sizes (its section 6.1.5 and Table 5,
# S / M / L): short side in pixels for its patch-16 models.
DINOV3_SIZES = {"small": 480, "medium": 960, "large": 1440}


def dinov3_pixels(size: int | str) -> int:
    """The short side in pixels of a ``dinov3_size``: a number of pixels (at least 16) or a preset name."""
    if isinstance(size, str) and not size.strip().isdigit():
        if size not in DINOV3_SIZES:
            raise ParameterError("dinov3_size", f"'{size}' is neither a number of pixels nor a preset ({', '.join(DINOV3_SIZES)})")
        return DINOV3_SIZES[size]
    pixels = int(size)
    check_at_least("dinov3_size", pixels, 16)
    return pixels


@dataclass(frozen=True)
class SourceConfig:
    """Which features feed matching: PDM (the default) or a baseline of the paper's tables.

    dift: the UNet up-block output of the same diffusion model (``model``) at DIFT's
    timestep; None picks DIFT's published setting for the task (images: t = 261, up-block 1;
    video propagation: t = 51, up-block 2). dinov2 / dinov3: the patch tokens of
    ``dinov2_model`` / ``dinov3_model``. They are appearance-only (no semantic map, no class
    vectors). ``instance_prior`` pdm takes the instance prior of video propagation from PDM's
    diffusion features (``model``) whatever ``kind`` the appearance comes from.
    """

    kind: FeatureKind = option("pdm", "Features: pdm, or a baseline (dift, dinov2, dinov3).", "features")
    dift_timestep: int | None = option(None, "DIFT timestep (default: DIFT's, 261 for images, 51 for videos).")
    dift_up_block: int | None = option(None, "DIFT UNet up-block (default: DIFT's, 1 for images, 2 for videos).")
    dift_ensemble: int = option(8, "DIFT noise draws averaged (DIFT's ensemble_size).")
    dinov2_model: str = option(DEFAULT_DINOV2, "DINOv2 hub id or local transformers folder (features dinov2).", path=True)
    dinov2_size: int = option(
        448, "Short side of the DINOv2 input (features dinov2); 448 gives 32 patches of 14 pixels, the PDM grid at size 512."
    )

    dinov3_model: str = option(
        DEFAULT_DINOV3,
        "DINOv3 hub id (facebook/dinov3-*, gated: accept the licence once) or local transformers folder (features dinov3).",
        path=True,
    )
    dinov3_size: int | str = option(
        "small",
        "Short side of the DINOv3 input in pixels, or a preset of the DINOv3 paper's video tracking: small, medium, large (features dinov3).",
    )
    instance_prior: InstancePrior = option(
        "features",
        "Where video propagation's instance prior comes from: the --features source itself, or pdm (PDM's diffusion features, "
        "resampled to the propagation grid).",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least("dift_ensemble", self.dift_ensemble, 1)
        check_at_least("dinov2_size", self.dinov2_size, 14)
        object.__setattr__(self, "dinov3_size", dinov3_pixels(self.dinov3_size))
        if self.instance_prior == "pdm" and self.kind == "pdm":
            raise ParameterError(
                "instance_prior", "--features pdm already takes its instance prior from PDM; pdm is for dift, dinov2 and dinov3"
            )
        if self.dift_timestep is not None and not 0 < self.dift_timestep < 1000:
            raise ParameterError("dift_timestep", f"must lie in 1..999, got {self.dift_timestep}")


@dataclass(frozen=True)
class GlobalConfig:
    """Which global descriptor an index holds (recorded in its manifest)."""

    model: str = option(DEFAULT_DINOV2, "Global descriptor model: hub id or local folder (transformers ViT).", "global_model", path=True)
    pooling: Pooling = option("gem", "Global pooling of the patch tokens.")
    size: int = option(224, "Short side of the global model's input in pixels.", "global_size")
    gem_p: float = option(3.0, "Exponent of the GeM pooling.", cli=False)

    def __post_init__(self) -> None:
        check_fields(self)
        check_at_least("global_size", self.size, 14)
        if self.gem_p <= 0:
            raise ParameterError("gem_p", f"must be positive, got {self.gem_p}")


class TrackOptions(TypedDict, total=False):
    """Every flat tracker option with the type it takes: ``Tracker(**options)``,
    ``TrackSettings.from_options(**options)``; the help of each is its settings field's."""

    model: str | Path
    revision: str | None
    layer: str | None
    size: int
    square: bool
    inversion: Inversion
    timestep: int
    schedule_steps: int
    fixed_point_iters: int
    ddim_steps: int
    prompt_template: str
    seed: int
    separate_qk: bool
    tau: float
    appearance_agg: AppearanceAgg
    vote_topk: int
    min_fraction: float
    segment_threshold: float
    instance_weight: float
    context: int
    context_topk: int
    radius: int
    temperature: float
    global_first_frame: bool
    max_keyframes: int
    protocol: Protocol
    sam: SamType
    sam_checkpoint: str | Path | None
    sam_min_iou: float
    device: str
    dtype: str
    batch_size: int | str
    cache_dir: str | Path | None
    no_cache: bool
    cache_max_gb: float | None
    compile: bool
    backend: Backend
    features: FeatureKind
    dift_timestep: int | None
    dift_up_block: int | None
    dift_ensemble: int
    dinov2_model: str | Path
    dinov2_size: int
    dinov3_model: str | Path
    dinov3_size: int | str
    instance_prior: InstancePrior


@dataclass(frozen=True)
class TrackSettings:
    """Everything ``pdmtrack propagate`` (and the evaluators) need besides the inputs."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: SourceConfig = field(default_factory=SourceConfig)

    def __post_init__(self) -> None:
        if self.source.instance_prior == "pdm" and self.memory.protocol != "pdmtrack":
            problem = f"the {self.memory.protocol} protocol propagates labels without an instance prior; use it with --protocol pdmtrack"
            raise ParameterError("instance_prior", problem)

    def to_dict(self) -> dict:
        """Plain-JSON view (paths as strings), for reports and run records."""

        def clean(value: object) -> object:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return str(value) if isinstance(value, Path) else value

        return clean(asdict(self))  # type: ignore[return-value]

    @classmethod
    def from_options(cls, **options: Unpack[TrackOptions]) -> TrackSettings:
        """Settings from flat option names (``model=..., sam="none", context=7``); every option
        not given keeps its default, or the preset value of the ``protocol`` given. Unknown
        names are a ``TypeError``; a bad value a ParameterError naming the option."""
        unknown = sorted(set(options) - set(OPTION_FIELDS))
        if unknown:
            raise TypeError(f"unknown tracker option(s) {', '.join(unknown)}; known: {', '.join(OPTION_FIELDS)}")
        protocol = options.get("protocol", "pdmtrack")
        check_choice("protocol", protocol, get_args(Protocol))
        given = {**PROTOCOL_PRESETS[protocol], **options}  # an option the caller gave wins, even at its default value
        groups: dict[str, dict[str, object]] = {}
        for name, value in given.items():
            found = OPTION_FIELDS[name]
            groups.setdefault(found.group, {})[found.field] = found.to_field(value)
        defaults = cls()
        return cls(**{f.name: replace(getattr(defaults, f.name), **groups.get(f.name, {})) for f in fields(cls)})


# Flat tracker option name -> its settings field (and group).
OPTION_FIELDS = options_of(TrackSettings)

# What each protocol sets, by flat option name. An option the caller does not give takes the
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
