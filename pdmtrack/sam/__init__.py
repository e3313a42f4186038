"""Segment Anything: loading checkpoints (``loading``) and refining masks (``refine``)."""
