"""Load the parts of a diffusion checkpoint PDM needs: UNet, VAE, tokenizers, text encoders.

``--model`` is a Hugging Face hub id (fetched into the standard HF cache; only the needed
components and one weight variant are downloaded) or a local diffusers folder with the same
layout. Both end up as a local folder that one loader reads, always from safetensors. With
``HF_HUB_OFFLINE=1`` (read at call time) or when the hub cannot be reached, a model already
in the cache loads without any network access; a missing one is a one-line ``InputError``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from pdmtrack.config import FeatureConfig
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import hub_offline, read_json

log = logging.getLogger(__name__)

_FP16_MARK = ".fp16."
_NOT_CACHED = (
    "is not in the Hugging Face cache and the hub cannot be reached; download it once or pass a local diffusers folder with --model PATH"
)
# Components per family; SDXL conditions its UNet on both text encoders.
_TEXT_PARTS = {"sd": (("tokenizer", "text_encoder"),), "sdxl": (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))}
# Files whose content identifies a local folder (weights are identified by size and mtime).
_CONFIG_FILES = {
    "model_index.json",
    "config.json",
    "scheduler_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
}


@dataclass
class DiffusionParts:
    """What feature extraction needs from a checkpoint, on one device and dtype.

    family: "sdxl" (two text encoders, UNet conditioned on pooled text + size ids) or "sd".
    fingerprint: identifies the weights (hub id@commit, or a hash of a local folder).
    prediction_type: what the UNet predicts ("epsilon" or "v_prediction").
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    tokenizers: list
    text_encoders: list
    alphas_cumprod: torch.Tensor
    family: str
    fingerprint: str
    prediction_type: str = "epsilon"


def load_diffusion_parts(config: FeatureConfig, device: torch.device, dtype: torch.dtype) -> DiffusionParts:
    """Load ``config.model`` (hub id or local folder) onto ``device`` in ``dtype``."""
    local = Path(config.model).expanduser()
    if local.is_dir():
        return _load_folder(local, device, dtype, fingerprint=f"local:{folder_hash(local)}")
    if local.is_file():
        raise ParameterError("model", f"'{config.model}' is a file; pass a diffusers folder or a hub id")
    if _looks_like_path(config.model):
        raise ParameterError("model", f"folder '{config.model}' does not exist")
    folder, commit, cache_only = _resolve_hub(config.model, config.revision, dtype)
    try:
        return _load_folder(folder, device, dtype, fingerprint=f"hub:{config.model}@{commit}")
    except _MissingComponent as err:
        if cache_only:  # a partial snapshot in the cache (e.g. only the other weight variant)
            raise ParameterError("model", f"'{config.model}' {_NOT_CACHED}") from err
        raise


class _MissingComponent(InputError):
    """A component (or its weights) is absent from a diffusers folder."""


def _looks_like_path(model: str) -> bool:
    """A string that can only be a path (hub ids are 'owner/name')."""
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1 or model.endswith("/")


# ----------------------------------------------------------------------------- hub


def _hub_cache() -> Path:
    """The HF hub cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _is_connection_error(err: BaseException) -> bool:
    """Network trouble (no route, DNS, timeout, offline mode, server error)."""
    from huggingface_hub.errors import HfHubHTTPError

    names = {cls.__name__ for cls in type(err).__mro__}
    transport = {"TransportError", "TimeoutException", "ConnectionError", "OfflineModeIsEnabled"}
    return bool(names & transport) or isinstance(err, (OSError, HfHubHTTPError))


def _resolve_hub(repo_id: str, revision: str | None, dtype: torch.dtype) -> tuple[Path, str, bool]:
    """(snapshot folder, commit, cache_only) of ``repo_id``, downloading what is missing.

    cache_only: the hub was not asked (offline or unreachable); the cache served it."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    cache = _hub_cache()
    if not hub_offline():
        try:
            info = HfApi().model_info(repo_id, revision=revision)
            patterns = _hub_patterns([s.rfilename for s in info.siblings or []], dtype, repo_id)
            folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=patterns, cache_dir=cache)
            return Path(folder), str(info.sha), False
        except GatedRepoError as err:
            problem = f"'{repo_id}' is gated on the hub; accept its licence and log in (hf auth login)"
            raise ParameterError("model", problem) from err
        except RevisionNotFoundError as err:
            raise ParameterError("revision", f"'{revision}' is not a revision of '{repo_id}'") from err
        except (RepositoryNotFoundError, HFValidationError) as err:
            problem = f"'{repo_id}' is neither a local folder nor a model on the Hugging Face hub"
            raise ParameterError("model", problem) from err
        except Exception as err:  # noqa: BLE001 - only network trouble falls back to the cache
            if not _is_connection_error(err):
                raise
            log.info("hub unreachable (%s); looking for %s in the cache", type(err).__name__, repo_id)
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - LocalEntryNotFoundError, HFValidationError, ...
        raise ParameterError("model", f"'{repo_id}' {_NOT_CACHED}") from err
    return Path(folder), Path(folder).name, True


