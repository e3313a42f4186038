"""--batch-size: a number, or auto (4 on the CPU, from free memory on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdmtrack.config import RuntimeConfig, TrackSettings
from pdmtrack.errors import InputError
from pdmtrack.features.batch_size import CPU_BATCH, MAX_AUTO_BATCH, resolve_batch_size


def test_auto_is_the_default_and_four_frames_on_the_cpu() -> None:
    assert RuntimeConfig().batch_size == "auto"
    assert resolve_batch_size("auto", torch.device("cpu")) == CPU_BATCH == 4
    assert resolve_batch_size(7, torch.device("cpu")) == 7


def test_numbers_from_the_command_line_and_bad_values() -> None:
    assert TrackSettings.from_options(batch_size="6").runtime.batch_size == 6
    for bad in ("many", "0", 0, "-2"):
        with pytest.raises(InputError, match="^batch_size: "):
            RuntimeConfig(batch_size=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_probes_one_frame() -> None:
    calls = []

    def extract(frames: np.ndarray) -> torch.Tensor:
        calls.append(frames.shape)
        return torch.empty(64 << 20, dtype=torch.uint8, device="cuda")  # 64 MiB "per frame"

    batch = resolve_batch_size("auto", torch.device("cuda"), extract, (480, 854))
    assert calls == [(1, 480, 854, 3)] and 1 <= batch <= MAX_AUTO_BATCH
