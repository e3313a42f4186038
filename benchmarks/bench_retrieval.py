"""Retrieval costs: index build (images/s), first-stage query latency at gallery scale, and
the PDM re-ranking cost per candidate served from the feature cache.

1. Index build: ``build_index`` over generated 854x480 JPEGs with a DINOv2-base-shaped ViT
   (random weights built from transformers' default Dinov2Config: 12 layers, 768 channels,
   so the compute is the real model's; ``--global-model`` takes a real one), short side 224.
2. Query latency: the index (FAISS HNSW, inner product) of synthetic unit descriptors (768-d)
   at 10k and 100k images, saved and reloaded like an index folder; the median time of one
   query's top-100 search and its recall against an exact scan (IndexFlatIP, also timed), for
   queries near indexed vectors; plus one query descriptor (one ViT pass) from part 1.
3. Re-rank: 100 candidate JPEGs whose PDM features (SDXL's shape at size 512 on 854x480:
   640 channels, 32x56 cells, appearance + semantic + class vectors, fp16) are in the
   feature cache; ``rerank_head`` of 100 candidates with an extractor that must never run.
   Reported per candidate: image decode + content hash, cache read, matching.

    python benchmarks/bench_retrieval.py
    python benchmarks/bench_retrieval.py --images 64 --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pdmtrack.config import GlobalConfig, MatchConfig
from pdmtrack.features.cache import CachedFeatureSource, FeatureCache, frames_key
from pdmtrack.features.types import PDMFeatures
from pdmtrack.io.images import read_rgb
from pdmtrack.personal.global_descriptor import GlobalDescriptor
from pdmtrack.personal.index import GalleryIndex, build_index
from pdmtrack.personal.search import Query, query_scorer, rerank_head

GRID, CHANNELS = (32, 56), 640


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 854x480 JPEGs of smooth noise with a coloured box (distinct content each)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        coarse = rng.integers(0, 256, (15, 27, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((854, 480), Image.BILINEAR)).copy()
        top, left = rng.integers(0, 300), rng.integers(0, 600)
        image[top : top + 150, left : left + 200] = rng.integers(0, 256, 3)
        paths.append(folder / f"img_{index:06d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
    return paths


def dinov2_base(folder: Path) -> Path:
    """A random-weight DINOv2-base (transformers' default config) saved to ``folder``."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config()).eval().save_pretrained(folder)
    return folder


def bench_build(work: Path, model: str | None, count: int) -> float:
    images = write_images(work / "gallery", count)
    model = model or str(dinov2_base(work / "dinov2-base"))
    config = GlobalConfig(model=model, size=224)
    summary = build_index([work / "gallery"], work / "index", config, device="cpu")
    descriptor = GlobalDescriptor(config, device="cpu")
    image = read_rgb(images[0])
    times = []
    for _ in range(5):
        tick = time.perf_counter()
        descriptor(image)
        times.append(time.perf_counter() - tick)
    print(
        f"index build: {summary.added} images in {summary.seconds:.1f} s = {summary.added / summary.seconds:.2f} images/s "
        f"(decode + hash + one ViT pass each; {model if '/' in model and not Path(model).is_dir() else 'DINOv2-base shape'})"
    )
    print(f"one query descriptor: {1000 * statistics.median(times):.0f} ms")
    return summary.added / summary.seconds


def bench_query(work: Path, sizes: list[int], dim: int = 768, queries: int = 50) -> None:
    """The default HNSW index against the exact ``flat`` index of the same vectors."""
    rng = np.random.default_rng(0)
    for size in sizes:
        vectors = rng.standard_normal((size, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = GalleryIndex.empty({"model": "synthetic", "pooling": "gem", "size": 224, "gem_p": 3.0}, dim)
        tick = time.perf_counter()
        index.add(vectors, [f"img_{i}" for i in range(size)], [f"{i:064x}" for i in range(size)])
        built = time.perf_counter() - tick
        folder = work / f"index-{size}"
        tick = time.perf_counter()
        index.save(folder)
        saved = time.perf_counter() - tick
        tick = time.perf_counter()
        loaded = GalleryIndex.load(folder)
        load = time.perf_counter() - tick
        exact = GalleryIndex.empty(index.descriptor, dim, "flat")
        exact.add(vectors, index.paths, index.hashes)
        # queries near gallery images (a perturbed copy), as real queries of indexed instances are
        probes = vectors[rng.integers(0, size, queries)] + 0.5 * rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(dim)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        approximate, scan, recall, nearest = [], [], [], []
        for probe in probes:
            tick = time.perf_counter()
            _, rows = loaded.search(probe, 100)
            approximate.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            _, truth = exact.search(probe, 100)
            scan.append(time.perf_counter() - tick)
            recall.append(len(set(rows[0]) & set(truth[0])) / 100)
            nearest.append(float(rows[0][0] == truth[0][0]))
        print(
            f"query at {size:>7} images: HNSW median {1000 * statistics.median(approximate):.2f} ms "
            f"(max {1000 * max(approximate):.2f}), top-100 overlap with exact {statistics.mean(recall):.3f}, "
            f"nearest found {statistics.mean(nearest):.2f}; "
            f"exact scan median {1000 * statistics.median(scan):.1f} ms; "
            f"HNSW insert {built:.1f} s, save {saved:.2f} s, load {load:.2f} s"
        )


class _NeverCompute:
    fingerprint = "bench-rerank"

    def __call__(self, frames: np.ndarray) -> PDMFeatures:
        raise RuntimeError("the benchmark's candidates must all come from the cache")


def bench_rerank(work: Path, candidates: int = 100) -> None:
    paths = write_images(work / "candidates", candidates + 1, seed=1)
    cache = FeatureCache(work / "cache", _NeverCompute.fingerprint)
    generator = torch.Generator().manual_seed(0)
    for path in paths:
        features = PDMFeatures(
            appearance=torch.randn(1, CHANNELS, *GRID, generator=generator).half(),
            semantic=torch.randn(1, CHANNELS, *GRID, generator=generator).half(),
            class_vectors=torch.randn(1, CHANNELS, generator=generator).half(),
            class_attention=torch.rand(1, 1, *GRID, generator=generator).half(),
        )
        cache.put(read_rgb(path)[None], features)
    source = CachedFeatureSource(_NeverCompute(), cache)
    device = torch.device("cpu")
    query_image = read_rgb(paths[0])
    mask = np.zeros(query_image.shape[:2], dtype=bool)
    mask[100:300, 200:500] = True
    scorer = query_scorer(source, Query(query_image, mask, 0), MatchConfig(), device)
    gallery = paths[1:]
    first = np.arange(candidates)
    tick = time.perf_counter()
    rerank_head(first, candidates, source, scorer, gallery, device)
    total = time.perf_counter() - tick
    decode = _time(lambda p: frames_key(read_rgb(p)), gallery)
    frames = [read_rgb(p) for p in gallery]
    read = _time(cache.get, frames)
    features = [cache.get(f) for f in frames]
    match = _time(scorer.add, features)
    print(
        f"re-rank of {candidates} cached candidates: {total:.2f} s = {1000 * total / candidates:.1f} ms per candidate "
        f"(decode + hash {1000 * decode:.1f} ms, cache read {1000 * read:.1f} ms, matching {1000 * match:.1f} ms); "
        f"features computed: {source.misses}, cache hits: {source.hits}"
    )


def _time(function, items) -> float:
    tick = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - tick) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images indexed in part 1")
    parser.add_argument("--sizes", default="10000,100000", help="index sizes for part 2")
    parser.add_argument("--global-model", default=None, help="a real ViT (hub id or folder) instead of the random one")
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_build(work, args.global_model, args.images)
        bench_query(work, [int(s) for s in args.sizes.split(",")])
        bench_rerank(work, args.candidates)


if __name__ == "__main__":
    main()
