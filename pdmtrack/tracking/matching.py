"""PDM maps (paper Eq. 3-7) on batched tensors: reference mask, appearance, semantic, combined.

Every function works on any device (the target's device when reference and target differ)
and computes in float32 whatever the stored dtype. Maps are (B, h, w) over a batch of target
frames; a reference is one frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pdmtrack.config import AppearanceAgg, MatchConfig
from pdmtrack.features.types import PDMFeatures

# Most similarity entries held at once (topk-vote here, memory reads in memory.py).
SIMILARITY_BUDGET = 1 << 24


def minmax(x: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Min-max normalise each map over ``dims`` to [0, 1]; a constant map becomes zeros."""
    x = x.float()
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    return (x - low) / torch.where(span > 0, span, torch.ones_like(span))


def reference_mask_from_attention(class_attention: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 3-4: reference tokens of a class from its cross-attention map(s), (h, w) or (B, h, w).

    Each map is min-max normalised and thresholded with ``>= tau``, so for any tau <= 1 the
    attention peak is always a reference token. A constant map carries no spatial evidence
    and gives an empty mask for tau > 0; callers check ``mask.any()``.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    if class_attention.ndim not in (2, 3):
        shape = tuple(class_attention.shape)
        raise ValueError(f"class_attention must be (h, w) or (B, h, w), got {shape}")
    return minmax(class_attention) >= tau


def mask_to_grid(mask: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each grid cell covered by a (H, W) mask (nonzero = inside), as (h, w) float32.

    Cells follow adaptive average pooling: cell i spans rows floor(i*H/h) to ceil((i+1)*H/h).
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {tuple(mask.shape)}")
    inside = (mask != 0).float()[None, None]
    return F.adaptive_avg_pool2d(inside, grid)[0, 0]


def mask_to_grid_bool(mask: np.ndarray | torch.Tensor, grid: tuple[int, int], min_fraction: float = 0.5) -> torch.Tensor:
    """Reference tokens of a (H, W) mask on the feature grid: cells covered >= ``min_fraction``.

    An object too small to cover any cell that much still gets its best-covered cell(s) (all
    cells tied at the largest fraction). An empty mask gives an all-False grid.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction}")
    fractions = mask_to_grid(mask, grid)
    tokens = fractions >= min_fraction
    best = fractions.max()
    if not tokens.any() and best > 0:
        tokens = fractions == best
    return tokens


def appearance_map(
    ref_appearance: torch.Tensor, ref_mask: torch.Tensor, target_appearance: torch.Tensor, agg: AppearanceAgg = "mean", topk: int = 100
) -> torch.Tensor:
    """Eq. 5: similarity of every target token to the masked reference tokens -> (B, h2, w2).

    ref_appearance (Ca, h, w), ref_mask (h, w) bool, target_appearance (B, Ca, h2, w2).
    ``agg="mean"``: the cosine similarity to each reference token, averaged over the reference
    tokens (the paper). The mean of cosines equals the dot product of each unit target vector
    with the mean unit reference vector, so it costs one (B, Ca, h2*w2) product.
    ``agg="topk-vote"`` (the authors' PerMIS code): each reference token votes for its
    ``topk`` most cosine-similar target tokens of the same frame; a target token's score is
    the fraction of reference tokens that voted for it, in [0, 1].
    ``agg="euclidean-vote"`` (the authors' ``pdm_matching.py``): each reference token votes for
    its ``topk`` nearest target tokens by Euclidean distance between the raw (not normalised)
    features; a frame's votes are divided by their maximum, so its best token scores 1.
    """
    if ref_appearance.ndim != 3 or target_appearance.ndim != 4:
        raise ValueError("ref_appearance must be (Ca, h, w) and target_appearance (B, Ca, h, w)")
    channels, ref_height, ref_width = ref_appearance.shape
    if channels != target_appearance.shape[1]:
        target_channels = target_appearance.shape[1]
        raise ValueError(f"channel mismatch: reference {channels}, target {target_channels}")
    if tuple(ref_mask.shape) != (ref_height, ref_width):
        raise ValueError(f"ref_mask {tuple(ref_mask.shape)} is not on the reference grid")
    if not ref_mask.any():
        raise ValueError("the reference mask is empty: no reference token to match")
    device = target_appearance.device
    keep = ref_mask.to(device=device, dtype=torch.bool).flatten()
    reference = ref_appearance.to(device).float().flatten(1)[:, keep].T  # (N, Ca)
    batch, _, height, width = target_appearance.shape
    target = target_appearance.float().flatten(2)  # (B, Ca, M)
    if agg == "mean":
        scores = torch.einsum("c,bcm->bm", F.normalize(reference, dim=1).mean(dim=0), F.normalize(target, dim=1))
    elif agg == "topk-vote":
        scores = _topk_votes(F.normalize(reference, dim=1), F.normalize(target, dim=1), topk, euclidean=False)
        scores = scores / reference.shape[0]
    elif agg == "euclidean-vote":
        scores = _topk_votes(reference, target, topk, euclidean=True)
        scores = scores / scores.amax(dim=1, keepdim=True)
    else:
        raise ValueError(f"unknown appearance aggregation {agg!r} (mean, topk-vote or euclidean-vote)")
    return scores.reshape(batch, height, width)


def _topk_votes(reference: torch.Tensor, target: torch.Tensor, topk: int, euclidean: bool) -> torch.Tensor:
    """Votes (B, M) of reference tokens (N, C) for their top-k target tokens (B, C, M): the most
    similar by dot product (cosine for unit vectors), or the nearest by Euclidean distance."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    batch, _, tokens = target.shape
    k = min(topk, tokens)
    votes = target.new_zeros(batch, tokens)
    chunk = max(1, SIMILARITY_BUDGET // (batch * tokens))
    for start in range(0, reference.shape[0], chunk):
        part = reference[start : start + chunk]
        if euclidean:
            distance = torch.cdist(part.expand(batch, -1, -1), target.transpose(1, 2))  # (B, n, M)
            chosen = distance.topk(k, dim=-1, largest=False).indices.flatten(1)
        else:
            chosen = torch.einsum("nc,bcm->bnm", part, target).topk(k, dim=-1).indices.flatten(1)  # (B, n*k)
        votes.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=votes.dtype))
    return votes


def features_appearance_map(reference: PDMFeatures, ref_mask: torch.Tensor, target: PDMFeatures, config: MatchConfig) -> torch.Tensor:
    """Eq. 5 between feature records -> (B, h, w): one reference frame's masked tokens against
    the target frames. When both records keep attn1's query and key apart (``appearance_parts``)
    each part is matched separately, as the authors' code does, and the maps are averaged."""
    if reference.appearance_parts is None or target.appearance_parts is None:
        pairs = [(reference.appearance[0], target.appearance)]
    else:
        count = reference.appearance_parts.shape[1]
        pairs = [(reference.appearance_parts[0, i], target.appearance_parts[:, i]) for i in range(count)]
    maps = [appearance_map(ref, ref_mask, tgt, agg=config.appearance_agg, topk=config.vote_topk) for ref, tgt in pairs]
    return torch.stack(maps).mean(dim=0)


def semantic_map(class_vector: torch.Tensor, target_semantic: torch.Tensor) -> torch.Tensor:
    """Eq. 6: c . F_S at every target token; class_vector (Cs,), target_semantic (B, Cs, h, w)."""
    if class_vector.ndim != 1 or target_semantic.ndim != 4:
        raise ValueError("class_vector must be (Cs,) and target_semantic (B, Cs, h, w)")
    if class_vector.shape[0] != target_semantic.shape[1]:
        sizes = f"class vector {class_vector.shape[0]}, semantic {target_semantic.shape[1]}"
        raise ValueError(f"channel mismatch: {sizes}")
    vector = class_vector.to(target_semantic.device).float()
    return torch.einsum("c,bchw->bhw", vector, target_semantic.float())


def combined_map(appearance: torch.Tensor, semantic: torch.Tensor | None) -> torch.Tensor:
    """Eq. 7: mean of the min-max normalised maps; the min-maxed appearance map when no semantic."""
    if semantic is None:
        return minmax(appearance)
    if appearance.shape != semantic.shape:
        raise ValueError(f"map shapes differ: {tuple(appearance.shape)} vs {tuple(semantic.shape)}")
    return (minmax(appearance) + minmax(semantic)) / 2


def pdm_map(
    reference: PDMFeatures, ref_mask_grid: torch.Tensor, target: PDMFeatures, class_index: int | None, config: MatchConfig
) -> torch.Tensor:
    """Combined PDM map (B, h, w) of one reference frame's masked object over target frames.

    The semantic part uses ``reference.class_vectors[class_index]`` against
    ``target.semantic``; with ``class_index=None`` the appearance map stands alone.
    """
    if len(reference) != 1:
        raise ValueError(f"the reference must be one frame, got {len(reference)}")
    appearance = features_appearance_map(reference, ref_mask_grid, target, config)
    if class_index is None:
        return combined_map(appearance, None)
    if reference.class_vectors is None:
        raise ValueError("class_index given but the reference features have no class vectors")
    semantic = semantic_map(reference.class_vectors[class_index], target.semantic)
    return combined_map(appearance, semantic)
