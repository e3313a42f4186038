"""Tiny random-weight models built from configs, for tests, benchmarks and tools.

They go through the same loading code as a user's real checkpoint (``--model PATH``,
``--sam-checkpoint FILE``); nothing here downloads anything.
"""
