"""Stuff filtering: background prototypes that look like a stuff class leave the background.

Thing classes' support images show stuff around the object (sky behind an aeroplane, grass
under a cow), so their background prototypes would claim a stuff class's pixels. When a
stuff class (``--stuff``; default list in ``config.DEFAULT_STUFF``) is among the classes
kept for an image, every background prototype whose cosine to any of that class's
foreground prototypes reaches ``threshold`` is dropped from the background class.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def stuff_flags(names: list[str], stuff: Iterable[str]) -> list[bool]:
    """Per class name, whether it is stuff (case and spacing ignored)."""
    folded = {" ".join(name.lower().split()) for name in stuff}
    return [" ".join(name.lower().split()) in folded for name in names]


def filter_background(background: torch.Tensor, stuff_foregrounds: list[torch.Tensor], threshold: float) -> torch.Tensor:
    """The rows of ``background`` (Q, C) whose cosine to every stuff foreground prototype
    (each (P, C), unit-norm) stays below ``threshold``."""
    keep = torch.ones(len(background), dtype=torch.bool, device=background.device)
    for foreground in stuff_foregrounds:
        if len(foreground) and len(background):
            keep &= (background @ foreground.T).amax(1) < threshold
    return background[keep]
