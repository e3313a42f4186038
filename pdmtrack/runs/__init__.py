"""Runs that write folders: one video, images, batches of videos, the worker pool and Ray workers."""
