"""``pdmtrack annotate`` through HTTP: click-to-mask round trips (first click on a frame: SAM's
encoder + decoder; later clicks: decoder only), frame and label-map fetch latency, tracking
frames/s through the app against ``Tracker.propagate`` directly (the app's overhead), and
after a correction at frame k the frames recomputed and the features computed.

The server runs in this process on a real socket (uvicorn, as ``pdmtrack annotate`` runs it),
the client is httpx. Models: the tiny random-weight SDXL at size 64 (``--inversion noise``)
and SAM (tiny, or vit_b's full architecture with ``--sam vit_b``), on the CPU by default;
the clip is davis-mini's blackswan (50 frames of 854x480) when ../shared/data is there.

    python benchmarks/bench_annotate.py               # tiny SAM
    python benchmarks/bench_annotate.py --sam vit_b --clicks-only   # clicks with SAM vit_b's real shapes (random weights)
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

from pdmtrack import Tracker, TrackSettings
from pdmtrack.annotate.app import allowed_hosts, bind
from pdmtrack.annotate.frames import FrameJpegs
from pdmtrack.annotate.project import Project
from pdmtrack.annotate.server import TOKEN_HEADER, create_app
from pdmtrack.annotate.session import AnnotationSession
from pdmtrack.io.video import FrameReader
from pdmtrack.io.writers import write_video
from pdmtrack.sam.loading import OFFICIAL_ARCHITECTURES
from pdmtrack.testing.diffusion import build_tiny_pipeline
from pdmtrack.testing.sam import TINY_SAM, build_tiny_sam

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis-mini"


def clip(folder: Path, frames: int) -> Path:
    """``frames`` frames of blackswan (or noise) as a frame folder."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(frames):
        source = DAVIS / "JPEGImages" / "480p" / "blackswan" / f"{index:05d}.jpg"
        image = Image.open(source) if source.exists() else Image.fromarray(rng.integers(0, 255, (480, 854, 3), dtype=np.uint8))
        image.save(folder / f"{index:05d}.jpg", quality=95)
    return folder


class Served:
    """An annotation session served on a free port in a thread; ``client`` holds the token."""

    def __init__(self, tracker: Tracker, video: Path, project: Path) -> None:
        opened, reader = Project.open_or_create(project, video)
        self.session = AnnotationSession(tracker, opened, reader)
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        app = create_app(self.session, "token", allowed_hosts("127.0.0.1"), port)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={TOKEN_HEADER: "token"}, timeout=600)

    def timed(self, method: str, path: str, **kwargs: object) -> float:
        began = time.perf_counter()
        self.client.request(method, path, **kwargs).raise_for_status()  # type: ignore[arg-type]
        return time.perf_counter() - began

    def track(self, **request: object) -> tuple[float, dict]:
        """Wall seconds from the request to the job's end, and the job. The client waits on the
        job's thread rather than polling /api/state (a page hears of each frame by its event
        stream; polling the state 100 times a second costs a 2-core machine a third of its time)."""
        began = time.perf_counter()
        self.client.post("/api/track", json=request).raise_for_status()
        self.session.wait()
        seconds = time.perf_counter() - began
        return seconds, self.client.get("/api/state").json()["job"]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def frames_from_a_video_file(scratch: Path, video: Path) -> None:
    """A frame as the page fetches it, from an mp4 (libx264, one keyframe per 250 frames):
    decoded alone and encoded (a seek per frame), against ``FrameJpegs`` (runs decoded forward, kept)."""
    frames = [np.asarray(Image.open(path)) for path in sorted(video.glob("*.jpg"))]
    write_video(scratch / "clip.mp4", frames, 24)
    reader = FrameReader(scratch / "clip.mp4")
    for order_name, order in (
        ("in order (playing)", list(range(len(frames)))),
        ("random (scrubbing)", list(np.random.default_rng(0).permutation(len(frames)))),
    ):
        alone, runs = [], []
        jpegs = FrameJpegs(reader)
        for frame in order:
            began = time.perf_counter()
            buffer = io.BytesIO()
            Image.fromarray(reader.read(int(frame))).save(buffer, format="JPEG", quality=90)
            alone.append(time.perf_counter() - began)
            began = time.perf_counter()
            jpegs.get(int(frame))
            runs.append(time.perf_counter() - began)
        print(f"frame from the mp4, {order_name}: decoded alone {median_ms(alone)}; FrameJpegs {median_ms(runs)} "
              f"(mean {1000 * statistics.mean(alone):.1f} vs {1000 * statistics.mean(runs):.1f} ms)")  # fmt: skip


