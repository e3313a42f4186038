"""``pdmtrack annotate`` in a real browser: Debian's chromium driven by Selenium through
chromedriver, against the real server with the tiny models on 12 frames of davis-mini's
blackswan. Each step saves a screenshot under test-artifacts/annotate/.

Skipped, with the reason printed, only where no chromium/chromedriver can be had; under CI
(``PDMTRACK_CI=1``, set by .ci/run, which installs them) a missing browser is a failure."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdmtrack import Tracker, TrackSettings
from tests.annotate_server import Server, clip_folder

FRAMES = 12
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "annotate"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Debian's chromium as root, headless, with no background traffic (the machine's network is closed)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000")  # fmt: skip


def chrome():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        reason = f"no browser: {CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("PDMTRACK_CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def clicked_point(clip: Path, tiny_sam: Path) -> tuple[int, int]:
    """The click whose mask from the tiny random-weight SAM covers the click and most of the
    frame. Random weights give random masks; the scenario needs one that shows under the
    click, and a large one, which the tiny models still track to frame 10 (with ``--context 0``:
    every frame from the given masks alone; through recent frames it fades out by frame 3)."""
    tracker = Tracker(TrackSettings.from_options(sam="vit_b", sam_checkpoint=tiny_sam, device="cpu"), features=lambda frames: None)
    state = tracker.init_state(clip)
    covered = []
    for y in range(20, 480, 40):
        for x in range(20, 854, 40):
            labels = tracker.add_points(state, 0, 1, [(x + 0.5, y + 0.5)])
            tracker.reset_state(state)
            if labels[y, x] == 1:
                covered.append((float((labels == 1).mean()), x, y))
    assert covered, "no click gives a mask covering it"
    _, x, y = max(covered)
    return x, y


class Page:
    """The page in the browser, through the ``window.pdmtrack`` handle it exposes."""

    def __init__(self, driver, url: str) -> None:  # type: ignore[no-untyped-def]
        self.driver = driver
        self.step = 0
        self.open(url)

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.driver.execute_async_script("window.pdmtrack.ready.then(() => arguments[0]())")

    def js(self, script: str, *args: object) -> object:
        return self.driver.execute_script("return " + script, *args)

    def shot(self, name: str) -> None:
        self.step += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"{self.step:02d}-{name}.png"))

    def labels(self, frame: int) -> np.ndarray:
        self.driver.execute_async_script("window.pdmtrack.show(arguments[0]).then(() => arguments[1]())", frame)
        wait_for(lambda: self.js("window.pdmtrack.frame()") == frame, f"frame {frame}")
        return np.array(self.js("window.pdmtrack.labels()"), dtype=np.uint8).reshape(480, 854)

    def click(self, x: float, y: float, negative: bool = False) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        canvas = self.driver.find_element(By.ID, "canvas")
        width, height = self.js("[arguments[0].getBoundingClientRect().width, arguments[0].getBoundingClientRect().height]", canvas)
        dx, dy = (x + 0.5) * width / 854 - width / 2, (y + 0.5) * height / 480 - height / 2
        actions = ActionChains(self.driver).move_to_element_with_offset(canvas, round(dx), round(dy))
        (actions.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT) if negative else actions.click()).perform()

    def press(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        actions = ActionChains(self.driver)
        for key in keys:
            actions.send_keys(key)
        actions.perform()

    def chord(self, modifier: str, key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).key_down(modifier).send_keys(key).key_up(modifier).perform()

    def button(self, element_id: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.ID, element_id).click()

    def progress(self) -> str:
        return str(self.js("document.getElementById('progress-text').textContent"))


@pytest.mark.slow
def test_click_track_correct_undo_export_reload_restart_in_chromium(
    davis_mini: Path, tiny_sdxl: Path, tiny_sam: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    driver = chrome()
    clip = clip_folder(davis_mini, tmp_path / "clip", FRAMES)
    x, y = clicked_point(clip, tiny_sam)
    project, cache, models = tmp_path / "project", tmp_path / "cache", {"model": tiny_sdxl, "sam": tiny_sam}
    server = Server(project, models, cache, video=clip, extra=("--context", "0"))
    try:
        page = Page(driver, server.url)
        page.shot("opened")

        # click on the swan at frame 0: its colour shows at the click
        page.click(x, y)
        wait_for(lambda: page.js("window.pdmtrack.labelAt(arguments[0], arguments[1])", x, y) == 1, "the clicked object's mask")
        mask = np.array(page.js("window.pdmtrack.labels()"), dtype=np.uint8).reshape(480, 854) == 1
        ys, xs = np.nonzero(mask)
        far = np.hypot(xs - x, ys - y) >= 7  # the click's marker covers 5 pixels around it
        near = int(np.argmin(np.where(far, np.hypot(xs - x, ys - y), np.inf)))
        px, py = int(xs[near]), int(ys[near])
        colour = np.array([0x80, 0, 0])  # object 1's colour (the DAVIS palette's)
        expected = np.round(np.array(page.js("window.pdmtrack.framePixel(arguments[0], arguments[1])", px, py)[:3]) * 0.45 + colour * 0.55)
        assert np.abs(np.array(page.js("window.pdmtrack.pixel(arguments[0], arguments[1])", px, py)[:3]) - expected).max() <= 2
        page.shot("clicked")

        # track forward: the progress reaches the end
        page.button("track-forward")
        wait_for(lambda: f"finished: {FRAMES} / {FRAMES} frames" in page.progress(), "tracking to the end")
        page.shot("tracked")

        # scrub to frame 10 (End, then Left): a mask shows
        page.press(Keys.END, Keys.ARROW_LEFT)
        wait_for(lambda: page.js("window.pdmtrack.frame()") == 10, "frame 10")
        tracked = np.array(page.js("window.pdmtrack.labels()"), dtype=np.uint8).reshape(480, 854)
        assert (tracked == 1).any()
        page.shot("frame-10")

        # a negative click inside the mask at frame 10 changes it
        ys, xs = np.nonzero(tracked == 1)
        inside = (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))
        page.click(*inside, negative=True)
        wait_for(lambda: "10" in server.state()["given"], "frame 10 to become a given frame")
        corrected = page.labels(10)
        assert not np.array_equal(corrected, tracked)
        page.shot("corrected")

        # track from 10: frames before 10 stay as they were
        earlier = {t: server.client.get(f"/api/labels/{t}.png").content for t in range(10)}
        page.button("track-here")
        wait_for(lambda: "finished: 2 / 2 frames" in page.progress(), "tracking from frame 10")
        assert all(server.client.get(f"/api/labels/{t}.png").content == earlier[t] for t in range(10))
        page.shot("tracked-from-10")

        # undo (Ctrl+Z): frame 10 is no longer a given frame
        page.chord(Keys.CONTROL, "z")
        wait_for(lambda: "10" not in server.state()["given"] and server.state()["redo"] == 1, "undo")
        page.shot("undone")

        # export DAVIS PNGs: they hold what the page shows
        page.button("export")
        wait_for(lambda: "davis" in str(page.js("document.getElementById('export-where').textContent")), "the export")
        shown = {t: page.labels(t) for t in (0, 5, 10, 11)}
        for t, labels in shown.items():
            np.testing.assert_array_equal(np.asarray(Image.open(project / "exports" / "davis" / f"{t:05d}.png")), labels)
        page.shot("exported")

        # reload: the same state
        driver.refresh()
        driver.execute_async_script("window.pdmtrack.ready.then(() => arguments[0]())")
        for t, labels in shown.items():
            np.testing.assert_array_equal(page.labels(t), labels)
        page.shot("reloaded")
        state = server.state()
    finally:
        server.kill()

    # kill the server, start it again on the project, reload: the same state
    server = Server(project, models, cache, extra=("--context", "0"))
    try:
        page.open(server.url)
        again = server.state()
        for key in ("objects", "given", "tracked", "exports"):
            assert again[key] == state[key], key
        for t, labels in shown.items():
            np.testing.assert_array_equal(page.labels(t), labels)
        page.shot("restarted")
        assert np.asarray(Image.open(io.BytesIO(server.client.get("/api/frames/0.jpg").content))).shape == (480, 854, 3)
    finally:
        server.stop()
        driver.quit()
