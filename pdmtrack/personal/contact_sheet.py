"""A contact sheet of retrieval results: the query (its instance tinted) and the best gallery
images, each with its PDM map blended in as a heat map, captioned with rank and score."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from pdmtrack.io.writers import blend_labels

TILE = 224  # tile height in pixels; widths keep each image's aspect ratio up to 2x
COLUMNS = 4
_CAPTION = 18


def _tile(image: np.ndarray, caption: str) -> Image.Image:
    height, width = image.shape[:2]
    size = (min(2 * TILE, max(1, round(width * TILE / height))), TILE)
    tile = Image.new("RGB", (size[0], TILE + _CAPTION), "white")
    tile.paste(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR), (0, _CAPTION))
    ImageDraw.Draw(tile).text((4, 3), caption, fill="black")
    return tile


def heat_blend(image: np.ndarray, heat: torch.Tensor, alpha: float = 0.45) -> np.ndarray:
    """``image`` with a (h, w) map in [0, 1] upsampled over it as a JET heat map."""
    height, width = image.shape[:2]
    up = F.interpolate(heat[None, None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    colours = cv2.applyColorMap(np.uint8(np.clip(up.numpy(), 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    return np.rint(image * (1 - alpha) + colours * alpha).astype(np.uint8)


def contact_sheet(
    query: np.ndarray, query_mask: np.ndarray | None, results: Sequence[tuple[np.ndarray, str, torch.Tensor | None]]
) -> Image.Image:
    """The sheet: the query first, then each (image, caption, PDM map or None), in rows."""
    shown = query if query_mask is None else blend_labels(query, query_mask.astype(np.uint8))
    tiles = [_tile(shown, "query")]
    tiles += [_tile(image if heat is None else heat_blend(image, heat), caption) for image, caption, heat in results]
    rows = [tiles[i : i + COLUMNS] for i in range(0, len(tiles), COLUMNS)]
    width = max(sum(t.width for t in row) + 4 * (len(row) - 1) for row in rows)
    sheet = Image.new("RGB", (width, len(rows) * (TILE + _CAPTION + 4) - 4), "white")
    for r, row in enumerate(rows):
        x = 0
        for tile in row:
            sheet.paste(tile, (x, r * (TILE + _CAPTION + 4)))
            x += tile.width + 4
    return sheet
