"""PDM maps checked against plain per-token loops on tiny hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pdmtrack.tracking.matching as matching
from pdmtrack.config import MatchConfig
from pdmtrack.features.types import PDMFeatures
from pdmtrack.tracking.matching import (
    appearance_map,
    combined_map,
    features_appearance_map,
    mask_to_grid,
    mask_to_grid_bool,
    minmax,
    pdm_map,
    reference_mask_from_attention,
    semantic_map,
)

# ---- plain re-computations: explicit loops over tokens, Python floats ----------------------


def loop_minmax(grid: list[list[float]]) -> list[list[float]]:
    values = [v for row in grid for v in row]
    low, high = min(values), max(values)
    if high == low:
        return [[0.0 for _ in row] for row in grid]
    return [[(v - low) / (high - low) for v in row] for row in grid]


def token(features: torch.Tensor, i: int, j: int) -> list[float]:
    """Channel vector at (i, j) of a (C, h, w) tensor."""
    return [float(features[c, i, j]) for c in range(features.shape[0])]


def cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def reference_tokens(ref: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    h, w = mask.shape
    return [token(ref, i, j) for i in range(h) for j in range(w) if bool(mask[i, j])]


def loop_appearance_mean(ref, mask, target) -> list[list[list[float]]]:
    refs = reference_tokens(ref, mask)
    _, _, h2, w2 = target.shape
    return [[[sum(cosine(token(frame, i, j), r) for r in refs) / len(refs) for j in range(w2)] for i in range(h2)] for frame in target]


def loop_votes(ref, mask, target, topk: int, distance, by_max: bool) -> list[list[list[float]]]:
    """Each reference token ranks the target tokens by ``distance`` (smaller first) and the first
    ``topk`` get a vote; a frame's votes are divided by their maximum (``by_max``) or by the
    number of reference tokens."""
    refs = reference_tokens(ref, mask)
    _, _, h2, w2 = target.shape
    maps = []
    for frame in target:
        cells = [(i, j) for i in range(h2) for j in range(w2)]
        votes = {cell: 0 for cell in cells}
        for r in refs:
            ranked = sorted(cells, key=lambda cell: distance(token(frame, *cell), r))
            for cell in ranked[:topk]:
                votes[cell] += 1
        scale = max(votes.values()) if by_max else len(refs)
        maps.append([[votes[(i, j)] / scale for j in range(w2)] for i in range(h2)])
    return maps


def loop_topk_votes(ref, mask, target, topk: int) -> list[list[list[float]]]:
    """Cosine top-k votes, as the fraction of reference tokens (the authors' PerMIS code)."""
    return loop_votes(ref, mask, target, topk, lambda u, v: -cosine(u, v), by_max=False)


def loop_euclidean_votes(ref, mask, target, topk: int) -> list[list[list[float]]]:
    """The authors' pdm_matching.py loop: Euclidean nearest ``topk``, divided by the maximum."""
    return loop_votes(ref, mask, target, topk, math.dist, by_max=True)


def loop_semantic(vector: torch.Tensor, semantic: torch.Tensor) -> list[list[list[float]]]:
    c = [float(v) for v in vector]
    _, _, h, w = semantic.shape
    return [[[sum(a * b for a, b in zip(c, token(frame, i, j))) for j in range(w)] for i in range(h)] for frame in semantic]


def loop_combined(appearance, semantic) -> list[list[list[float]]]:
    if semantic is None:
        return [loop_minmax(a) for a in appearance]
    out = []
    for a, s in zip(appearance, semantic):
        na, ns = loop_minmax(a), loop_minmax(s)
        out.append([[(x + y) / 2 for x, y in zip(ra, rs)] for ra, rs in zip(na, ns)])
    return out


def loop_mask_to_grid(mask: np.ndarray, grid: tuple[int, int]) -> list[list[float]]:
    height, width = mask.shape
    h, w = grid
    out = []
    for i in range(h):
        top, bottom = (i * height) // h, -((-(i + 1) * height) // h)
        row = []
        for j in range(w):
            left, right = (j * width) // w, -((-(j + 1) * width) // w)
            inside = sum(bool(mask[y, x]) for y in range(top, bottom) for x in range(left, right))
            row.append(inside / ((bottom - top) * (right - left)))
        out.append(row)
    return out


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    assert actual.dtype == torch.float32
    wanted = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual, wanted, atol=atol, rtol=0)


