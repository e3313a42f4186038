"""``pdmtrack annotate`` as a real process: SIGKILLed mid-propagation and started again, nothing
is lost and the job resumes; the project's prompts.json reproduces its tracking headless; the
event stream reports frames; a wheel holds the page and serves it from a non-editable install."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pdmtrack.annotate.server import TOKEN_HEADER
from tests.annotate_server import Server, clip_folder, free_port
from tests.cli_runner import run_cli

FRAMES = 40
ROOT = Path(__file__).resolve().parents[1]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


@pytest.mark.slow
def test_sigkill_mid_propagation_loses_nothing_and_the_job_resumes(
    davis_mini: Path, tiny_sdxl: Path, tiny_sam: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = clip_folder(davis_mini, tmp_path / "clip", FRAMES)
    project, cache, models = tmp_path / "project", tmp_path / "cache", {"model": tiny_sdxl, "sam": tiny_sam}
    server = Server(project, models, cache, video=clip)
    try:
        assert server.client.post("/api/objects", json={"name": "swan"}).json() == {"obj_id": 1}
        server.client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 330, "y": 310}).raise_for_status()
        server.client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 700, "y": 60, "positive": False}).raise_for_status()
        server.client.post("/api/box", json={"frame": 20, "obj_id": 2, "box": [600, 20, 760, 140]}).raise_for_status()
        given_before = server.state()["given"]
        server.client.post("/api/track", json={"direction": "forward"}).raise_for_status()
        status = project / "tracking.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill once a checkpoint has recorded some frames
            job = json.loads(status.read_text())["job"]
            if job["state"] == "running" and (job["last_frame"] or 0) >= 3:
                break
            time.sleep(0.05)
        server.kill()
    finally:
        server.stop()
    assert job["last_frame"] < FRAMES - 1, "the job ended before the kill: make the clip longer"
    written = digests(project / "tracked")
    assert len(written) >= job["last_frame"] + 1

    server = Server(project, models, cache)  # started again on the project alone
    try:
        state = server.state()
        assert state["job"]["state"] == "interrupted" and state["job"]["last_frame"] >= job["last_frame"]
        assert state["given"] == given_before and state["objects"] == {
            "1": {"name": "swan", "colour": "#800000"},
            "2": {"name": "", "colour": "#008000"},
        }
        events: list[dict] = []

        def listen() -> None:
            with httpx.stream(
                "GET", f"http://127.0.0.1:{server.port}/api/events", headers={TOKEN_HEADER: server.token}, timeout=120
            ) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                    if any(event["type"] == "frame" for event in events) and any(event["type"] == "state" for event in events[1:]):
                        return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(1)
        server.client.post("/api/track", json={"resume": True}).raise_for_status()
        state = server.wait_job()
        assert state["job"]["state"] == "finished" and state["tracked"] == "t" * FRAMES
        listener.join(30)
        assert any(event["type"] == "frame" for event in events)
    finally:
        server.stop()
    after = digests(project / "tracked")
    assert {name: after[name] for name in written} == written  # what finished before the kill is kept as it was

    # the project's prompts.json reproduces the app's tracking headless
    args = ["propagate", clip, "--prompts", project / "prompts.json", "--model", tiny_sdxl, "--size", "64", "--inversion", "noise"]
    args += [
        "--sam",
        "vit_b",
        "--sam-checkpoint",
        tiny_sam,
        "--device",
        "cpu",
        "--cache-dir",
        cache,
        "--no-overlay",
        "-o",
        tmp_path / "headless",
    ]
    result = run_cli(args, capsys, monkeypatch)
    assert result.code == 0, result.err
    assert "features: 40 frames from cache, 0 computed" in result.out
    headless = digests(tmp_path / "headless")
    assert headless.pop("first_frame_mask.png") == after["00000.png"] and headless == after


@pytest.mark.slow
def test_a_wheel_holds_the_page_and_serves_it_from_a_plain_install(
    davis_mini: Path, tiny_sdxl: Path, tiny_sam: Path, tmp_path: Path
) -> None:
    """``pip wheel . --no-deps``; the wheel installed (not editable) into its own folder, ahead
    of this checkout on the path, runs ``pdmtrack annotate`` and serves the page from there."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel")],
                   check=True, capture_output=True, cwd=tmp_path, timeout=600)  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("pdmtrack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for page in ("index.html", "app.js", "app.css"):
        assert f"pdmtrack/annotate/static/{page}" in names
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    clip = clip_folder(davis_mini, tmp_path / "clip", 3)
    args = [sys.executable, "-c", "from pdmtrack.cli import main; import pdmtrack, sys; print(pdmtrack.__file__, flush=True); main()", "annotate",
            str(clip), "--project", str(tmp_path / "p"), "--no-browser", "--port", str(port), "--model", str(tiny_sdxl), "--size", "64",
            "--sam", "vit_b", "--sam-checkpoint", str(tiny_sam), "--device", "cpu", "--no-cache"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        first = process.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith(str(target)), first  # the installed copy, not this checkout
        line = ""
        deadline = time.monotonic() + 240
        while "?token=" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()  # type: ignore[union-attr]
        token = line.split("token=")[1].strip()
        page = httpx.get(f"http://127.0.0.1:{port}/", headers={TOKEN_HEADER: token})
        script = httpx.get(f"http://127.0.0.1:{port}/static/app.js", headers={TOKEN_HEADER: token})
        assert page.status_code == 200 and "pdmtrack annotate" in page.text and "window.pdmtrack" in script.text
        assert np.asarray(
            Image.open(
                __import__("io").BytesIO(httpx.get(f"http://127.0.0.1:{port}/api/frames/0.jpg", headers={TOKEN_HEADER: token}).content)
            )
        ).shape == (480, 854, 3)
    finally:
        process.terminate()
        process.wait(30)
