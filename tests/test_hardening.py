"""Issue 14's regression tests: bad disks, bad files and odd videos end in one line (exit 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from tests.cli_runner import assert_one_line_error, run_cli
from tests.test_cli import H, W, base_args, palette_mask  # noqa: F401 (fixture)


def _clip(path: Path, rotation: int = 0) -> Path:
    """A 6-frame W x H mp4 (display metadata rotating it by ``rotation`` degrees)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.set_display_rotation(rotation)
        for _ in range(6):
            frame = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_rotated_video_with_a_mask_of_the_stored_size(tmp_path, base_args, capsys, monkeypatch):
    """Item 8: say the video is rotated and how frames are read, not 'pass --resize-mask'."""
    clip = _clip(tmp_path / "phone.mp4", 90)
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "stored.png", labels)
    result = run_cli(["propagate", clip, "--mask", mask, "-o", tmp_path / "out", *base_args], capsys, monkeypatch)
    assert_one_line_error(result, "stored.png", "rotated by", "upright", f"{H}x{W}")
    assert "pass --resize-mask" not in result.err


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "text_encoder_2"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_weights_name_the_file(component, damage, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """Item 6: a truncated or garbage weight file is one line naming it, before any load."""
    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl, model)
    weights = next((model / component).glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100] if damage == "truncated" else b"\x07" * 4000)
    frames = _clip(tmp_path / "clip.mp4")
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 10:30] = 1
    mask = palette_mask(tmp_path / "first.png", labels)
    args = ["propagate", frames, "--mask", mask, "-o", tmp_path / "out", "--model", model, "--sam", "none", "--no-cache"]
    result = run_cli(args, capsys, monkeypatch)
    assert_one_line_error(result, f"{component}/{weights.name}", "damaged or incomplete weights; re-download")
