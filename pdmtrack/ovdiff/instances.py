"""A class map -> tracked objects: each class's connected components become separate objects.

Used by ``propagate --init ovdiff``: OVDiff labels the first frame by class, and every
8-connected region of a class at least ``min_area`` of the frame becomes one object (ids
1..N in the order of the class list, then largest region first). Connected components, not
SAM, separate the instances: touching instances of one class stay one object.
"""

from __future__ import annotations

import cv2
import numpy as np


def split_instances(class_map: np.ndarray, names: list[str], min_area: float) -> tuple[np.ndarray, list[str]]:
    """(H, W) class ids (0 background, k = names[k-1]) -> (object ids (H, W) uint8, class per object)."""
    objects = np.zeros(class_map.shape, dtype=np.uint8)
    classes: list[str] = []
    least = max(1, int(np.ceil(min_area * class_map.size)))
    for index, name in enumerate(names, start=1):
        _, components, stats, _ = cv2.connectedComponentsWithStats((class_map == index).astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        for component in np.argsort(-areas, kind="stable") + 1:
            if stats[component, cv2.CC_STAT_AREA] < least or len(classes) == 255:
                continue
            classes.append(name)
            objects[components == component] = len(classes)
    return objects, classes
