"""The memory read's top-k search, exact, with an optional half-precision first pass.

Label propagation keeps, for every target cell, the k memory entries (frame, cell) most
cosine-similar to it. On a GPU the similarity of every target cell to every entry (about 93 M
entries at SDXL's 32x56 grid with a full 1 + 28 frame memory) is the memory read's cost, so it
is computed in half precision (tensor cores, half the traffic) to pick k + margin candidates
per cell; the candidates' similarities are recomputed in float32 and the top k taken among
them. That is the float32 top-k wherever a cell's k-th exact score clears the best half score
left out by more than the half-precision error bound (``half_error``); the cells where it does
not are searched again in float32. In float32 (the CPU default) the first pass is the search.
"""

from __future__ import annotations

import torch

from pdmtrack.tracking import matching

CUDA_BUDGET = 1 << 27  # similarity entries held at once on a GPU: a full SDXL-grid memory in one pass


def similarity_budget(device: torch.device) -> int:
    """Most similarity entries one chunk of the search holds on ``device`` (on the CPU, the
    budget ``matching`` shares with its own searches)."""
    return CUDA_BUDGET if device.type == "cuda" else matching.SIMILARITY_BUDGET


def half_error(dtype: torch.dtype, channels: int) -> float:
    """Bound on |half-precision cosine - exact cosine| of unit vectors of ``channels`` values:
    rounding both inputs (2u by Cauchy-Schwarz) and the output (u), float32 accumulation
    (channels * 2^-24), doubled for safety. u is the dtype's unit roundoff."""
    unit = torch.finfo(dtype).eps / 2
    return 2 * (3 * unit + channels * 2.0**-24)


def top_entries(
    query: torch.Tensor,
    keys: torch.Tensor,
    runs: list[range],
    k: int,
    outside: torch.Tensor,
    windowed_from: int,
    budget: int,
    search_keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best memory entries of every target cell.

    query (C, N) float32 and the memory's key buffer (S, C, M) float32, unit columns; ``runs``:
    the buffer slots to search, as ranges of consecutive slots (no copy of the keys is made);
    the searched frames are numbered along the runs. ``outside`` (N, M) bool: target cell n may
    not match cell m of searched frames ``windowed_from`` and later (the window); earlier ones
    are searched everywhere. ``search_keys``: the buffer in half precision for the first pass
    (None: float32 only). Returns float32 scores (N, k') and buffer entries (N, k')
    (slot * M + cell), k' = min(k, searched frames * M).
    """
    cells = keys.shape[2]
    slot_of = torch.cat([torch.arange(run.start, run.stop) for run in runs]).to(keys.device)
    if search_keys is None:
        scores, entries = _search(query, keys, runs, k, outside, windowed_from, budget)
        return scores, slot_of[entries // cells] * cells + entries % cells
    half_query = query.to(search_keys.dtype)
    candidate_scores, candidates = _search(half_query, search_keys, runs, 2 * k, outside, windowed_from, budget)
    gathered = keys[slot_of[candidates // cells], :, candidates % cells]  # (N, K, C)
    exact = torch.einsum("nkc,cn->nk", gathered, query)
    exact = torch.where(torch.isinf(candidate_scores), candidate_scores.float(), exact)
    scores, pick = exact.topk(min(k, exact.shape[1]), dim=1)
    entries = candidates.gather(1, pick)
    left_out = candidate_scores[:, -1].float()  # the best half score not among the candidates is at most this
    complete = candidates.shape[1] == len(slot_of) * cells  # every entry was a candidate
    clear = scores[:, -1] >= left_out + half_error(search_keys.dtype, keys.shape[1])
    unsure = ~(complete | torch.isinf(left_out) | clear)
    if bool(unsure.any()):
        rows = torch.nonzero(unsure).flatten()
        scores[rows], entries[rows] = _search(query[:, rows], keys, runs, k, outside[rows], windowed_from, budget)
    return scores, slot_of[entries // cells] * cells + entries % cells


def _search(
    query: torch.Tensor, keys: torch.Tensor, runs: list[range], k: int, outside: torch.Tensor, windowed_from: int, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (scores, entries numbered over the searched frames) by similarity in the inputs'
    dtype, over chunks of frames."""
    cells = keys.shape[2]
    k = min(k, sum(len(run) for run in runs) * cells)
    chunk = max(1, budget // (query.shape[1] * cells))
    scores, entries = [], []
    first = 0  # searched-frame number of the run's first slot
    for run in runs:
        for offset in range(0, len(run), chunk):
            block = keys[run.start + offset : min(run.stop, run.start + offset + chunk)]
            similarity = torch.einsum("cn,tcm->ntm", query, block)
            similarity[:, max(0, windowed_from - first - offset) :].masked_fill_(outside[:, None], -torch.inf)
            best, index = similarity.flatten(1).topk(min(k, similarity[0].numel()), dim=1)
            scores.append(best)
            entries.append(index + (first + offset) * cells)
        first += len(run)
    if len(scores) == 1:
        return scores[0], entries[0]
    best, pick = torch.cat(scores, 1).topk(k, dim=1)  # the joint top-k lies within the chunks' top-k
    return best, torch.cat(entries, 1).gather(1, pick)
