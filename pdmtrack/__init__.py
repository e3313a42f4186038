"""pdmtrack: zero-shot instance tracking in videos with PDM diffusion features.

The public API: :class:`Tracker` (models loaded once; ``init_state``, ``add_mask``,
``propagate``), :class:`TrackSettings` (every tunable), :class:`PDMFeatures` (the features
record a custom feature source returns) and :class:`InputError` (a user mistake)."""

from pdmtrack.config import TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.features.types import PDMFeatures
from pdmtrack.tracking.tracker import Tracker, VideoState

__version__ = "0.1.0"
__all__ = ["InputError", "PDMFeatures", "TrackSettings", "Tracker", "VideoState"]
