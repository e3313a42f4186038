"""benchmarks/bench_gpu.py: one line and exit 0 without CUDA; every step runs (smoke, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_one_line_and_exit_0() -> None:
    result = run_bench()
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "no CUDA device" in result.stdout


@pytest.mark.slow
def test_smoke_run_goes_through_every_step() -> None:
    result = run_bench("--smoke", "--frames", "3", "--modes", "noise", "--refiners", "vit_b", "sam2.1-hiera-base-plus",
                       "--unet-batches", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("matrix peak", "SDXL load", "UNet alone", "feature extraction alone", "end to end"):
        assert heading in out, out
    for refiner in ("none", "vit_b", "sam2.1-hiera-base-plus"):
        assert f"noise  --sam {refiner} " in out, out