def _hub_patterns(files: list[str], dtype: torch.dtype, repo_id: str) -> list[str]:
    """Files to fetch: configs and tokenizers, and one weight variant per model component."""
    patterns = ["model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*"]
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        in_component = [f for f in files if f.startswith(f"{component}/")]
        if not in_component:
            continue
        patterns.append(f"{component}/config.json")
        weights = [f for f in in_component if re.search(r"\.safetensors(\.index(\.[\w-]+)?\.json)?$", f)]
        if not weights:
            problem = f"'{repo_id}' has no safetensors weights for {component} (pdmtrack loads only safetensors)"
            raise ParameterError("model", problem)
        variant = _pick_variant(weights, dtype)
        patterns += [f for f in weights if (_FP16_MARK in Path(f).name) == (variant == "fp16")]
    return patterns


# ----------------------------------------------------------------------------- folder


def _pick_variant(weight_files: list[str], dtype: torch.dtype) -> str | None:
    """ "fp16" when fp16 weights exist and either fp16 is wanted or nothing else exists."""
    has_fp16 = any(_FP16_MARK in Path(f).name for f in weight_files)
    has_plain = any(_FP16_MARK not in Path(f).name for f in weight_files)
    return "fp16" if has_fp16 and (dtype == torch.float16 or not has_plain) else None


