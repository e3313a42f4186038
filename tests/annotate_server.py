"""``pdmtrack annotate`` as a real server process, with the tiny models, for the tests that
kill it or drive it from a browser."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from pdmtrack.annotate.server import TOKEN_HEADER

START_SECONDS = 240  # loading the tiny models on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clip_folder(davis_mini: Path, folder: Path, frames: int, sequence: str = "blackswan") -> Path:
    """The first ``frames`` frames of a davis-mini sequence as a frame folder (links)."""
    folder.mkdir(parents=True)
    for index in range(frames):
        (folder / f"{index:05d}.jpg").symlink_to(davis_mini / "JPEGImages" / "480p" / sequence / f"{index:05d}.jpg")
    return folder


class Server:
    """``pdmtrack annotate [VIDEO] --project DIR`` in a subprocess; ``client`` holds its token."""

    def __init__(self, project: Path, models: dict[str, Path], cache: Path, video: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "pdmtrack.cli", "annotate", *([str(video)] if video else []), "--project", str(project),
                "--no-browser", "--port", str(self.port), "--model", str(models["model"]), "--size", "64", "--inversion", "noise",
                "--sam", "vit_b", "--sam-checkpoint", str(models["sam"]), "--device", "cpu", "--cache-dir", str(cache), *extra]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        found = threading.Event()

        def read() -> None:
            for line in self.process.stdout:  # type: ignore[union-attr]
                self.output.append(line)
                if "?token=" in line:
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(START_SECONDS):
            self.kill()
            raise RuntimeError("pdmtrack annotate did not start:\n" + "".join(self.output))
        self.url = re.search(r"http://\S+", "".join(self.output))[0]  # type: ignore[index]
        self.token = self.url.split("token=")[1]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={TOKEN_HEADER: self.token}, timeout=60)

    def state(self) -> dict:
        return self.client.get("/api/state").json()

    def wait_job(self, timeout: float = 300) -> dict:
        """The state once the running job has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state["job"] and state["job"]["state"] != "running":
                return state
            time.sleep(0.2)
        raise TimeoutError("the tracking job did not end")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