def random_tensor(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


REF_MASK = torch.tensor([[True, False, True], [False, True, False]])

# ---- minmax and the reference mask from attention --------------------------------------------


def test_minmax_matches_loop_and_zeroes_constant_maps() -> None:
    maps = random_tensor(3, 2, 3).half()
    maps[1] = 7.0
    result = minmax(maps)
    assert_close(result, [loop_minmax(m.tolist()) for m in maps.float()], atol=1e-3)
    assert torch.equal(result[1], torch.zeros(2, 3))
    assert_close(minmax(maps[0]), loop_minmax(maps[0].float().tolist()), atol=1e-3)


def test_reference_mask_from_attention_hand_case() -> None:
    attention = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 4.0]])
    # min-max: 0, .25, .5, .75, 1, 1; a value equal to tau is inside
    expected = torch.tensor([[False, False, True], [True, True, True]])
    assert torch.equal(reference_mask_from_attention(attention, 0.5), expected)


def test_reference_mask_from_attention_batched_matches_loop() -> None:
    attention = random_tensor(4, 2, 3, seed=1)
    masks = reference_mask_from_attention(attention, 0.6)
    assert masks.dtype == torch.bool and masks.shape == (4, 2, 3)
    for one, mask in zip(attention, masks):
        normalised = loop_minmax(one.tolist())
        assert mask.tolist() == [[v >= 0.6 for v in row] for row in normalised]
        assert mask.any()  # the peak always survives
    assert reference_mask_from_attention(attention, 1.0).sum(dim=(1, 2)).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        reference_mask_from_attention(attention, 1.5)


# ---- masks on the feature grid -----------------------------------------------------------------


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (9, 4)])
def test_mask_to_grid_matches_loop(size: tuple[int, int]) -> None:
    mask = np.random.default_rng(sum(size)).random(size) > 0.5
    expected = loop_mask_to_grid(mask, (2, 3))
    assert_close(mask_to_grid(mask, (2, 3)), expected)
    assert_close(mask_to_grid(torch.from_numpy(mask), (2, 3)), expected)


def test_mask_to_grid_bool_thresholds_cover() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[:2, :2] = True  # cell (0, 0) full
    mask[2:, 2:3] = True  # cell (1, 1) half covered
    mask[0, 4] = True  # cell (0, 2) a quarter covered
    tokens = mask_to_grid_bool(mask, (2, 3), min_fraction=0.5)
    assert tokens.tolist() == [[True, False, False], [False, True, False]]
    strict = mask_to_grid_bool(mask, (2, 3), min_fraction=0.75)
    assert strict.tolist() == [[True, False, False], [False, False, False]]


def test_tiny_object_still_gets_a_reference_token() -> None:
    mask = np.zeros((8, 12), dtype=bool)
    mask[5, 9] = True  # one pixel in cell (1, 2)
    assert mask_to_grid_bool(mask, (2, 3)).tolist() == [[False, False, False], [False, False, True]]
    mask[5, 3] = True  # an equally small speck in cell (1, 0): both tie
    assert mask_to_grid_bool(mask, (2, 3)).tolist() == [[False, False, False], [True, False, True]]
    assert not mask_to_grid_bool(np.zeros((8, 12), dtype=bool), (2, 3)).any()


# ---- appearance map --------------------------------------------------------------------------


def test_appearance_mean_matches_loop() -> None:
    ref = random_tensor(4, 2, 3, seed=2)
    target = random_tensor(3, 4, 3, 2, seed=3)  # another grid than the reference
    result = appearance_map(ref, REF_MASK, target, agg="mean")
    assert result.shape == (3, 3, 2)
    assert_close(result, loop_appearance_mean(ref, REF_MASK, target))


def test_appearance_single_reference_token_is_its_cosine() -> None:
    ref = random_tensor(4, 2, 3, seed=4)
    target = random_tensor(2, 4, 2, 3, seed=5)
    single = torch.zeros(2, 3, dtype=torch.bool)
    single[1, 2] = True
    expected = [[[cosine(token(frame, i, j), token(ref, 1, 2)) for j in range(3)] for i in range(2)] for frame in target]
    assert_close(appearance_map(ref, single, target), expected)


