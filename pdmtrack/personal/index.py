"""A gallery index on disk: one global descriptor per image in a FAISS inner-product index,
with a manifest naming each image (absolute path, sha256 of its bytes) and the descriptor.

Layout of an index folder: ``index-<12 hex>.faiss`` (FAISS, inner product over unit vectors,
so the score is the cosine similarity; ``hnsw``: an HNSW graph, approximate, a few
milliseconds per query at 100k images; ``flat``: an exact scan that reads every vector) and
``manifest.json`` (``{"format": 1, "kind": "hnsw"|"flat", "index_file": "index-....faiss",
"descriptor": {model, pooling, size, gem_p, fingerprint}, "dim": D, "images": [{"path": ...,
"sha256": ...}, ...]}``, row i of the index = image i; manifests written before
``index_file`` name ``index.faiss``). A save writes the index under a new name, then the
manifest naming it (atomically: the moment the new index takes effect), then deletes the
previous index file; so a save that is killed leaves the previous index whole. A folder
whose two files disagree is refused on load. Adding skips images whose content is already
indexed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pdmtrack.config import GlobalConfig
from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import atomic_path, atomic_write_text, check_output_folder, ensure_writable_folder, read_json
from pdmtrack.io.images import list_images, read_rgb
from pdmtrack.personal.global_descriptor import GlobalDescriptor

INDEX_FILE = "index.faiss"  # the index file of manifests written before they named it
_INDEX_NAME = re.compile(r"index-[0-9a-f]{12}\.faiss")
MANIFEST_FILE = "manifest.json"
FORMAT = 1
INDEX_KINDS = ("hnsw", "flat")
HNSW_NEIGHBOURS = 32  # graph degree (M)
EF_CONSTRUCTION = 80  # candidate list while inserting
EF_SEARCH = 256  # candidate list while searching (at least k)


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_index(path: str | Path) -> bool:
    """True when ``path`` is an index folder (has a manifest)."""
    return (Path(path) / MANIFEST_FILE).is_file()


@dataclass
class AddSummary:
    """What one build or add did."""

    added: int
    skipped: int
    total: int
    seconds: float

    def format(self, folder: Path) -> str:
        rate = self.added / self.seconds if self.seconds > 0 else float("inf")
        return f"{self.added} images added ({rate:.1f} images/s), {self.skipped} already indexed; {self.total} images in {folder}"


class GalleryIndex:
    """Global descriptors of a gallery in a FAISS index, with the images they belong to."""

    def __init__(self, descriptor: dict, dim: int, paths: list[str], hashes: list[str], index: object, kind: str = "hnsw") -> None:
        self.kind = kind
        self.descriptor = descriptor
        self.dim = dim
        self.paths = paths
        self.hashes = hashes
        self.index = index

    @staticmethod
    def empty(descriptor: dict, dim: int, kind: str = "hnsw") -> GalleryIndex:
        """An index of ``kind`` (hnsw: approximate, fast; flat: exact scan) with no image yet."""
        import faiss

        if kind not in INDEX_KINDS:
            raise ParameterError("kind", f"unknown value '{kind}' (choose from {', '.join(INDEX_KINDS)})")
        if kind == "flat":
            return GalleryIndex(descriptor, dim, [], [], faiss.IndexFlatIP(dim), kind)
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        return GalleryIndex(descriptor, dim, [], [], index, kind)

    @staticmethod
    def load(folder: str | Path) -> GalleryIndex:
        """The index in ``folder``; InputError when it is missing or inconsistent."""
        import faiss

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "not an index folder (write one with `pdmtrack index build`)")
        manifest = read_json(folder / MANIFEST_FILE, "not found (is this a folder written by `pdmtrack index build`?)")
        try:
            if manifest["format"] != FORMAT:  # type: ignore[index]
                raise InputError(folder / MANIFEST_FILE, f"unknown format {manifest['format']!r}")  # type: ignore[index]
            images = manifest["images"]  # type: ignore[index]
            paths = [str(item["path"]) for item in images]
            hashes = [str(item["sha256"]) for item in images]
            descriptor, dim = dict(manifest["descriptor"]), int(manifest["dim"])  # type: ignore[index]
            kind = str(manifest["kind"])  # type: ignore[index]
            index_file = str(manifest.get("index_file", INDEX_FILE))  # type: ignore[union-attr]
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(folder / MANIFEST_FILE, f"unexpected layout ({type(err).__name__}: {err})") from err
        if index_file != INDEX_FILE and not _INDEX_NAME.fullmatch(index_file):
            raise InputError(folder / MANIFEST_FILE, f"names an index file of another form: {index_file!r}")
        try:
            index = faiss.read_index(str(folder / index_file))
        except RuntimeError as err:
            raise InputError(folder / index_file, f"cannot read the FAISS index ({str(err).splitlines()[0]})") from err
        if index.ntotal != len(paths) or index.d != dim:
            problem = f"holds {index.ntotal} vectors of size {index.d}, the manifest {len(paths)} of size {dim}"
            raise InputError(folder, problem)
        return GalleryIndex(descriptor, dim, paths, hashes, index, kind)

    def save(self, folder: Path) -> None:
        """Write the index under a new name, then ``manifest.json`` naming it (each
        atomically), then delete the index files it replaces: a save killed at any moment
        leaves the previous index (or the new one) whole."""
        import faiss

        folder = Path(folder)
        index_file = f"index-{uuid.uuid4().hex[:12]}.faiss"
        with atomic_path(folder / index_file) as tmp:
            faiss.write_index(self.index, str(tmp))
        manifest = {
            "format": FORMAT,
            "kind": self.kind,
            "index_file": index_file,
            "descriptor": self.descriptor,
            "dim": self.dim,
            "images": [{"path": path, "sha256": sha} for path, sha in zip(self.paths, self.hashes)],
        }
        atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
        for path in folder.iterdir():  # the previous index, and any a killed save left behind
            if path.name != index_file and (path.name == INDEX_FILE or _INDEX_NAME.fullmatch(path.name)):
                path.unlink(missing_ok=True)

    def add(self, vectors: np.ndarray, paths: Sequence[str], hashes: Sequence[str]) -> None:
        """Append unit vectors (N, D) for ``paths``."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))  # type: ignore[attr-defined]
        self.paths += list(paths)
        self.hashes += list(hashes)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (Q, min(k, size)): the k most similar images per query vector
        (with hnsw approximate: the search keeps max(256, k) candidates)."""
        k = min(k, len(self.paths))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(EF_SEARCH, k)  # type: ignore[attr-defined]
        scores, rows = self.index.search(np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32), k)  # type: ignore[attr-defined]
        return scores, rows


def descriptor_config(record: dict) -> GlobalConfig:
    """The GlobalConfig an index's descriptor record was made with."""
    return GlobalConfig(model=record["model"], pooling=record["pooling"], size=record["size"], gem_p=record["gem_p"])


