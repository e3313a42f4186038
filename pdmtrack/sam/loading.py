"""Loading Segment Anything: build the model from segment-anything's own classes, from a
local checkpoint (safetensors, or a ``.pth`` state dict read with ``weights_only=True``) or
from the official checkpoint, downloaded once into the cache folder and verified by its sha256.
SAM 2.1 (``--sam sam2.1-*``) comes through transformers (``sam.hiera``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from pdmtrack.config import SamConfig
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import atomic_path, hub_offline, user_cache_dir
from pdmtrack.sam.hiera import SAM2_MODELS, HieraBackend, load_hiera_model
from pdmtrack.sam.refine import SamRefiner
from pdmtrack.sam.vit import VitBackend

ARCHITECTURE_KEY = "pdmtrack.sam_architecture"  # safetensors metadata key holding the architecture
_LOAD_ERRORS = (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, TypeError, OSError)

# Official checkpoints (segment-anything README). sha256 values agree across several public
# projects that pin them (micro-sam's model registry, download scripts and audits).
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "vit_b": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


@dataclass(frozen=True)
class SamArchitecture:
    """Every size that segment-anything's ``_build_sam`` fixes, so tiny models fit too."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> SamArchitecture:
        fields = json.loads(text)
        fields["encoder_global_attn_indexes"] = tuple(fields["encoder_global_attn_indexes"])
        return SamArchitecture(**fields)


OFFICIAL_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}


def build_sam_model(arch: SamArchitecture) -> torch.nn.Module:
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given architecture."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    embedding_size = arch.img_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(
    config: SamConfig, device: torch.device, cache_dir: str | Path | None, dtype: torch.dtype = torch.float32
) -> SamRefiner | None:
    """The refiner ``config`` asks for: None for ``model_type='none'``; SAM 2.1 (``sam2.1-*``)
    from the HF hub or a local folder (``config.checkpoint``); else segment-anything's SAM from
    ``config.checkpoint`` or from the official checkpoint (downloaded once into ``cache_dir``,
    default ``~/.cache/pdmtrack/sam``). ``dtype``: the autocast precision on CUDA."""
    if config.model_type == "none":
        return None
    if config.model_type in SAM2_MODELS:
        return SamRefiner(HieraBackend(load_hiera_model(config.model_type, config.checkpoint, device), dtype), min_iou=config.min_iou)
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        if not path.is_file():
            raise ParameterError("sam_checkpoint", f"no such file: {path}")
    else:
        path = official_checkpoint(config.model_type, Path(cache_dir) if cache_dir is not None else default_sam_dir())
    sam = load_sam_model(path, config.model_type, device)
    return SamRefiner(VitBackend(sam, dtype), min_iou=config.min_iou)


def load_sam_model(path: str | Path, model_type: str, device: torch.device = torch.device("cpu")) -> torch.nn.Module:
    """Sam on ``device`` from a checkpoint file: safetensors (architecture from its metadata
    when present, else ``model_type``'s official one) or a ``.pth`` state dict (weights only).
    The weights are read straight onto ``device``."""
    path = Path(path)
    arch = OFFICIAL_ARCHITECTURES[model_type]
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                stored = (handle.metadata() or {}).get(ARCHITECTURE_KEY)
            arch = SamArchitecture.from_json(stored) if stored else arch
            state = load_file(str(path), device=str(device))
        else:
            state = torch.load(path, map_location=device, weights_only=True)
        with device:
            sam = build_sam_model(arch)
        sam.load_state_dict(state)
    except _LOAD_ERRORS as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(path, f"not a SAM {model_type} checkpoint ({problem})") from err
    return sam


def default_sam_dir() -> Path:
    """$XDG_CACHE_HOME/pdmtrack/sam, else ~/.cache/pdmtrack/sam."""
    return user_cache_dir() / "sam"


def official_checkpoint(model_type: str, cache_dir: Path) -> Path:
    """Path of the official checkpoint in ``cache_dir``, downloaded and verified if absent."""
    url, sha256 = OFFICIAL_CHECKPOINTS[model_type]
    target = cache_dir / url.rsplit("/", 1)[1]
    if not target.is_file():
        download_verified(url, sha256, target)
    return target


def download_verified(url: str, sha256: str, target: Path) -> None:
    """Download ``url`` to a temporary name beside ``target``, check its sha256, rename.

    Offline (``HF_HUB_OFFLINE=1``) or unreachable -> InputError naming the flags that avoid
    the download; a wrong hash -> InputError and nothing left behind.
    """
    hint = "pass --sam-checkpoint FILE (a local SAM checkpoint) or --sam none"
    if hub_offline():
        raise ParameterError("sam", f"offline (HF_HUB_OFFLINE is set), cannot download {url}; {hint}")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tmp.open("wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}", disable=None) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != sha256:
                raise ParameterError("sam", f"{url} downloaded with sha256 {digest.hexdigest()}, expected {sha256}; {hint}")
    except (urllib.error.URLError, OSError) as err:
        raise ParameterError("sam", f"cannot download {url} ({err}); {hint}") from err