def median_ms(values: list[float]) -> str:
    return f"median {1000 * statistics.median(values):.1f} ms (min {1000 * min(values):.1f}, max {1000 * max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="tiny", choices=["tiny", *sorted(OFFICIAL_ARCHITECTURES)])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="tracking runs each way")
    parser.add_argument(
        "--clicks-only",
        action="store_true",
        help="clicks and fetches only (with --sam vit_b: tracking would run SAM's encoder every frame)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        model = build_tiny_pipeline(scratch / "sdxl", family="sdxl")
        sam = build_tiny_sam(scratch / "sam.safetensors", arch=TINY_SAM if args.sam == "tiny" else OFFICIAL_ARCHITECTURES[args.sam])
        video = clip(scratch / "clip", args.frames)
        options = dict(model=model, size=64, inversion="noise", sam="vit_b", sam_checkpoint=sam, device=args.device)
        print(f"{args.frames} frames of 854x480, tiny SDXL at size 64 (noise), SAM {args.sam} (random weights), {args.device}")

        # clicks and fetches
        served = Served(Tracker(TrackSettings.from_options(**options, no_cache=True)), video, scratch / "clicks")
        first, later = [], []
        for frame in range(3):
            first.append(served.timed("POST", "/api/click", json={"frame": frame, "obj_id": 1, "x": 330, "y": 310}))
            later += [served.timed("POST", "/api/click", json={"frame": frame, "obj_id": 1, "x": 100 + 50 * k, "y": 60, "positive": False})
                      for k in range(4)]  # fmt: skip
        print(f"click round trip, first on a frame (encoder + decoder): {median_ms(first)}")
        print(f"click round trip, later on the same frame (decoder):    {median_ms(later)}")
        print(f"ratio first / later: {statistics.median(first) / statistics.median(later):.1f}x")
        jpegs = [served.timed("GET", f"/api/frames/{frame}.jpg") for frame in range(args.frames)]
        labels = [served.timed("GET", f"/api/labels/{frame}.png") for frame in range(args.frames)]
        print(f"frame fetch (JPEG): {median_ms(jpegs)}; label map fetch (PNG): {median_ms(labels)}")

        served.close()
        frames_from_a_video_file(scratch, video)
        if args.clicks_only:
            return

        # tracking through the app against the Tracker directly, features computed in both, alternated
        rates: dict[str, list[float]] = {"app": [], "direct": []}
        for round_ in range(args.rounds):
            tracker = Tracker(TrackSettings.from_options(**options, no_cache=True))
            state = tracker.init_state(video)
            tracker.add_points(state, 0, 1, [(330, 310)])
            sum(1 for _ in tracker.propagate(state, end=5))  # warm-up: the app's runs find the tracker warm too
            began = time.perf_counter()
            direct = sum(1 for _ in tracker.propagate(state))
            rates["direct"].append(direct / (time.perf_counter() - began))
            served = Served(tracker, video, scratch / f"track-{round_}")
            served.client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 330, "y": 310}).raise_for_status()
            seconds, job = served.track(direction="forward")
            rates["app"].append(job["done"] / seconds)
            served.close()
        app_fps, direct_fps = statistics.median(rates["app"]), statistics.median(rates["direct"])
        print(f"tracking {args.frames} frames ({args.rounds} rounds each, alternated; medians): through the app {app_fps:.2f} frames/s, "
              f"Tracker.propagate {direct_fps:.2f} frames/s; app overhead {100 * (direct_fps / app_fps - 1):.1f}%")  # fmt: skip

        # a correction at frame k, then "track from here", with the feature cache
        served = Served(Tracker(TrackSettings.from_options(**options, cache_dir=scratch / "cache")), video, scratch / "correct")
        k, next_given = args.frames // 2, (3 * args.frames) // 4
        served.client.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 330, "y": 310}).raise_for_status()
        served.client.post("/api/click", json={"frame": next_given, "obj_id": 1, "x": 330, "y": 310}).raise_for_status()
        served.track(direction="forward")
        computed = served.session.state.computed_frames
        served.client.post("/api/click", json={"frame": k, "obj_id": 1, "x": 200, "y": 100, "positive": False}).raise_for_status()
        _, job = served.track(from_frame=k)
        print(f"correction at frame {k} (next given frame {next_given}): track from here yielded {job['done']} frames "
              f"({k}..{next_given - 1}: frame {k} itself and {job['done'] - 1} recomputed); features computed: "
              f"{served.session.state.computed_frames - computed}")  # fmt: skip
        served.close()


if __name__ == "__main__":
    main()
