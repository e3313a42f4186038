"""Content-addressed on-disk cache of PDM features: one safetensors file per chunk of frames.

A chunk's key is the sha256 of its decoded frame bytes (with shape and dtype) and the
extractor's fingerprint (model id/revision or folder hash and every feature setting), so a
changed frame or a changed setting is a miss and nothing stale is ever served. Files are
written under a temporary name and renamed (``fsutil.atomic_path``), so a killed run leaves
only complete files and the next run resumes from them. A file that does not load, or whose
metadata or shapes disagree with the request, is deleted and treated as a miss.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pdmtrack.errors import InputError
from pdmtrack.features.types import FeatureSource, PDMFeatures
from pdmtrack.fsutil import atomic_path, user_cache_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
_REQUIRED = ("appearance", "semantic")
_OPTIONAL = ("class_vectors", "class_attention")
_SAFE_DIR_NAME = re.compile(r"[0-9A-Za-z_-]+")


def default_cache_dir() -> Path:
    """The default cache folder.

    $PDMTRACK_CACHE_DIR when set, else $XDG_CACHE_HOME/pdmtrack/features, else
    ~/.cache/pdmtrack/features.
    """
    explicit = os.environ.get("PDMTRACK_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return user_cache_dir() / "features"


def frames_key(frames: np.ndarray) -> str:
    """sha256 (hex) of a batch of decoded frames: shape, dtype and pixel bytes."""
    digest = hashlib.sha256(f"{frames.shape}|{frames.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(frames).data)
    return digest.hexdigest()


class _CorruptEntry(Exception):
    """A cache file that exists but cannot be trusted (raised and handled inside this module)."""


class FeatureCache:
    """Store of PDMFeatures per chunk of frames, keyed by frame content and ``fingerprint``.

    Layout: ``cache_dir/<fingerprint[:16]>/<key[:2]>/<key>.safetensors`` with
    ``key = sha256(frames_key + fingerprint)`` (a fingerprint that is not a plain name is
    replaced by its sha256 in the folder name). Tensors are stored as they come (dtype and
    shape kept exactly); absent optional fields are simply not stored.
    """

    def __init__(self, cache_dir: Path | None, fingerprint: str) -> None:
        if not fingerprint:
            raise ValueError("FeatureCache needs a non-empty fingerprint")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.fingerprint = fingerprint
        group = fingerprint if _SAFE_DIR_NAME.fullmatch(fingerprint) else _sha256(fingerprint)
        self.root = self.cache_dir / group[:16]

    def get(self, frames: np.ndarray) -> PDMFeatures | None:
        """The stored features of ``frames``, or None (a corrupt file is deleted first)."""
        content_key = frames_key(frames)
        path = self._path(content_key)
        if not path.is_file():
            return None
        try:
            return self._load(path, self._metadata(content_key, len(frames)))
        except (_CorruptEntry, SafetensorError, OSError, ValueError, RuntimeError) as err:
            log.warning("feature cache: discarding unreadable %s (%s)", path, err)
            path.unlink(missing_ok=True)
            return None

    def put(self, frames: np.ndarray, features: PDMFeatures) -> Path:
        """Store ``features`` of ``frames`` atomically; returns the file written."""
        if len(features) != len(frames):
            raise ValueError(f"{len(features)} feature frames for {len(frames)} input frames")
        tensors = {
            # a private contiguous copy: safetensors refuses tensors that share memory
            name: tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for name in _REQUIRED + _OPTIONAL
            if (tensor := getattr(features, name)) is not None
        }
        content_key = frames_key(frames)
        path = self._path(content_key)
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, tmp, metadata=self._metadata(content_key, len(frames)))
        except OSError as err:
            raise InputError(
                self.cache_dir,
                f"cannot write the feature cache ({err.strerror or err}); "
                "pass a writable --cache-dir or --no-cache",
            ) from err
        return path

    def _path(self, content_key: str) -> Path:
        key = _sha256(f"{content_key}|{self.fingerprint}")
        return self.root / key[:2] / f"{key}.safetensors"

    def _metadata(self, content_key: str, frame_count: int) -> dict[str, str]:
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "frames_key": content_key,
            "frame_count": str(frame_count),
        }

    @staticmethod
    def _load(path: Path, expected: dict[str, str]) -> PDMFeatures:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        for field, value in expected.items():
            if metadata.get(field) != value:
                raise _CorruptEntry(f"metadata {field}={metadata.get(field)!r}, expected {value!r}")
        unknown = set(tensors) - set(_REQUIRED + _OPTIONAL)
        missing = set(_REQUIRED) - set(tensors)
        if unknown or missing:
            raise _CorruptEntry(f"tensors {sorted(tensors)} (missing {sorted(missing)})")
        features = PDMFeatures(**tensors)
        _check_shapes(features, int(expected["frame_count"]))
        return features


def _check_shapes(features: PDMFeatures, frame_count: int) -> None:
    """Raise _CorruptEntry unless the tensors form a consistent record of ``frame_count`` frames."""
    appearance, semantic = features.appearance, features.semantic
    if appearance.ndim != 4 or semantic.ndim != 4:
        raise _CorruptEntry("appearance and semantic must be (B, C, h, w)")
    if appearance.shape[0] != frame_count or semantic.shape[0] != frame_count:
        raise _CorruptEntry(f"batch {appearance.shape[0]}/{semantic.shape[0]} != {frame_count}")
    if semantic.shape[-2:] != appearance.shape[-2:]:
        raise _CorruptEntry("semantic and appearance grids differ")
    vectors, attention = features.class_vectors, features.class_attention
    if vectors is not None and (vectors.ndim != 2 or vectors.shape[1] != semantic.shape[1]):
        raise _CorruptEntry(f"class_vectors shape {tuple(vectors.shape)}")
    if attention is not None:
        classes = attention.shape[1] if vectors is None else vectors.shape[0]
        if attention.shape != (frame_count, classes, *appearance.shape[-2:]):
            raise _CorruptEntry(f"class_attention shape {tuple(attention.shape)}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CachedFeatureSource:
    """A FeatureSource that serves chunks from a FeatureCache and computes and stores misses.

    ``hits`` and ``misses`` count chunks (calls). With ``cache=None`` (``--no-cache``) every
    call goes straight to ``source`` (counted as a miss) and nothing is written.
    """

    def __init__(self, source: FeatureSource, cache: FeatureCache | None) -> None:
        self.source = source
        self.cache = cache
        self.hits = 0
        self.misses = 0

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        """frames: (B, H, W, 3) uint8 RGB -> PDMFeatures with B frames."""
        cached = None if self.cache is None else self.cache.get(frames)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        features = self.source(frames)
        if self.cache is not None:
            self.cache.put(frames, features)
        return features


__all__ = ["CachedFeatureSource", "FeatureCache", "default_cache_dir", "frames_key"]
