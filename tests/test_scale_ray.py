"""Ray workers on CPU: the same CSVs as one process, a worker killed mid-sequence, batches.

One small local Ray cluster (2 CPUs) serves the whole module; sequences are davis-mini's
first frames so a run takes seconds. The runs share nothing but the inputs: each has its
own output and feature cache folders, so no result comes from another run's cache.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_runner import run_cli

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.xdist_group("ray")

FRAMES = 6


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=True,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def short_davis(davis_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """davis-mini cut to its first frames (same layout, same sequences)."""
    root = tmp_path_factory.mktemp("davis-short")
    sequences = (davis_mini / "ImageSets" / "2017" / "val.txt").read_text().split()
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    for sequence in sequences:
        for kind, suffix in (("JPEGImages", "jpg"), ("Annotations", "png")):
            target = root / kind / "480p" / sequence
            target.mkdir(parents=True)
            for path in sorted((davis_mini / kind / "480p" / sequence).glob(f"*.{suffix}"))[:FRAMES]:
                shutil.copy(path, target / path.name)
    return root


def options(tiny_sdxl: Path, cache: Path) -> list[object]:
    return ["--model", tiny_sdxl, "--size", "64", "--inversion", "noise", "--sam", "none", "--batch-size", "2",
            "--cache-dir", cache]  # fmt: skip


def eval_davis(root: Path, out: Path, tiny_sdxl: Path, workers: int, capsys, monkeypatch) -> None:
    args = ["eval", "davis", "--root", root, "-o", out, "--workers", workers, *options(tiny_sdxl, out.parent / f"{out.name}-cache")]
    result = run_cli(args, capsys, monkeypatch)
    assert result.code == 0, result.err


def read_results(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asarray(Image.open(p)) for p in sorted((out / "results").rglob("*.png"))}


def test_two_workers_equal_one_and_a_killed_worker_changes_nothing(ray_cluster, short_davis, tiny_sdxl, tmp_path, capsys, monkeypatch):
    eval_davis(short_davis, tmp_path / "one", tiny_sdxl, 1, capsys, monkeypatch)
    eval_davis(short_davis, tmp_path / "two", tiny_sdxl, 2, capsys, monkeypatch)
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    one = read_results(tmp_path / "one")
    assert len(one) == 3 * FRAMES
    for key, labels in read_results(tmp_path / "two").items():
        np.testing.assert_array_equal(labels, one[key], err_msg=key)

    # kill the worker busy with a sequence once it has written part of it
    killed = []
    results = tmp_path / "killed" / "results"

    def kill_mid_sequence() -> None:
        deadline = time.time() + 300
        while not killed and time.time() < deadline:
            partial = [p for p in results.glob(".*.partial-*") if len(list(p.glob("*.png"))) >= 2] if results.is_dir() else []
            busy = [p for p in psutil.process_iter(["cmdline"]) if "TrackerWorker.run" in " ".join(p.info["cmdline"] or [])]
            if partial and busy:
                busy[0].kill()
                killed.append(partial[0].name)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_mid_sequence)
    killer.start()
    eval_davis(short_davis, tmp_path / "killed", tiny_sdxl, 2, capsys, monkeypatch)
    killer.join()
    assert killed, "no worker was caught mid-sequence"
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert read_results(tmp_path / "killed").keys() == one.keys()
    for key, labels in read_results(tmp_path / "killed").items():
        np.testing.assert_array_equal(labels, one[key], err_msg=key)
    assert [p.name for p in results.iterdir() if p.name.startswith(".")] == []


def test_batch_on_two_workers_reports_a_bad_row(ray_cluster, short_davis, tiny_sdxl, tmp_path, capsys, monkeypatch):
    frames = short_davis / "JPEGImages" / "480p"
    masks = short_davis / "Annotations" / "480p"
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "video,mask,out\n"
        f"{frames / 'blackswan'},{masks / 'blackswan' / '00000.png'},swan\n"
        f"{frames / 'car-shadow'},{tmp_path / 'missing.png'},car\n"
        f"{frames / 'motocross-jump'},{masks / 'motocross-jump' / '00000.png'},moto\n"
    )
    args = ["propagate-batch", jobs, "-o", tmp_path / "out", "--workers", "2", "--no-overlay", *options(tiny_sdxl, tmp_path / "cache")]
    result = run_cli(args, capsys, monkeypatch)
    assert result.code == 1
    assert "missing.png" in result.out and "2 done" in result.out
    assert len(list((tmp_path / "out" / "swan").glob("*.png"))) == FRAMES
    assert len(list((tmp_path / "out" / "moto").glob("*.png"))) == FRAMES


def test_permir_and_permis_image_on_two_workers_equal_one(ray_cluster, tiny_sdxl, tmp_path, capsys, monkeypatch):
    from tests.test_burst import write_synthetic_burst

    permirs = tmp_path / "PerMIRS"
    built = run_cli(["build-permis", "--burst", write_synthetic_burst(tmp_path / "burst"), "-o", permirs], capsys, monkeypatch)
    assert built.code == 0, built.err
    for workers in (1, 2):
        cache = tmp_path / f"cache-{workers}"
        for command in (["permir"], ["permis", "--task", "image"]):
            args = ["eval", *command, "--root", permirs, "-o", tmp_path / f"{command[0]}-{workers}", "--workers", workers]
            result = run_cli([*args, *options(tiny_sdxl, cache)], capsys, monkeypatch)
            assert result.code == 0, result.err
    for name in (
        "permir/permir_global.csv",
        "permir/permir_details.csv",
        "permis/permis_image_global.csv",
        "permis/permis_image_details.csv",
    ):
        folder, file = name.split("/")
        assert (tmp_path / f"{folder}-2" / file).read_text() == (tmp_path / f"{folder}-1" / file).read_text(), name


def test_local_workers_import_this_checkout() -> None:
    """Ray's local workers get the folder holding this process's ``pdmtrack`` first on their
    PYTHONPATH (after the move into runs/, parents[1] was pdmtrack/ itself, and workers of a
    second checkout imported the installed copy)."""
    import pdmtrack
    from pdmtrack.runs.ray_workers import package_parent

    assert package_parent() == Path(pdmtrack.__file__).resolve().parents[1]
    assert (package_parent() / "pdmtrack" / "runs" / "ray_workers.py").is_file()


def test_relative_paths_mean_the_drivers_folder(ray_cluster, short_davis, tiny_sdxl, tmp_path, capsys, monkeypatch):
    """Ray was started in another folder (the module's cluster, as a notebook's ray.init()):
    relative videos, masks, -o and --cache-dir are still read and written where the user is."""
    work = tmp_path / "work"
    shutil.copytree(short_davis / "JPEGImages" / "480p" / "blackswan", work / "frames" / "blackswan")
    shutil.copy(short_davis / "Annotations" / "480p" / "blackswan" / "00000.png", work / "first.png")
    (work / "jobs.csv").write_text("video,mask,out\nframes/blackswan,first.png,swan\nframes/blackswan,first.png,swan-again\n")
    monkeypatch.chdir(work)
    args = ["propagate-batch", "jobs.csv", "-o", "runs/out", "--workers", "2", "--no-overlay", *options(tiny_sdxl, Path("cache"))]
    result = run_cli(args, capsys, monkeypatch)
    assert result.code == 0, result.out + result.err
    for name in ("swan", "swan-again"):
        assert len(list((work / "runs" / "out" / name).glob("*.png"))) == FRAMES, name
    assert (work / "cache").is_dir()
