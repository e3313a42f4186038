"""Content-addressed on-disk cache of PDM features, one entry per frame.

An entry's key is the sha256 of one decoded frame (pixel bytes, shape, dtype) and the
extractor's fingerprint (weights, block, every feature setting, class names, dtype), so the
batch size, ``--start`` and the video a frame came from do not matter, and a changed frame
or setting is a miss. Each entry is a safetensors file whose metadata repeats the key's
parts and carries a sha256 of its tensors' bytes; a read checks both (and the shapes), so a
damaged entry is discarded and recomputed, never served. The folder's size bound, eviction
and sharing between processes live in ``cache_folder.py``.

Exactness: ``CachedFeatureSource`` serves a batch from the cache only when every frame of it
is there; otherwise it computes the whole batch, because a frame's features depend in the
last bit on the batch it is computed in. Every tensor it returns is contiguous, so cached,
fresh and mixed runs give the same masks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pdmtrack.errors import InputError
from pdmtrack.features.cache_folder import CacheFolder, CacheFull, default_cache_dir, group_name, resolve_max_bytes
from pdmtrack.features.types import FeatureSource, PDMFeatures

log = logging.getLogger(__name__)

FORMAT_VERSION = "2"  # 1: one entry per batch; 2: one entry per frame, with a checksum
_REQUIRED = ("appearance", "semantic")
_OPTIONAL = ("class_vectors", "class_attention", "appearance_parts")


def frames_key(frames: np.ndarray) -> str:
    """sha256 (hex) of decoded pixels: shape, dtype and bytes (one frame or a batch)."""
    digest = hashlib.sha256(f"{frames.shape}|{frames.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(frames).data)
    return digest.hexdigest()


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


class _CorruptEntry(Exception):
    """An entry that exists but cannot be trusted (raised and handled inside this module)."""


class FeatureCache:
    """One frame's PDMFeatures per entry, keyed by frame content and ``fingerprint``.

    Entries live in ``folder/<fingerprint[:16]>/<key[:2]>/<key>.safetensors`` with
    ``key = sha256(frames_key(frame) + fingerprint)`` (a fingerprint that is not a plain name,
    or names one of the folder's own, is replaced by its sha256: ``group_name``). ``description`` (model, settings) is
    written beside them for ``pdmtrack cache info``. When the cache cannot take more (disk
    nearly full, unwritable), writing stops for this object with one warning and reading goes on.
    """

    def __init__(self, cache_dir: Path | None, fingerprint: str, *, max_gb: float | None = None, description: dict | None = None) -> None:
        if not fingerprint:
            raise ValueError("FeatureCache needs a non-empty fingerprint")
        self.folder = CacheFolder(cache_dir, resolve_max_bytes(max_gb))
        self.fingerprint = fingerprint
        self.description = {**(description or {}), "fingerprint": fingerprint, "format_version": FORMAT_VERSION}
        self.group = group_name(fingerprint)
        self.writing = True

    @property
    def cache_dir(self) -> Path:
        return self.folder.root

    def get(self, frame: np.ndarray) -> PDMFeatures | None:
        """The stored features of one (H, W, 3) frame (a batch of one), or None. An entry
        that fails its checks is deleted (unless replaced meanwhile) and is a miss."""
        content_key = frames_key(frame)
        path = self._path(content_key)
        try:
            with path.open("rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                data = handle.read()
        except OSError:  # absent, or evicted before the open
            return None
        try:
            features = _decode(data, self._metadata(content_key))
        except _CorruptEntry as err:
            log.warning("feature cache: discarding damaged entry %s (%s)", path, err)
            _unlink_if_same(path, inode)
            return None
        _touch(path)
        return features

    def put(self, frames: np.ndarray, features: PDMFeatures) -> int:
        """Store each frame of ``frames`` (B, H, W, 3) with its features; returns how many
        were stored (0 once writing has stopped)."""
        if len(features) != len(frames):
            raise ValueError(f"{len(features)} feature frames for {len(frames)} input frames")
        if not self.writing:
            return 0
        staged: list[tuple[Path, Path]] = []
        try:
            for index, frame in enumerate(frames):
                content_key = frames_key(frame)
                data = _encode(features.select(index), self._metadata(content_key))
                staged.append((self.folder.stage(data), self._path(content_key)))
            self.folder.commit(staged, self.group, self.description)
        except CacheFull as full:
            self._stop_writing(str(full))
            return 0
        except OSError as err:
            self._stop_writing(f"cannot write to {self.folder.root} ({err.strerror or err})")
            return 0
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        return len(staged)

    def _stop_writing(self, reason: str) -> None:
        self.writing = False
        log.warning("feature cache: %s; going on without caching new features", reason)

    def _path(self, content_key: str) -> Path:
        return self.folder.entry_path(self.group, _sha256(f"{content_key}|{self.fingerprint}"))

    def _metadata(self, content_key: str) -> dict[str, str]:
        return {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, "frames_key": content_key}


def _encode(features: PDMFeatures, metadata: dict[str, str]) -> bytes:
    """safetensors bytes of one frame's features, with ``metadata`` and the checksum."""
    tensors = {
        # a private contiguous copy: safetensors refuses tensors that share memory
        name: tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for name in _REQUIRED + _OPTIONAL
        if (tensor := getattr(features, name)) is not None
    }
    return save_tensors(tensors, metadata={**metadata, "checksum": tensors_checksum(tensors)})


def _decode(data: bytes, expected: dict[str, str]) -> PDMFeatures:
    """The features in an entry's bytes; _CorruptEntry unless metadata, checksum and shapes agree."""
    try:
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        tensors = load_tensors(data)
    except Exception as err:  # noqa: BLE001 - any parse failure means a damaged file
        raise _CorruptEntry(f"unreadable: {err}") from err
    for name, value in expected.items():
        if metadata.get(name) != value:
            raise _CorruptEntry(f"metadata {name}={metadata.get(name)!r}, expected {value!r}")
    unknown, missing = set(tensors) - set(_REQUIRED + _OPTIONAL), set(_REQUIRED) - set(tensors)
    if unknown or missing:
        raise _CorruptEntry(f"tensors {sorted(tensors)} (missing {sorted(missing)})")
    if metadata.get("checksum") != tensors_checksum(tensors):
        raise _CorruptEntry("checksum mismatch")
    features = PDMFeatures(**tensors)
    _check_shapes(features)
    return features


def _check_shapes(features: PDMFeatures) -> None:
    """Raise _CorruptEntry unless the tensors form a consistent record of one frame."""
    appearance, semantic = features.appearance, features.semantic
    if appearance.ndim != 4 or semantic.ndim != 4 or appearance.shape[0] != 1 or semantic.shape[0] != 1:
        raise _CorruptEntry("appearance and semantic must be (1, C, h, w)")
    if semantic.shape[-2:] != appearance.shape[-2:]:
        raise _CorruptEntry("semantic and appearance grids differ")
    vectors, attention = features.class_vectors, features.class_attention
    if vectors is not None and (vectors.ndim != 2 or vectors.shape[1] != semantic.shape[1]):
        raise _CorruptEntry(f"class_vectors shape {tuple(vectors.shape)}")
    if attention is not None:
        classes = attention.shape[1] if vectors is None else vectors.shape[0]
        if attention.shape != (1, classes, *appearance.shape[-2:]):
            raise _CorruptEntry(f"class_attention shape {tuple(attention.shape)}")
    parts = features.appearance_parts
    if parts is not None and (parts.ndim != 5 or parts.shape[0] != 1 or parts.shape[2:] != appearance.shape[1:]):
        raise _CorruptEntry(f"appearance_parts shape {tuple(parts.shape)}")


def _unlink_if_same(path: Path, inode: int) -> None:
    """Delete ``path`` unless another writer replaced it since it was read."""
    try:
        if os.stat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass


def _touch(path: Path) -> None:
    """Mark an entry as just used (eviction takes the least recently used first)."""
    try:
        os.utime(path)
    except OSError:  # evicted since the read, or a read-only folder: the data read is still valid
        pass


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CachedFeatureSource:
    """A FeatureSource that serves batches from a FeatureCache and computes and stores misses.

    ``hits`` counts frames served from the cache and ``misses`` frames computed (a batch with
    any frame missing is computed whole, see the module doc; only its missing frames are
    written). With ``cache=None`` (``--no-cache``) every frame is computed, nothing is written.
    Computed features holding NaN or inf are an InputError naming the model: never used, never cached.
    """

    def __init__(self, source: FeatureSource, cache: FeatureCache | None) -> None:
        self.source = source
        self.cache = cache
        self.hits = 0
        self.misses = 0

    def probe(self, frames: np.ndarray) -> PDMFeatures:
        """The features of ``frames`` computed, neither read from nor written to the cache:
        what ``--batch-size auto`` measures one frame's memory with."""
        return self.source(frames)

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        """frames: (B, H, W, 3) uint8 RGB -> PDMFeatures with B frames, contiguous tensors."""
        stored = [] if self.cache is None else [self.cache.get(frame) for frame in frames]
        if stored and all(entry is not None for entry in stored):
            self.hits += len(frames)
            return PDMFeatures.cat(stored).contiguous()  # type: ignore[arg-type]
        self.misses += len(frames)
        features = self.source(frames).contiguous()
        _check_finite(features, self.source)
        absent = [index for index, entry in enumerate(stored) if entry is None]
        if self.cache is not None and absent:
            self.cache.put(frames[absent], features.select(absent))
        return features


def _check_finite(features: PDMFeatures, source: FeatureSource) -> None:
    """InputError naming the model when ``source`` produced NaN or inf: such features are
    never tracked with, nor cached."""
    tensors = (features.appearance, features.semantic, features.class_vectors, features.class_attention, features.appearance_parts)
    if all(tensor is None or bool(torch.isfinite(tensor).all()) for tensor in tensors):
        return
    description = getattr(source, "description", None) or {}
    raise InputError(
        description.get("model") or description.get("weights") or "--model",
        "the model produced non-finite features (NaN/inf); its weights are damaged, or it overflows in this --dtype (try --dtype fp32)",
    )


__all__ = ["CachedFeatureSource", "FeatureCache", "default_cache_dir", "frames_key", "tensors_checksum"]