def test_topk_vote_hand_case() -> None:
    e = torch.eye(4)
    ref = torch.stack([e[0], e[1], e[2]], dim=-1).reshape(4, 1, 3)  # tokens e0, e1, e2
    mask = torch.tensor([[True, True, False]])  # e0 and e1 vote
    target_tokens = [e[0], e[0] + 0.5 * e[1], e[1], e[2], e[3], e[1] + 0.1 * e[0]]
    target = torch.stack(target_tokens, dim=-1).reshape(1, 4, 2, 3)
    # e0's top 2: tokens 0 and 1; e1's top 2: tokens 2 and 5; each vote counts 1/2
    expected = [[[0.5, 0.5, 0.5], [0.0, 0.0, 0.5]]]
    assert_close(appearance_map(ref, mask, target, agg="topk-vote", topk=2), expected)


def test_topk_vote_matches_loop() -> None:
    ref = random_tensor(4, 2, 3, seed=6)
    target = random_tensor(3, 4, 2, 3, seed=7)
    result = appearance_map(ref, REF_MASK, target, agg="topk-vote", topk=2)
    assert_close(result, loop_topk_votes(ref, REF_MASK, target, topk=2))
    everything = appearance_map(ref, REF_MASK, target, agg="topk-vote", topk=100)
    assert torch.equal(everything, torch.ones(3, 2, 3))


def test_euclidean_vote_matches_loop() -> None:
    ref = random_tensor(4, 2, 3, seed=16) * 3  # raw features: lengths matter to a distance
    target = random_tensor(3, 4, 2, 3, seed=17) * 3
    for topk in (1, 2, 4):
        result = appearance_map(ref, REF_MASK, target, agg="euclidean-vote", topk=topk)
        assert_close(result, loop_euclidean_votes(ref, REF_MASK, target, topk=topk))
        assert torch.equal(result.amax(dim=(1, 2)), torch.ones(3))


