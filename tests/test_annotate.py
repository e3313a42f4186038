"""``pdmtrack annotate``'s server and session through HTTP (FastAPI's TestClient): every
endpoint, the token / Host / Origin checks, bad ids, frames, coordinates and paths, undo/redo,
tracking jobs, exports, and a project reopened as it was left.

The tracker is the prompts tests' one: stand-in features and ``TruthSam`` (a click answers
with the drawn object under it) on a synthetic clip of two crossing squares, so what a click
gives and what tracking follows are known."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pdmtrack import Tracker
from pdmtrack.annotate.app import allowed_hosts
from pdmtrack.annotate.project import Project
from pdmtrack.annotate.server import TOKEN_HEADER, create_app, token_cookie
from pdmtrack.annotate.session import AnnotationSession
from pdmtrack.errors import InputError
from tests.cli_runner import assert_one_line_error, run_cli
from tests.test_prompts import LENGTH, NO_SAM, around, centre, synthetic_session
from tests.test_propagate import MIN_IOU_VISIBLE, iou

TOKEN = "test-token"
HOST = "127.0.0.1:8765"


class App:
    """A session on the synthetic clip, its project folder, and a client holding the token."""

    def __init__(self, folder: Path) -> None:
        tracker, _, self.truth, self.sam = synthetic_session(folder / "clip")
        self.tracker, self.project_folder = tracker, folder / "project"
        project, reader = Project.open_or_create(self.project_folder, folder / "clip")
        self.session = AnnotationSession(tracker, project, reader)
        self.app = create_app(self.session, TOKEN, allowed_hosts("127.0.0.1"), 8765)
        self.client = TestClient(self.app, base_url=f"http://{HOST}", headers={TOKEN_HEADER: TOKEN})

    def reopen(self) -> AnnotationSession:
        """A new session on the same project folder (the server started again)."""
        project, reader = Project.open_or_create(self.project_folder, None)
        return AnnotationSession(self.tracker, project, reader)

    def post(self, path: str, body: dict, status: int = 200) -> dict:
        response = self.client.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()

    def labels(self, frame: int) -> np.ndarray:
        response = self.client.get(f"/api/labels/{frame}.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        return np.asarray(Image.open(io.BytesIO(response.content)))

    def track(self, **request: object) -> dict:
        self.post("/api/track", request)
        self.session.wait(60)
        return self.client.get("/api/state").json()


@pytest.fixture()
def app(tmp_path: Path) -> App:
    return App(tmp_path)


def test_requests_need_the_token_and_this_servers_host_and_origin(app: App) -> None:
    bare = TestClient(app.app, base_url=f"http://{HOST}")
    for path in ("/", "/api/state", "/static/app.js", "/api/labels/0.png", "/api/events"):
        assert bare.get(path).status_code == 403
        assert bare.get(path, headers={TOKEN_HEADER: "wrong"}).status_code == 403
    assert bare.post("/api/click", json={"frame": 0, "obj_id": 1, "x": 5, "y": 5}).status_code == 403
    opened = bare.get(f"/?token={TOKEN}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"  # the token leaves the address bar
    assert bare.cookies.get(token_cookie(8765)) == TOKEN and "httponly" in opened.headers["set-cookie"].lower()
    page = bare.get("/")  # the cookie now opens everything
    assert page.status_code == 200 and "pdmtrack annotate" in page.text and bare.get("/static/app.js").status_code == 200
    assert app.client.get("/api/state", headers={"host": "evil.example:8765"}).status_code == 403  # DNS rebinding
    assert app.client.get("/api/state", headers={"origin": "http://evil.example"}).status_code == 403
    assert app.client.get("/api/state", headers={"origin": f"http://{HOST}"}).status_code == 200
    assert app.client.get("/api/state", headers={"host": "localhost:8765"}).status_code == 200
    assert app.client.get("/api/state", headers={"host": "127.0.0.1:9000"}).status_code == 200  # an SSH tunnel's own port
    assert app.client.get("/api/state", headers={"host": "127.0.0.1.evil.example"}).status_code == 403
    assert app.client.get("/api/state", headers={"origin": "null"}).status_code == 403


def test_clicks_boxes_brush_clear_undo_redo(app: App) -> None:
    truth = app.truth
    reply = app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    assert reply["objects"] == [1]
    np.testing.assert_array_equal(app.labels(0), np.where(truth[0] == 1, 1, 0))
    app.post("/api/box", {"frame": 0, "obj_id": 2, "box": around(truth[0], 2)})
    np.testing.assert_array_equal(app.labels(0), truth[0])
    state = app.client.get("/api/state").json()
    assert state["objects"] == {"1": {"name": "", "colour": "#800000"}, "2": {"name": "", "colour": "#008000"}}  # DAVIS colours
    assert state["given"]["0"]["clicks"]["2"]["box"] == list(around(truth[0], 2)) and state["undo"] == 2
    app.post("/api/brush", {"frame": 0, "obj_id": 1, "points": [[2, 2], [20, 2]], "radius": 2})
    painted = app.labels(0)
    assert (painted[1:4, 2:21] == 1).all() and (painted[truth[0] == 2] == 2).all()
    app.post("/api/brush", {"frame": 0, "obj_id": 1, "points": [[2, 2], [20, 2]], "radius": 3, "erase": True})
    assert not (app.labels(0)[:5, :23] == 1).any()
    app.post("/api/clear", {"frame": 0, "obj_id": 2})
    assert not (app.labels(0) == 2).any()
    for _ in range(3):
        assert app.post("/api/undo", {})["frame"] == 0
    np.testing.assert_array_equal(app.labels(0), truth[0])  # back to the click and the box
    app.post("/api/redo", {})
    assert (app.labels(0)[1:4, 2:21] == 1).all()
    assert app.post("/api/undo", {})["frame"] == 0 and app.post("/api/undo", {})["frame"] == 0
    assert app.post("/api/undo", {})["frame"] == 0 and app.post("/api/undo", {})["frame"] is None  # nothing left
    assert not app.labels(0).any()


def test_objects_are_named_coloured_and_removed(app: App) -> None:
    truth = app.truth
    assert app.post("/api/objects", {"name": "square"})["obj_id"] == 1
    assert app.post("/api/objects", {})["obj_id"] == 2
    assert app.client.patch("/api/objects/1", json={"name": "stripes"}).status_code == 200  # the stand-in features know one class
    assert app.client.patch("/api/objects/2", json={"colour": "#00ff00"}).status_code == 200
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    app.post("/api/click", {"frame": 0, "obj_id": 2, "x": centre(truth[0], 2)[0], "y": centre(truth[0], 2)[1]})
    state = app.track()
    assert state["tracked"] == "t" * LENGTH and state["job"]["state"] == "finished"
    assert app.client.delete("/api/objects/2?from_frame=6").status_code == 200
    assert all(not (app.labels(t) == 2).any() for t in range(6, LENGTH)) and (app.labels(5) == 2).any()
    assert app.client.delete("/api/objects/2").status_code == 200
    state = app.client.get("/api/state").json()
    assert list(state["objects"]) == ["1"] and all(not (app.labels(t) == 2).any() for t in range(LENGTH))
    prompts = json.loads((app.project_folder / "prompts.json").read_text())
    assert prompts == [{"frame": 0, "obj_id": 1, "mask": "given/00000.png", "cls": "stripes"}]


def test_tracking_jobs_and_track_from_here_recompute_only_up_to_the_next_given_frame(app: App) -> None:
    truth = app.truth
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    app.post("/api/click", {"frame": 7, "obj_id": 1, "x": centre(truth[7], 1)[0], "y": centre(truth[7], 1)[1]})
    state = app.track(direction="both")
    assert state["tracked"] == "t" * LENGTH and state["job"]["total"] == LENGTH
    assert min(iou(app.labels(t) == 1, truth[t] == 1) for t in range(LENGTH)) >= MIN_IOU_VISIBLE
    before = {t: app.labels(t) for t in range(LENGTH)}
    app.post("/api/click", {"frame": 3, "obj_id": 2, "x": centre(truth[3], 2)[0], "y": centre(truth[3], 2)[1]})  # a new object at 3
    state = app.client.get("/api/state").json()
    assert state["tracked"] == "ttt" + "t" + "sss" + "ttt"  # frames after the changed frame 3, up to the given frame 7
    state = app.track(from_frame=3)
    assert state["job"]["total"] == 4 and state["job"]["done"] == 4  # frames 3..6: up to the next given frame
    assert state["tracked"] == "t" * LENGTH
    for t in (0, 1, 2, 7):
        np.testing.assert_array_equal(app.labels(t), before[t])
    assert min(iou(app.labels(t) == 2, truth[t] == 2) for t in range(3, 7)) >= MIN_IOU_VISIBLE
    backward = app.track(direction="backward", start=7, end=-1)
    assert backward["job"]["total"] == 8 and backward["job"]["state"] == "finished"
    assert (
        app.client.post("/api/track", json={"resume": True}).json()["error"] == "resume: no interrupted or cancelled tracking job to resume"
    )


def test_a_reopened_project_is_as_it_was_left(app: App) -> None:
    truth = app.truth
    app.post("/api/objects", {"name": "stripes", "colour": "#112233"})
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": 150, "y": 120, "positive": False})
    app.post("/api/box", {"frame": 4, "obj_id": 2, "box": around(truth[4], 2)})
    app.track()
    app.post("/api/brush", {"frame": 6, "obj_id": 1, "points": [[10, 100]], "radius": 4})  # a tracked frame edited: given now
    before = app.client.get("/api/state").json()
    reopened = app.reopen()
    after = reopened.summary()
    for key in ("objects", "given", "tracked", "job"):
        assert after[key] == before[key], key
    for frame in range(LENGTH):
        np.testing.assert_array_equal(reopened.labels(frame), app.labels(frame))
    assert 6 in reopened.state.masks and 4 in reopened.state.prompts.masks  # whole vs clicked-objects frames
    assert reopened.state.prompts.clicks[(0, 1)].labels == (1, 0)
    with pytest.raises(InputError, match="is the project of another video"):
        Project.open_or_create(app.project_folder, app.project_folder)


def test_temporaries_a_killed_server_left_go_when_the_project_opens(app: App) -> None:
    app.post("/api/box", {"frame": 0, "obj_id": 1, "box": around(app.truth[0], 1)})
    app.track()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead, alive = int(finished.stdout), os.getpid()
    left = {part: app.project_folder / part / f".00003.{dead}-abcd1234.tmp.png" for part in ("tracked", "given")}
    left["meta"] = app.project_folder / f".project.{dead}-abcd1234.tmp.json"
    running = app.project_folder / "tracked" / f".00004.{alive}-abcd1234.tmp.png"  # a live writer's: kept
    for path in [*left.values(), running]:
        path.write_bytes(b"")
    before = {path.name for path in (app.project_folder / "tracked").iterdir()} - {path.name for path in [left["tracked"], running]}
    reopened = app.reopen()
    assert not any(path.exists() for path in left.values()) and running.exists()
    assert {path.name for path in (app.project_folder / "tracked").iterdir()} == before | {running.name}
    assert reopened.summary()["tracked"] == app.client.get("/api/state").json()["tracked"]


@pytest.mark.parametrize("format", ["davis", "coco-rle", "overlay", "youtube-vis", "binary"])
def test_exports_hold_what_the_page_shows(app: App, format: str) -> None:
    from pycocotools import mask as coco

    truth = app.truth
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    app.track()
    folder = Path(app.post("/api/export", {"format": format})["folder"])
    assert folder.parent == app.project_folder / "exports" and app.client.get("/api/state").json()["exports"] == [folder.name]
    shown = [app.labels(t) for t in range(LENGTH)]
    if format == "davis":
        assert sorted(p.name for p in folder.iterdir()) == [f"{t:05d}.png" for t in range(LENGTH)]
        for t in range(LENGTH):
            np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{t:05d}.png")), shown[t])
    elif format == "coco-rle":
        frames = json.loads((folder / "masks.json").read_text())["frames"]
        for t, record in enumerate(frames):
            decoded = coco.decode({**record["objects"]["1"], "counts": record["objects"]["1"]["counts"].encode()})
            np.testing.assert_array_equal(decoded.astype(bool), shown[t] == 1)
    elif format == "youtube-vis":  # pdmtrack export's formats too
        (video,) = json.loads(folder.read_text())["annotations"]
        for t, rle in enumerate(video["segmentations"]):
            decoded = coco.decode({**rle, "counts": rle["counts"].encode()}) if rle else np.zeros_like(shown[t])
            np.testing.assert_array_equal(decoded.astype(bool), shown[t] == 1)
    elif format == "binary":
        for t in range(LENGTH):
            np.testing.assert_array_equal(np.asarray(Image.open(folder / "1" / f"{t:05d}.png")) == 255, shown[t] == 1)
    else:
        assert (folder / "overlay.mp4").stat().st_size > 1000
    app.post("/api/export", {"format": format})  # again: replaces it whole
    assert [p.name for p in (app.project_folder / "exports").iterdir()] == [folder.name]


def test_bad_ids_frames_coordinates_and_paths_are_refused(app: App) -> None:
    truth = app.truth
    cases = [
        ("/api/click", {"frame": 0, "obj_id": 0, "x": 5, "y": 5}, 422),
        ("/api/click", {"frame": 0, "obj_id": 256, "x": 5, "y": 5}, 422),
        ("/api/click", {"frame": LENGTH, "obj_id": 1, "x": 5, "y": 5}, 400),
        ("/api/click", {"frame": -1, "obj_id": 1, "x": 5, "y": 5}, 400),
        ("/api/click", {"frame": 0, "obj_id": 1, "x": 161, "y": 5}, 400),
        ("/api/click", {"frame": 0, "obj_id": 1, "x": "nan", "y": 5}, 422),
        ("/api/click", {"frame": 0, "obj_id": "1; rm -rf /", "x": 5, "y": 5}, 422),
        ("/api/box", {"frame": 0, "obj_id": 1, "box": [50, 10, 40, 30]}, 400),
        ("/api/box", {"frame": 0, "obj_id": 1, "box": [0, 0, 500, 30]}, 400),
        ("/api/brush", {"frame": 0, "obj_id": 1, "points": [[5, 5]], "radius": 0}, 422),
        ("/api/brush", {"frame": 0, "obj_id": 1, "points": [], "radius": 3}, 422),
        ("/api/brush", {"frame": 0, "obj_id": 1, "points": [[500, 5]], "radius": 3}, 400),
        ("/api/clear", {"frame": 0, "obj_id": 1}, 400),
        ("/api/track", {"direction": "sideways"}, 422),
        ("/api/track", {"from_frame": 4}, 400),
        ("/api/export", {"format": "../../etc"}, 400),
    ]
    for path, body, status in cases:
        response = app.client.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        if status == 400:
            assert isinstance(response.json()["error"], str) and "\n" not in response.json()["error"]
    assert app.client.post("/api/track", json={}).json()["error"].startswith("masks: give a mask")
    assert app.client.patch("/api/objects/9", json={"name": "x"}).status_code == 400
    assert app.client.patch("/api/objects/1", json={"colour": "red; x"}).status_code == 422
    assert app.client.delete("/api/objects/1?from_frame=99").status_code == 400
    for path in ("/api/frames/99.jpg", "/api/labels/-1.png"):
        assert app.client.get(path).status_code == 400
    for path in (
        "/api/frames/..%2Fproject.json",
        "/static/..%2F..%2Fproject.json",
        "/static/%2e%2e/session.py",
        "/api/labels/0.png/../../x",
    ):
        assert app.client.get(path).status_code in (404, 422), path
    state = app.client.get("/api/state").json()
    assert state["given"] == {} and state["undo"] == 0 and not list(app.project_folder.glob("given/*"))
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    assert app.client.get("/api/frames/0.jpg").headers["content-type"] == "image/jpeg"


def test_one_tracking_job_at_a_time_and_cancel_keeps_what_finished(app: App) -> None:
    truth = app.truth
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    features, gate = app.tracker._custom_features, threading.Event()

    def gated(frames: np.ndarray) -> object:  # the job waits at its first feature batch
        gate.wait(60)
        return features(frames)  # type: ignore[misc]

    app.tracker._custom_features = gated  # type: ignore[assignment]
    try:
        app.post("/api/track", {})
        response = app.client.post("/api/track", json={})
        assert response.status_code == 409 and response.json()["error"].startswith("tracking: a tracking job is running")
        assert app.client.delete("/api/objects/1").status_code == 409
        app.post("/api/cancel", {})
    finally:
        gate.set()
    app.session.wait(60)
    app.tracker._custom_features = features
    state = app.client.get("/api/state").json()
    assert state["job"]["state"] == "cancelled" and state["job"]["done"] <= 1
    resumed = app.track(resume=True)
    assert resumed["job"]["state"] == "finished" and resumed["tracked"] == "t" * LENGTH


def test_cli_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(["annotate", "--no-browser"], capsys, monkeypatch), "VIDEO", "give a VIDEO")
    assert_one_line_error(run_cli(["annotate", "missing.mp4", "--no-browser"], capsys, monkeypatch), "missing.mp4")
    (tmp_path / "one").mkdir()
    app = App(tmp_path / "one")
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "00000.png")
    result = run_cli(["annotate", other, "--project", app.project_folder, "--no-browser"], capsys, monkeypatch)
    assert_one_line_error(result, str(app.project_folder), "is the project of another video")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["annotate", "--project", app.project_folder, "--port", port, "--no-browser"], capsys, monkeypatch)
    assert_one_line_error(result, "--port", f"cannot listen on 127.0.0.1:{port}")
    assert_one_line_error(run_cli(["annotate", "--project", tmp_path / "empty", "--no-browser"], capsys, monkeypatch), "holds no project")


def test_track_from_a_clicks_only_frame_keeps_the_other_objects(app: App) -> None:
    truth = app.truth
    for obj_id in (1, 2):
        app.post("/api/click", {"frame": 0, "obj_id": obj_id, "x": centre(truth[0], obj_id)[0], "y": centre(truth[0], obj_id)[1]})
    app.session.tracker.add_points(app.session.state, 4, 1, [centre(truth[4], 1)])  # frame 4: object 1's clicks only, untracked
    app.session._persist(4)
    app.track()
    assert set(np.unique(app.labels(5))) == {0, 1, 2}
    app.track(from_frame=4)
    assert set(np.unique(app.labels(4))) == {0, 1, 2} and set(np.unique(app.labels(5))) == {0, 1, 2}
    assert 4 in app.session.state.masks  # the tracked object 2 joined frame 4's given mask


def test_resume_rewrites_frames_edited_behind_the_job(app: App) -> None:
    truth = app.truth
    app.post("/api/click", {"frame": 0, "obj_id": 1, "x": centre(truth[0], 1)[0], "y": centre(truth[0], 1)[1]})
    app.track()
    app.session.job.state, app.session.job.last_frame = "cancelled", 8  # as if cancelled after frame 8
    app.post("/api/brush", {"frame": 3, "obj_id": 1, "points": [[150, 10]], "radius": 6})  # frames 4.. stale
    assert app.client.get("/api/state").json()["tracked"] == "tttt" + "s" * (LENGTH - 4)
    expected = dict(app.tracker.propagate(app.session.state))  # what the given masks give now
    state = app.track(resume=True)
    assert state["tracked"] == "t" * LENGTH
    for t in range(LENGTH):  # the stale frames were rewritten, not skipped
        np.testing.assert_array_equal(app.labels(t), expected[t])


def test_an_object_ended_from_a_frame_stays_ended_after_a_restart_and_headless(
    app: App, tiny_sdxl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = app.truth
    for obj_id in (1, 2):
        app.post("/api/click", {"frame": 0, "obj_id": obj_id, "x": centre(truth[0], obj_id)[0], "y": centre(truth[0], obj_id)[1]})
    assert app.client.delete("/api/objects/2?from_frame=6").status_code == 200
    prompts = json.loads((app.project_folder / "prompts.json").read_text())
    assert prompts[-1] == {"obj_id": 2, "end": 6}
    reopened = app.reopen()
    assert reopened.state.prompts.ends == {2: 6}
    plain = Tracker(NO_SAM, features=app.tracker._custom_features)  # as propagate --sam none tracks
    results = dict(plain.propagate(reopened.state))
    assert (results[5] == 2).any() and not any((results[t] == 2).any() for t in range(6, LENGTH))
    # the same prompts file through propagate --prompts (stand-in features, the truth SAM is not needed: mask entries)
    monkeypatch.setattr("pdmtrack.tracking.models.Models.pdm_source", lambda self, classes: app.tracker._custom_features)
    args = ["propagate", tmp_path / "clip", "--prompts", app.project_folder / "prompts.json", "--sam", "none", "--context", "4"]
    args += ["--model", tiny_sdxl, "--size", "64"]
    result = run_cli([*args, "--device", "cpu", "--no-overlay", "-o", tmp_path / "headless"], capsys, monkeypatch)
    assert result.code == 0, result.err
    for t in range(LENGTH):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "headless" / f"{t:05d}.png")), results[t])


def test_frames_are_decoded_in_forward_runs_and_kept(app: App) -> None:
    from pdmtrack.annotate.frames import FrameJpegs

    reader = app.session.reader
    jpegs = FrameJpegs(reader, kept=6, ahead=3)
    expected = io.BytesIO()
    Image.fromarray(reader.read(0)).save(expected, format="JPEG", quality=90)
    assert jpegs.get(0) == expected.getvalue()
    assert [jpegs.get(t) is not None for t in (1, 2, 3)] and jpegs.decoded_runs == 1  # decoded with frame 0
    jpegs.get(4)
    assert jpegs.decoded_runs == 2 and jpegs.get(2) and jpegs.decoded_runs == 2
    jpegs.get(8)  # frames 8, 9: frames 0 and 1 leave (6 kept)
    jpegs.get(0)
    assert jpegs.decoded_runs == 4
    response = app.client.get("/api/frames/3.jpg")
    assert response.headers["content-type"] == "image/jpeg" and response.content == app.session.jpegs.get(3)