def _embed_new(index: GalleryIndex, images: list[Path], descriptor: GlobalDescriptor) -> tuple[int, int]:
    """Embed the images whose content the index lacks; (added, skipped)."""
    known = set(index.hashes)
    skipped = 0
    vectors, paths, hashes = [], [], []
    for path in tqdm(images, desc="index", unit="image", disable=None):
        sha = file_sha256(path)
        if sha in known:
            skipped += 1
            continue
        known.add(sha)
        vectors.append(descriptor(read_rgb(path)))
        paths.append(str(path.resolve()))
        hashes.append(sha)
    if vectors:
        index.add(np.stack(vectors), paths, hashes)
    return len(vectors), skipped


def build_index(
    inputs: Sequence[str | Path],
    out: str | Path,
    config: GlobalConfig,
    *,
    device: str = "auto",
    overwrite: bool = False,
    kind: str = "hnsw",
) -> AddSummary:
    """Index every image in ``inputs`` (folders searched recursively) into the folder ``out``
    (an index of ``kind``: hnsw or flat)."""
    out = check_output_folder(out, inputs)
    if is_index(out) and not overwrite:
        raise InputError(out, "already holds an index (use `pdmtrack index add`, or --overwrite)")
    images = list_images(inputs)
    ensure_writable_folder(out, keep=False)  # before the descriptor model loads
    descriptor = GlobalDescriptor(config, device)
    index = GalleryIndex.empty(descriptor.record, int(descriptor.parts.model.config.hidden_size), kind)
    start = time.perf_counter()
    added, skipped = _embed_new(index, images, descriptor)
    seconds = time.perf_counter() - start
    index.save(out)
    return AddSummary(added, skipped, len(index.paths), seconds)


def add_to_index(folder: str | Path, inputs: Sequence[str | Path], *, device: str = "auto") -> AddSummary:
    """Add the images of ``inputs`` not yet in the index ``folder``, with the index's descriptor."""
    index = GalleryIndex.load(folder)
    images = list_images(inputs)
    descriptor = GlobalDescriptor(descriptor_config(index.descriptor), device)
    if descriptor.record["fingerprint"] != index.descriptor.get("fingerprint"):
        raise InputError(folder, f"was built with other weights of '{index.descriptor['model']}'; rebuild it")
    start = time.perf_counter()
    added, skipped = _embed_new(index, images, descriptor)
    seconds = time.perf_counter() - start
    index.save(folder)
    return AddSummary(added, skipped, len(index.paths), seconds)
