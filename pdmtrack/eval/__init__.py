"""Evaluation: DAVIS 2017 J/F (official protocol), image and retrieval metrics, report tables."""
