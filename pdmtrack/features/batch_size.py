"""``--batch-size auto``: frames per feature batch from the GPU's free memory; 4 on the CPU.

On CUDA the extractor runs once on one blank frame of the video's size and the peak memory it
allocated is taken as one frame's cost (an overestimate: it includes the per-call overhead);
the batch is the number of such frames that half the free memory holds (the other half is
left to SAM, the memory read and the allocator), between 1 and ``MAX_AUTO_BATCH``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

CPU_BATCH = 4  # the CPU default: larger batches gain little there and cost memory
UNPROBED_CUDA_BATCH = 8  # on CUDA when no extractor can be probed (a custom feature source)
MAX_AUTO_BATCH = 32
FREE_SHARE = 0.5  # of the free GPU memory given to feature batches


def resolve_batch_size(
    value: int | str, device: torch.device, extract: Callable[[np.ndarray], object] | None = None,
    frame_shape: tuple[int, int] | None = None,
) -> int:  # fmt: skip
    """Frames per feature batch: ``value`` itself unless it is "auto"; then ``CPU_BATCH`` off
    CUDA, else from free memory over one frame's peak cost, probed with ``extract`` on a blank
    (H, W) = ``frame_shape`` frame (``UNPROBED_CUDA_BATCH`` without them)."""
    if value != "auto":
        return int(value)
    if device.type != "cuda":
        return CPU_BATCH
    if extract is None or frame_shape is None:
        return UNPROBED_CUDA_BATCH
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    extract(np.zeros((1, *frame_shape, 3), dtype=np.uint8))
    torch.cuda.synchronize(device)
    per_frame = max(1, torch.cuda.max_memory_allocated(device) - before)
    free, _ = torch.cuda.mem_get_info(device)
    reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch
    return max(1, min(MAX_AUTO_BATCH, int(FREE_SHARE * (free + reusable) / per_frame)))
