"""The memory read's top-k search: a half-precision first pass gives the float32 top-k."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pdmtrack.tracking import topk as affinity
from pdmtrack.tracking.matching import SIMILARITY_BUDGET as CPU_BUDGET
from pdmtrack.tracking.memory import window_mask
from pdmtrack.tracking.topk import half_error, top_entries

GRID = (6, 8)
CELLS = GRID[0] * GRID[1]


def unit_memory(frames: int, channels: int, seed: int, near_ties: bool = False):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(frames, channels, CELLS, generator=generator)
    if near_ties:  # every frame a tiny perturbation of the first: scores closer than half precision resolves
        keys = keys[:1] + 1e-4 * keys
    query = torch.randn(channels, CELLS, generator=generator)
    return F.normalize(query, dim=0), F.normalize(keys, dim=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("budget", [CPU_BUDGET, 2 * CELLS * CELLS])  # one pass / chunks of two frames
@pytest.mark.parametrize("near_ties", [False, True])
def test_half_first_pass_gives_the_float32_top_k(dtype, budget, near_ties) -> None:
    query, keys = unit_memory(7, 32, seed=1, near_ties=near_ties)
    outside = ~window_mask(GRID, 2, torch.device("cpu"))
    runs = [range(0, 3), range(4, 7)]  # slot 3 is not in use
    exact_scores, exact_entries = top_entries(query, keys, runs, 5, outside, 1, budget)
    scores, entries = top_entries(query, keys, runs, 5, outside, 1, budget, search_keys=keys.to(dtype))
    assert torch.equal(entries.sort(1).values, exact_entries.sort(1).values)
    assert not bool(((entries // CELLS) == 3).any())  # buffer entries, never from the unused slot
    torch.testing.assert_close(scores, exact_scores, rtol=0, atol=1e-6)


def test_unsure_cells_are_searched_again_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """With near ties the half pass cannot separate, the float32 search decides."""
    query, keys = unit_memory(7, 32, seed=2, near_ties=True)
    outside = ~window_mask(GRID, 2, torch.device("cpu"))
    calls: list[torch.dtype] = []
    search = affinity._search

    def spy(query, *args):
        calls.append(query.dtype)
        return search(query, *args)

    monkeypatch.setattr(affinity, "_search", spy)
    top_entries(query, keys, [range(7)], 5, outside, 1, CPU_BUDGET, search_keys=keys.half())
    assert calls == [torch.float16, torch.float32]


def test_half_error_bounds_the_observed_error() -> None:
    query, keys = unit_memory(4, 640, seed=3)
    exact = torch.einsum("cn,tcm->ntm", query, keys)
    for dtype in (torch.float16, torch.bfloat16):
        half = torch.einsum("cn,tcm->ntm", query.to(dtype), keys.to(dtype)).float()
        assert float((half - exact).abs().max()) <= half_error(dtype, 640)
