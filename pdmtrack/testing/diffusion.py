"""A tiny random-weight diffusers pipeline folder (SDXL- or SD-1.x-shaped) built offline.

The folder has the layout of a real checkpoint (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder(_2)/``, ``tokenizer(_2)/``, ``scheduler/``, safetensors weights), so it loads
through :func:`pdmtrack.features.model.load_diffusion_parts` exactly like a user's
``--model PATH``. The CLIP tokenizers are built from a small ``vocab.json`` + ``merges.txt``
written here: all 256 byte-level tokens (so any text tokenizes) plus merges that make
"a", "photo", "of", "and", "dog" and "cat" one token each and "hotdog" two ("hot" + "dog").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

MULTI_TOKEN_WORD = "hotdog"  # tokenizes to two tokens ("hot", "dog</w>")
_WHOLE_WORDS = ("photo", "of", "and", "dog", "cat")  # one token each ("a" already is)
_PREFIXES = ("hot",)  # word starts that are tokens of their own (no end-of-word mark)
_EOW = "</w>"
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_MAX_TOKENS = 77
_FAMILIES = ("sdxl", "sd")


def _bytes_to_unicode() -> list[str]:
    """The byte -> printable character table of byte-level BPE (GPT-2 / CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _merges_for(piece: str, end_of_word: bool) -> list[tuple[str, str]]:
    """Left-to-right merges that join ``piece`` into one token."""
    symbols = list(piece)
    if end_of_word:
        symbols[-1] += _EOW
    merges = []
    token = symbols[0]
    for symbol in symbols[1:]:
        merges.append((token, symbol))
        token += symbol
    return merges


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the tiny CLIP tokenizer."""
    base = _bytes_to_unicode()
    tokens = base + [ch + _EOW for ch in base]
    merges: list[tuple[str, str]] = []
    pieces = [(w, True) for w in _WHOLE_WORDS] + [(p, False) for p in _PREFIXES]
    for piece, end_of_word in pieces:
        for pair in _merges_for(piece, end_of_word):
            if pair not in merges:
                merges.append(pair)
    tokens += ["".join(pair) for pair in merges]
    tokens += [_BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def write_tiny_tokenizer(folder: Path, pad_token: str):
    """Write vocab.json + merges.txt, load them as a CLIPTokenizer and save it in full."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(folder, pad_token=pad_token, model_max_length=_MAX_TOKENS)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_text_encoder(tokenizer, with_projection: bool, hidden: int, projection: int, layers: int = 2):
    """A random CLIP text encoder for ``tokenizer`` (with a pooled projection, like SDXL's second)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=_MAX_TOKENS,
        projection_dim=projection,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_cls(config).eval()


def _vae(scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    blocks = 4  # three downsamplings: latent = image / 8, as in SD and SDXL
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    ).eval()


def _sdxl_unet(cross_attention_dim: int, pooled_dim: int):
    """SDXL's block layout in miniature: the last attention up-block (up_blocks.1) has three
    attentions of two transformer blocks, so the default block is named as in SDXL."""
    from diffusers import UNet2DConditionModel

    time_embed_dim = 8
    return UNet2DConditionModel(
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim,
        norm_num_groups=32,
    ).eval()


def _sd_unet(cross_attention_dim: int):
    """SD 1.x's block layout in miniature (four levels, attention in the first three up-blocks
    counted from the bottom), so the default block is up_blocks.3.attentions.2.transformer_blocks.0."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        attention_head_dim=2,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    ).eval()


_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def _assemble(staging: Path, family: str):
    """Build every component in ``staging`` (tokenizers first: the encoders need their ids)."""
    from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    tokenizer = write_tiny_tokenizer(staging / "tokenizer", pad_token=_EOS)
    if family == "sdxl":
        tokenizer_2 = write_tiny_tokenizer(staging / "tokenizer_2", pad_token="!")
        text_encoder = tiny_text_encoder(tokenizer, with_projection=False, hidden=32, projection=32)
        text_encoder_2 = tiny_text_encoder(tokenizer_2, with_projection=True, hidden=32, projection=32)
        return StableDiffusionXLPipeline(
            vae=_vae(scaling_factor=0.13025, force_upcast=True),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=_sdxl_unet(cross_attention_dim=64, pooled_dim=32),
            scheduler=EulerDiscreteScheduler(**_SCHEDULE, timestep_spacing="trailing"),
        )
    return StableDiffusionPipeline(
        vae=_vae(scaling_factor=0.18215, force_upcast=False),
        text_encoder=tiny_text_encoder(tokenizer, with_projection=False, hidden=32, projection=32),
        tokenizer=tokenizer,
        unet=_sd_unet(cross_attention_dim=32),
        scheduler=PNDMScheduler(**_SCHEDULE, skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(path: Path, family: str = "sdxl", seed: int = 0) -> Path:
    """Write a tiny random-weight ``family`` ("sdxl" or "sd") diffusers folder at ``path``.

    ``path`` must not exist or be an empty folder; the folder appears complete or not at all
    (built beside it and renamed). The weights depend only on ``seed``. Returns ``path``.
    """
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {_FAMILIES}, not {family!r}")
    with staged_folder(path) as staging:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipeline = _assemble(staging, family)
        pipeline.save_pretrained(staging, safe_serialization=True)
    return Path(path)


@contextlib.contextmanager
def staged_folder(path: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``path`` (which must be absent or empty) and rename it to
    ``path`` on success, so the folder appears complete or not at all."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