def test_euclidean_vote_differs_from_cosine_on_scaled_tokens() -> None:
    """A target token pointing the reference's way but far longer is the cosine vote's pick,
    not the Euclidean one's."""
    ref = torch.tensor([1.0, 0.0]).reshape(2, 1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    target = torch.tensor([[10.0, 0.0], [0.9, 0.3]]).T.reshape(1, 2, 1, 2)
    assert appearance_map(ref, mask, target, agg="topk-vote", topk=1).flatten().tolist() == [1.0, 0.0]
    assert appearance_map(ref, mask, target, agg="euclidean-vote", topk=1).flatten().tolist() == [0.0, 1.0]


def test_query_and_key_matched_separately() -> None:
    """With appearance_parts on both records, each part is voted on separately and the maps
    averaged (the authors' code); without, the appearance itself is matched."""
    reference, target = make_features(1, seed=90), make_features(2, seed=91)
    reference.appearance_parts = random_tensor(1, 2, 4, 2, 3, seed=92)
    target.appearance_parts = random_tensor(2, 2, 4, 2, 3, seed=93)
    config = MatchConfig(appearance_agg="euclidean-vote", vote_topk=2)
    per_part = [loop_euclidean_votes(reference.appearance_parts[0, i], REF_MASK, target.appearance_parts[:, i], topk=2) for i in range(2)]
    expected = (torch.tensor(per_part[0]) + torch.tensor(per_part[1])) / 2
    assert_close(features_appearance_map(reference, REF_MASK, target, config), expected.tolist())
    target.appearance_parts = None
    whole = loop_euclidean_votes(reference.appearance[0].float(), REF_MASK, target.appearance.float(), topk=2)
    assert_close(features_appearance_map(reference, REF_MASK, target, config), whole)


def test_topk_vote_chunking_changes_nothing(monkeypatch) -> None:
    ref = random_tensor(4, 2, 3, seed=8)
    target = random_tensor(3, 4, 2, 3, seed=9)
    for agg in ("topk-vote", "euclidean-vote"):
        whole = appearance_map(ref, REF_MASK, target, agg=agg, topk=3)
        with monkeypatch.context() as patch:
            patch.setattr(matching, "SIMILARITY_BUDGET", 1)  # one reference token at a time
            assert torch.equal(appearance_map(ref, REF_MASK, target, agg=agg, topk=3), whole)


def test_appearance_rejects_bad_reference() -> None:
    ref, target = random_tensor(4, 2, 3), random_tensor(1, 4, 2, 3)
    with pytest.raises(ValueError, match="empty"):
        appearance_map(ref, torch.zeros(2, 3, dtype=torch.bool), target)
    with pytest.raises(ValueError, match="grid"):
        appearance_map(ref, torch.ones(3, 2, dtype=torch.bool), target)
    with pytest.raises(ValueError, match="aggregation"):
        appearance_map(ref, REF_MASK, target, agg="max")  # type: ignore[arg-type]


# ---- semantic, combined, score -----------------------------------------------------------------


def test_semantic_map_matches_loop() -> None:
    vector = random_tensor(5, seed=10).half()
    semantic = random_tensor(2, 5, 2, 3, seed=11).half()
    assert_close(semantic_map(vector, semantic), loop_semantic(vector.float(), semantic.float()))


def test_combined_map_matches_loop() -> None:
    appearance = random_tensor(2, 2, 3, seed=12)
    semantic = random_tensor(2, 2, 3, seed=13)
    semantic[1] = 0.5  # a flat semantic map contributes nothing
    combined = combined_map(appearance, semantic)
    assert_close(combined, loop_combined(appearance.tolist(), semantic.tolist()))
    assert_close(combined_map(appearance, None), loop_combined(appearance.tolist(), None))
    with pytest.raises(ValueError):
        combined_map(appearance, semantic[:, :1])


# ---- the composed map --------------------------------------------------------------------------


def make_features(frames: int, seed: int, with_classes: bool = True) -> PDMFeatures:
    return PDMFeatures(
        appearance=random_tensor(frames, 4, 2, 3, seed=seed).half(),
        semantic=random_tensor(frames, 5, 2, 3, seed=seed + 1).half(),
        class_vectors=random_tensor(2, 5, seed=seed + 2).half() if with_classes else None,
        class_attention=random_tensor(frames, 2, 2, 3, seed=seed + 3) if with_classes else None,
    )


@pytest.mark.parametrize("agg", ["mean", "topk-vote"])
def test_pdm_map_matches_loop(agg: str) -> None:
    reference, target = make_features(1, seed=20), make_features(3, seed=30)
    config = MatchConfig(appearance_agg=agg, vote_topk=2)  # type: ignore[arg-type]
    ref, tgt = reference.appearance[0].float(), target.appearance.float()
    appearance = loop_appearance_mean(ref, REF_MASK, tgt) if agg == "mean" else loop_topk_votes(ref, REF_MASK, tgt, topk=2)
    semantic = loop_semantic(reference.class_vectors[1].float(), target.semantic.float())
    with_class = pdm_map(reference, REF_MASK, target, 1, config)
    assert_close(with_class, loop_combined(appearance, semantic))
    without_class = pdm_map(reference, REF_MASK, target, None, config)
    assert_close(without_class, loop_combined(appearance, None))


def test_pdm_map_needs_class_vectors_for_a_class() -> None:
    reference = make_features(1, seed=40, with_classes=False)
    with pytest.raises(ValueError, match="class vectors"):
        pdm_map(reference, REF_MASK, make_features(2, seed=41), 0, MatchConfig())
    with pytest.raises(ValueError, match="one frame"):
        pdm_map(make_features(2, seed=42), REF_MASK, make_features(2, seed=41), 0, MatchConfig())


@pytest.mark.parametrize("agg", ["mean", "topk-vote"])
def test_batch_equals_one_frame_at_a_time(agg: str) -> None:
    reference, target = make_features(1, seed=50), make_features(5, seed=60)
    config = MatchConfig(appearance_agg=agg, vote_topk=3)  # type: ignore[arg-type]
    batched = pdm_map(reference, REF_MASK, target, 0, config)
    frames = [pdm_map(reference, REF_MASK, target.select(i), 0, config) for i in range(5)]
    single = torch.cat(frames)
    torch.testing.assert_close(batched, single)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    reference, target = make_features(1, seed=70), make_features(3, seed=80)
    for agg in ("mean", "topk-vote"):
        config = MatchConfig(appearance_agg=agg, vote_topk=2)  # type: ignore[arg-type]
        on_cpu = pdm_map(reference, REF_MASK, target, 1, config)
        on_gpu = pdm_map(reference, REF_MASK, target.to("cuda"), 1, config)
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
