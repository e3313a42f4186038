"""Tracking: the Tracker session, the Propagator, its memory, matching and first-frame masks; writes no files."""
