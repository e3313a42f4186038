"""Choosing the torch device and dtype from the user's ``--device`` / ``--dtype``."""

from __future__ import annotations

import contextlib

import torch

from pdmtrack.errors import ParameterError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("device", f"'{name}' asked for, but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ParameterError("device", f"unknown device '{name}' (use auto, cuda or cpu)") from err


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 on CPU; otherwise fp16, bf16 or fp32 as asked."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ParameterError("dtype", f"unknown dtype '{name}' (use auto, fp16, bf16 or fp32)")
    return _DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on CUDA (fp32 weights, half-precision matrix work);
    nothing on CPU or for fp32."""
    if device.type != "cuda" or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def search_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Precision of the memory read's first pass: the run's half dtype on CUDA (tensor cores;
    the top-k stays exact), float32 elsewhere (half-precision matmuls are slow on CPUs)."""
    return dtype if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) else torch.float32
