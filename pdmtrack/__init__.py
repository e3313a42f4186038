"""pdmtrack: zero-shot instance tracking in videos with PDM diffusion features."""

__version__ = "0.1.0"