def _component_dir(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_dir():
        raise _MissingComponent(folder, f"missing component '{name}/' (not a complete diffusers folder)")
    return path


def _weights_variant(component: Path, dtype: torch.dtype) -> str | None:
    """The weight variant to load from ``component``, after checking its files are whole."""
    weights = [p.name for p in component.iterdir() if p.name.endswith(".safetensors")]
    if not weights:
        raise _MissingComponent(component.parent, f"component '{component.name}/' has no .safetensors weights")
    variant = _pick_variant(weights, dtype)
    _check_weight_files(component, variant)
    return variant


def _check_weight_files(component: Path, variant: str | None) -> None:
    """Read the header of every weight file of ``variant`` (safetensors checks that the header
    parses and that the data covers the file exactly) and that an index's shards exist."""
    from safetensors import SafetensorError, safe_open

    damaged = "damaged or incomplete weights; re-download"
    for path in sorted(component.iterdir()):
        if not path.name.endswith((".safetensors", ".safetensors.index.json")):
            continue
        if (_FP16_MARK in path.name) != (variant == "fp16"):
            continue
        if path.name.endswith(".json"):
            index = read_json(path)
            shards = set(index.get("weight_map", {}).values()) if isinstance(index, dict) else set()
            missing = sorted(name for name in shards if not (component / name).is_file())
            if missing:
                raise InputError(component / missing[0], f"missing shard: {damaged}")
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise InputError(path, f"{damaged} ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err


def _check_tokenizer_files(tok_dir: Path) -> None:
    """Parse every JSON file of a tokenizer folder, so a damaged one is named before any load."""
    for path in sorted(tok_dir.glob("*.json")):
        try:
            read_json(path)
        except InputError as err:
            raise InputError(path, f"damaged or incomplete tokenizer file; re-download ({err.problem})") from err


def _load_tokenizer(tokenizer_cls: type, tok_dir: Path) -> object:
    """``tokenizer_cls`` from ``tok_dir``; a vocabulary or merges file it cannot parse is an
    InputError naming the folder (the tokenizers library raises a bare ``Exception``)."""
    try:
        return tokenizer_cls.from_pretrained(tok_dir, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - tokenizers' parse errors are plain Exceptions
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(tok_dir, f"damaged or incomplete tokenizer files; re-download ({first_line})") from err


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise _MissingComponent(path.parent.parent, f"missing {path.parent.name}/{path.name}")
    return read_json(path)  # type: ignore[return-value]


def _family(unet_config: dict, folder: Path) -> str:
    addition = unet_config.get("addition_embed_type")
    if addition == "text_time":
        return "sdxl"
    if addition is None:
        return "sd"
    problem = f"unsupported UNet (addition_embed_type '{addition}'); use an SD 1.x/2.x or SDXL checkpoint"
    raise InputError(folder, problem)


def _load_folder(folder: Path, device: torch.device, dtype: torch.dtype, fingerprint: str) -> DiffusionParts:
    """Load the needed components of a diffusers folder (safetensors only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # per-tensor "Loading weights" bars on every run

    unet_dir = _component_dir(folder, "unet")
    family = _family(_read_json(unet_dir / "config.json"), folder)
    vae_dir = _component_dir(folder, "vae")
    scheduler_config = _read_json(_component_dir(folder, "scheduler") / "scheduler_config.json")
    text_dirs = [(_component_dir(folder, tok), _component_dir(folder, enc)) for tok, enc in _TEXT_PARTS[family]]
    # accelerate: weights go straight into empty modules (no random init first) and, on a
    # GPU, straight onto the device (no host copy of the whole model).
    common = {"use_safetensors": True, "local_files_only": True, "low_cpu_mem_usage": True}
    if device.type == "cuda":
        common["device_map"] = {"": device}

    vae_config = _read_json(vae_dir / "config.json")
    # SDXL's VAE overflows in fp16; diffusers' own pipelines upcast it the same way.
    vae_dtype = torch.float32 if vae_config.get("force_upcast") and dtype == torch.float16 else dtype
    # Every component's weights are checked before the first (slow) load.
    unet_variant = _weights_variant(unet_dir, dtype)
    vae_variant = _weights_variant(vae_dir, vae_dtype)
    text_variants = [_weights_variant(enc_dir, dtype) for _, enc_dir in text_dirs]
    for tok_dir, _ in text_dirs:
        _check_tokenizer_files(tok_dir)
    unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=dtype, variant=unet_variant, **common)
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=vae_dtype, variant=vae_variant, **common)
    tokenizers, text_encoders = [], []
    for index, ((tok_dir, enc_dir), variant) in enumerate(zip(text_dirs, text_variants)):
        tokenizers.append(_load_tokenizer(CLIPTokenizer, tok_dir))
        encoder_cls = CLIPTextModelWithProjection if family == "sdxl" and index == 1 else CLIPTextModel
        encoder = encoder_cls.from_pretrained(enc_dir, dtype=dtype, variant=variant, **_transformers_kwargs(common))
        text_encoders.append(encoder.to(device).eval().requires_grad_(False))
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in {"epsilon", "v_prediction"}:
        raise InputError(folder, f"unsupported prediction_type '{prediction_type}' (use epsilon or v_prediction)")
    return DiffusionParts(
        unet=unet.to(device).eval().requires_grad_(False),
        vae=vae.to(device).eval().requires_grad_(False),
        tokenizers=tokenizers,
        text_encoders=text_encoders,
        alphas_cumprod=_alphas_cumprod(scheduler_config),
        family=family,
        fingerprint=fingerprint,
        prediction_type=prediction_type,
    )


def _transformers_kwargs(diffusers_kwargs: dict) -> dict:
    """The same loading options for a transformers model (it always loads without a random init)."""
    return {k: v for k, v in diffusers_kwargs.items() if k != "low_cpu_mem_usage"}


def _alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """The training noise schedule (any diffusers scheduler config; betas as DDPM computes them)."""
    from diffusers import DDPMScheduler

    known = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    schedule = DDPMScheduler(**{k: v for k, v in scheduler_config.items() if k in known})
    return schedule.alphas_cumprod.to(torch.float64)


def folder_hash(folder: Path) -> str:
    """Cheap identity of a local folder: config/tokenizer file contents, weight sizes+mtimes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.name in _CONFIG_FILES:
            digest.update(f"{rel}\0".encode() + path.read_bytes() + b"\0")
        elif path.name.endswith(".safetensors"):
            stat = path.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]
