"""pdmtrack: zero-shot instance tracking in videos with PDM diffusion features.

The public API: :class:`Tracker` (models loaded once; ``init_state``, ``add_mask``,
``propagate``), :func:`export` (a finished output folder's masks in another tool's format), :class:`TrackSettings` (every tunable), :class:`PDMFeatures` (the features
record a custom feature source returns), :class:`InputError` (a user mistake) and
:class:`ParameterError` (a bad value of a named parameter). They are imported on first use,
so ``import pdmtrack`` (and ``pdmtrack --help``) loads no torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pdmtrack.config import TrackSettings
    from pdmtrack.errors import InputError, ParameterError
    from pdmtrack.features.types import PDMFeatures
    from pdmtrack.runs.export_folder import export
    from pdmtrack.tracking.tracker import Tracker, VideoState

__version__ = "0.1.0"
_HOMES = {
    "InputError": "pdmtrack.errors",
    "export": "pdmtrack.runs.export_folder",
    "ParameterError": "pdmtrack.errors",
    "PDMFeatures": "pdmtrack.features.types",
    "TrackSettings": "pdmtrack.config",
    "Tracker": "pdmtrack.tracking.tracker",
    "VideoState": "pdmtrack.tracking.tracker",
}
__all__ = ["InputError", "PDMFeatures", "ParameterError", "TrackSettings", "Tracker", "VideoState", "export"]


def __getattr__(name: str) -> object:
    """The public names, imported from their modules on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'pdmtrack' has no attribute '{name}'")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
