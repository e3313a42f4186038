"""OVDiff: open-vocabulary segmentation from prototypes of generated support images.

config (settings) | sampling (support images) | split (foreground/background) | kmeans |
prototypes | store (on disk) | builder (sample -> split -> features -> prototypes) |
clip_filter (category pre-filtering) | stuff | segment (nearest prototype) | instances
(class map -> objects) | pipeline (all of it over loaded models) | first_frame (objects of
a first frame, for ``Tracker.add_mask``). Writing folders is ``pdmtrack.runs.ovdiff_folder``'s.
"""
