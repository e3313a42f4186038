"""A class's prototypes from the features of its support images and their fg/bg cells.

Foreground: class-level (the mean of every foreground feature of the set, i.e. the image
means weighted by foreground size), instance-level (one mean per support image) and
part-level (spherical k-means, K = 32, over all foreground features). Background: one mean
per support image and k-means parts over all background features. Features are L2-normalised
per cell before averaging; every prototype is unit-norm, so a dot product is the cosine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from pdmtrack.features.types import PDMFeatures
from pdmtrack.ovdiff.config import FeatureKind
from pdmtrack.ovdiff.kmeans import spherical_kmeans
from pdmtrack.ovdiff.split import CellSplit


@dataclass
class ClassPrototypes:
    """Unit-norm prototypes of one class, each (n, C) float32 (n may be 0 for the background)."""

    fg_class: torch.Tensor
    fg_instance: torch.Tensor
    fg_part: torch.Tensor
    bg_instance: torch.Tensor
    bg_part: torch.Tensor

    @property
    def foreground(self) -> torch.Tensor:
        """Every foreground prototype, (P, C)."""
        return torch.cat([self.fg_class, self.fg_instance, self.fg_part])

    @property
    def background(self) -> torch.Tensor:
        """Every background prototype, (Q, C)."""
        return torch.cat([self.bg_instance, self.bg_part])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Name -> tensor, for storing."""
        return {f.name: getattr(self, f.name).contiguous() for f in fields(self)}

    @staticmethod
    def from_tensors(tensors: dict[str, torch.Tensor]) -> ClassPrototypes:
        """Inverse of ``tensors`` (a missing name is a KeyError)."""
        return ClassPrototypes(**{f.name: tensors[f.name].float() for f in fields(ClassPrototypes)})


def feature_maps(features: PDMFeatures, kind: FeatureKind) -> torch.Tensor:
    """The compared features (B, C, h, w) float32: semantic, appearance, or both (each
    L2-normalised per cell, then concatenated)."""
    if kind == "semantic":
        return features.semantic.float()
    if kind == "appearance":
        return features.appearance.float()
    return torch.cat([F.normalize(features.semantic.float(), dim=1), F.normalize(features.appearance.float(), dim=1)], 1)


def build_class_prototypes(maps: torch.Tensor, cells: CellSplit, parts: int, iterations: int, seed: int) -> ClassPrototypes:
    """maps (N, C, h, w) features of the support images; cells their fg/bg cells (N, h, w)."""
    tokens = F.normalize(maps.float(), dim=1).flatten(2).transpose(1, 2)  # (N, h*w, C)
    foreground = cells.foreground.flatten(1)
    background = cells.background.flatten(1)
    if not bool(foreground.any()):
        raise ValueError("no support image has a foreground cell")
    fg_tokens = tokens[foreground]
    return ClassPrototypes(
        fg_class=F.normalize(fg_tokens.mean(0, keepdim=True), dim=1),
        fg_instance=_image_means(tokens, foreground),
        fg_part=spherical_kmeans(fg_tokens, parts, iterations, seed),
        bg_instance=_image_means(tokens, background),
        bg_part=spherical_kmeans(tokens[background], parts, iterations, seed)
        if bool(background.any())
        else tokens.new_zeros((0, tokens.shape[-1])),
    )


def _image_means(tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of each image's selected tokens, for the images with any selected."""
    weights = cells.float()
    sums = (tokens * weights[..., None]).sum(1)
    return F.normalize(sums[cells.any(1)], dim=1)
