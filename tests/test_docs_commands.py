"""Every command README.md and docs/*.md show, run as written, top to bottom.

A user copies the documents' commands into a shell. So does this test: each document's
steps run in order in one working folder (later commands read what earlier ones wrote),
through the real CLI with the defaults the document leaves alone. Only what a test machine
cannot have is mapped, never an option a user would set:

- models: ``--model``, ``--sam-checkpoint``, ``--global-model``, ``--dinov2-model``,
  ``--dinov3-model`` and ``--clip`` point at tiny random-weight models where the command loads one (a hub id is
  replaced, a local folder the document made itself is kept);
- data: the working folder holds small stand-ins under the names the document uses
  (``video.mp4``, ``DAVIS/``, ``photos/``, ``./BURST``, ...), built from davis-mini and the
  synthetic benchmark trees of the other tests; a frame number in a ``FRAME:FILE`` mask
  beyond the stand-in clip's length maps to its last frame;
- the user's cache: ``XDG_CACHE_HOME`` is a folder of the test.

Each step also checks that no input file changed. Steps that cannot run here are listed with
their reason (``test_documented_step_not_run``, ``test_default_run_not_run``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from pdmtrack.cli import app
from tests.cli_runner import run_cli
from tests.docs_commands import VOC_TOO_SLOW, DocStep, collect_steps

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
STEPS = [step for doc in DOCS for step in collect_steps(doc)]
CLIP_FRAMES = 3  # frames of every stand-in clip
SEQUENCES = ("blackswan", "car-shadow")
MASK_SPEC = re.compile(r"(?<![\w/.])(\d+):(?=[^\s;,]*\.(?:png|json))")  # FRAME:FILE
PROMPT_SPEC = re.compile(r"^(\d+)(?=:\d+:[-\d.,]+(?::neg)?$)")  # --point FRAME:OBJ:X,Y, --box FRAME:OBJ:X0,Y0,X1,Y1
FRAME_FILE = re.compile(r"(?<=/)(\d{5})(?=\.png)")  # out/00300.png, an output of frame 300


def _frame(davis: Path, seq: str, index: int) -> Path:
    return davis / "JPEGImages" / "480p" / seq / f"{index:05d}.jpg"


def _annotation(davis: Path, seq: str, index: int) -> Path:
    return davis / "Annotations" / "480p" / seq / f"{index:05d}.png"


def _write_mp4(path: Path, frames: list[Path]) -> None:
    from pdmtrack.io.writers import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, (np.asarray(Image.open(p).convert("RGB")) for p in frames), fps=24)


def _two_objects(mask_path: Path, out: Path) -> None:
    """The mask's object split at its centre column into ids 1 and 2 (a two-object mask)."""
    image = Image.open(mask_path)
    labels = np.asarray(image) > 0
    columns = np.nonzero(labels.any(axis=0))[0]
    middle = int(columns.mean())
    split = np.where(labels, 1, 0).astype(np.uint8)
    split[:, middle:][labels[:, middle:]] = 2
    result = Image.fromarray(split, mode="P")
    result.putpalette(image.getpalette())
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


def _davis_tree(davis: Path, root: Path, results: Path) -> None:
    """A DAVIS 2017 root of SEQUENCES, CLIP_FRAMES each, and a results folder (the truth)."""
    for seq in SEQUENCES:
        for index in range(CLIP_FRAMES):
            _copy(_frame(davis, seq, index), root / "JPEGImages" / "480p" / seq / f"{index:05d}.jpg")
            _copy(_annotation(davis, seq, index), root / "Annotations" / "480p" / seq / f"{index:05d}.png")
            _copy(_annotation(davis, seq, index), results / seq / f"{index:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")


def build_world(root: Path, davis: Path) -> Path:
    """The files the documents' commands name, as small stand-ins."""
    from tests.test_burst import write_synthetic_burst
    from tests.test_cli_ovdiff import _fake_voc as fake_voc
    from tests.test_perseg import write_perseg
    from tests.test_revisited import write_dataset

    swan = [_frame(davis, "blackswan", i) for i in range(CLIP_FRAMES)]
    car = [_frame(davis, "car-shadow", i) for i in range(CLIP_FRAMES)]
    moto = [_frame(davis, "motocross-jump", i) for i in range(CLIP_FRAMES)]
    last = CLIP_FRAMES - 1
    # tracking a video
    _write_mp4(root / "video.mp4", swan)
    _copy(_annotation(davis, "blackswan", 0), root / "first.png")
    _copy(_annotation(davis, "blackswan", 0), root / "a.png")
    for name in ("fixed_300.png", "frame120.png", "b.png"):
        _copy(_annotation(davis, "blackswan", last), root / name)
    _davis_tree(davis, root / "DAVIS", root / "RESULTS")
    # images: segment, retrieve, index
    _copy(swan[0], root / "ref.jpg")
    _copy(_annotation(davis, "blackswan", 0), root / "ref_mask.png")
    _copy(swan[1], root / "targets" / "swan_1.jpg")
    _copy(car[1], root / "targets" / "car_1.jpg")
    _copy(car[0], root / "other.jpg")
    _copy(swan[0], root / "query.jpg")
    _copy(_annotation(davis, "blackswan", 0), root / "query_mask.png")
    for index, frame in enumerate((swan[1], car[1], moto[1])):
        _copy(frame, root / "photos" / f"photo_{index}.jpg")
    _copy(swan[2], root / "more_photos" / "photo_3.jpg")
    _copy(swan[1], root / "photo1.jpg")
    _copy(car[1], root / "photo2.jpg")
    # many videos: a jobs file's clips and masks, and folder mode
    _write_mp4(root / "clips" / "dog.mp4", car)
    _copy(_annotation(davis, "car-shadow", 0), root / "masks" / "dog.png")
    for index, frame in enumerate(moto):
        _copy(frame, root / "clips" / "match" / f"{index:05d}.jpg")
    _two_objects(_annotation(davis, "motocross-jump", 0), root / "masks" / "match_0.png")
    _two_objects(_annotation(davis, "motocross-jump", last), root / "masks" / "match_120.png")
    _write_mp4(root / "videos" / "dog.mp4", car)
    # benchmarks
    write_synthetic_burst(root / "BURST")
    write_perseg(root / "PerSeg")
    write_dataset(root / "DATA", "roxford5k")
    write_dataset(root / "DATA", "rparis6k")
    fake_voc(davis, root / "VOCdevkit" / "VOC2012")
    return root


@pytest.fixture(scope="session")
def docs_world(davis_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("docs-data"), davis_mini)


@pytest.fixture(scope="session")
def tiny_models(tiny_sdxl, tiny_sam, tiny_sam2, tiny_dinov2, tiny_dinov3, tmp_path_factory) -> dict[str, Path]:
    from pdmtrack.testing.clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path_factory.mktemp("docs-clip") / "clip")
    return {"model": tiny_sdxl, "sam": tiny_sam, "sam2": tiny_sam2, "dinov2": tiny_dinov2, "dinov3": tiny_dinov3, "clip": clip}


def _command(words: list[str]) -> typer.core.TyperCommand:
    """The click command ``pdmtrack WORDS...`` runs (through its groups)."""
    command = typer.main.get_command(app)
    for word in words[1:]:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command = sub
    return command


def _value(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


def _set(words: list[str], flag: str, value: object) -> None:
    if flag in words:
        words[words.index(flag) + 1] = str(value)
    else:
        words += [flag, str(value)]


def map_models(words: list[str], models: dict[str, Path], cwd: Path) -> list[str]:
    """``words`` with every model the command would download replaced by a tiny local one."""
    words = list(words)
    params = {param.name for param in _command(words).params}
    if {"model", "sam"} <= params:  # a command that loads the diffusion model
        given = _value(words, "--model")
        if given is None or not (cwd / given).exists():
            _set(words, "--model", models["model"])
        sam = _value(words, "--sam") or "vit_b"
        if sam != "none" and "--sam-checkpoint" not in words:
            _set(words, "--sam-checkpoint", models["sam2"] if sam.startswith("sam2") else models["sam"])
    for dino in ("dinov2", "dinov3"):
        if f"{dino}_model" in params and _value(words, "--features") == dino:
            _set(words, f"--{dino}-model", models[dino])
    if "global_model" in params and "--global-model" not in words:
        _set(words, "--global-model", models["dinov2"])
    if "clip" in params and "--clip" not in words:
        _set(words, "--clip", models["clip"])
    return words


def map_frames(text: str) -> str:
    """Frame numbers past the stand-in clips' end (``FRAME:FILE`` masks, ``--point`` and
    ``--box`` frames, ``out/00300.png``) map to their last frame."""
    text = MASK_SPEC.sub(lambda m: f"{min(int(m.group(1)), CLIP_FRAMES - 1)}:", text)
    text = PROMPT_SPEC.sub(lambda m: str(min(int(m.group(1)), CLIP_FRAMES - 1)), text)
    return FRAME_FILE.sub(lambda m: f"{min(int(m.group(1)), CLIP_FRAMES - 1):05d}", text)


def _digests(root: Path, names: set[str]) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] in names
    }


def serve_once(words: list[str]) -> str:
    """``pdmtrack annotate ...`` (a server that runs until stopped) as a process: it must print
    its address and serve the page there; then it is stopped. What went wrong, or ''."""
    import httpx

    env = {**os.environ, "BROWSER": "true", "PYTHONUNBUFFERED": "1"}  # "opening the browser" runs `true`
    process = subprocess.Popen([sys.executable, "-m", "pdmtrack.cli", *words[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)  # fmt: skip
    lines: list[str] = []
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            address = re.search(r"http://\S+\?token=\S+", line)
            if address:
                page = httpx.get(address[0], follow_redirects=True, timeout=60)
                return "" if page.status_code == 200 and "pdmtrack annotate" in page.text else f"{address[0]}: HTTP {page.status_code}"
        return f"exit {process.wait()}: {' '.join(words)}\n{''.join(lines)[-2000:]}"
    finally:
        process.terminate()
        process.wait(30)


class DocSession:
    """A working folder (a copy of the stand-ins) in which steps run in order, with the
    user's cache inside it."""

    def __init__(self, world: Path, folder: Path, models: dict[str, Path], capsys, monkeypatch) -> None:
        shutil.copytree(world, folder, dirs_exist_ok=True)
        (folder / "tools").symlink_to(REPO / "tools")  # the documents' commands run in a clone
        monkeypatch.chdir(folder)
        monkeypatch.setenv("XDG_CACHE_HOME", str(folder / ".user-cache"))
        monkeypatch.delenv("PDMTRACK_CACHE_DIR", raising=False)
        self.folder, self.models = folder, models
        self.capsys, self.monkeypatch = capsys, monkeypatch
        self.inputs = {path.name for path in world.iterdir()}
        self.before = _digests(folder, self.inputs)

    def run(self, words: list[str]) -> str:
        """Run ``pdmtrack WORDS`` (models mapped); what went wrong, or '' when it ran cleanly
        and left every input file as it was (reports a command adds beside its input, as
        ``eval davis --results`` does like the official evaluator, are allowed)."""
        words = map_models([map_frames(word) for word in words], self.models, self.folder)
        if words[1] == "annotate":
            return serve_once(words)
        result = run_cli(words[1:], self.capsys, self.monkeypatch)
        if result.code != 0 or "Traceback" in result.err:
            return f"exit {result.code}: {' '.join(words)}\n{result.err[-2000:]}"
        now = _digests(self.folder, self.inputs)
        changed = [name for name, digest in self.before.items() if now.get(name) != digest]
        return f"changed or removed input files {changed[:5]}" if changed else ""

    def step(self, step: DocStep) -> str:
        """Run one document step; what went wrong, or ''."""
        if step.kind == "file":
            (self.folder / step.argv()[2]).write_text(map_frames(step.body), encoding="utf-8")
            return ""
        if step.kind == "copy":
            source, target = (map_frames(word) for word in step.argv()[1:3])
            shutil.copy(self.folder / source, self.folder / target)
            return ""
        if step.kind == "python":
            done = subprocess.run([sys.executable, *step.argv()[1:]], cwd=self.folder, capture_output=True, text=True)
            return "" if done.returncode == 0 else f"exit {done.returncode}\n{done.stderr[-2000:]}"
        return self.run(step.argv())


def _failures(attempts: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"{where}: {problem}" for where, problem in attempts if problem)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[doc.name for doc in DOCS])
def test_documented_commands_run_in_order(doc: Path, docs_world, tiny_models, tmp_path, capsys, monkeypatch) -> None:
    """A document's steps, top to bottom in one folder of its own (each later step may read
    what an earlier one of the same document wrote, never another document's outputs);
    every failing step is listed, not only the first. A document that shows no command the
    tests can run (only Python, or only skipped steps) is reported as skipped."""
    shown = collect_steps(doc)
    steps = [step for step in shown if step.kind != "skip"]
    if not steps:
        pytest.skip(f"{doc.name} shows no command the tests can run ({len(shown)} skipped step(s))")
    session = DocSession(docs_world, tmp_path / "work", tiny_models, capsys, monkeypatch)
    failures = _failures([(f"{step.id} {step.text}", session.step(step)) for step in steps])
    assert not failures, failures


SKIPPED_STEPS = [step for step in STEPS if step.kind == "skip"]


def test_documents_show_commands() -> None:
    """The collector finds the documents' commands (an empty harness would pass anything)."""
    shown = 0
    for doc in DOCS:
        fenced = False
        for line in doc.read_text(encoding="utf-8").splitlines():
            fenced = fenced != line.lstrip().startswith("```")
            shown += fenced and line.lstrip().startswith("pdmtrack ")
    collected = sum(1 for step in STEPS if step.text.startswith("pdmtrack "))
    assert collected == shown > 20


@pytest.mark.parametrize("step", SKIPPED_STEPS, ids=[step.id for step in SKIPPED_STEPS])
def test_documented_step_not_run(step: DocStep) -> None:
    """A step the tests cannot run is reported as skipped with its reason (``-rs``)."""
    assert step.reason
    pytest.skip(f"{step.text}: {step.reason}")


# Every command and subcommand once with every option at its default: only the arguments it
# requires (and the models, mapped as above). In order: later ones read earlier outputs.
DEFAULT_RUNS = {
    "propagate": "propagate video.mp4 --mask first.png",
    "annotate": "annotate video.mp4",
    "propagate-batch": "propagate-batch jobs.csv",
    "export": "export pdmtrack_out/video --format youtube-vis",
    "segment": "segment ref.jpg targets/ --mask ref_mask.png",
    "retrieve": "retrieve query.jpg --mask query_mask.png --gallery photos/",
    "index build": "index build photos/ -o photos.index",
    "index add": "index add photos.index more_photos/",
    "build-permis": "build-permis --burst BURST",
    "cache info": "cache info",
    "cache clear": "cache clear",
    "prototypes build": "prototypes build --classes dog",
    "segment-ov": "segment-ov photo1.jpg --classes dog",
    "eval davis": "eval davis --root DAVIS --results RESULTS",
    "eval davis -o": "eval davis --root DAVIS -o runs/davis",
    "eval permis": "eval permis --root PerMIRS",
    "eval permir": "eval permir --root PerMIRS",
    "eval perseg": "eval perseg --root PerSeg",
    "eval roxford": "eval roxford --root DATA",
    "eval voc": "eval voc --root VOCdevkit/VOC2012",
}
SLOW_DEFAULTS = {"eval voc": VOC_TOO_SLOW}  # listed with the reason they are not run
JOBS_CSV = "video,mask\nclips/dog.mp4,masks/dog.png\nclips/match,masks/match_0.png\n"


def _command_names(group: typer.core.TyperGroup, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            names |= _command_names(command, f"{prefix}{name} ")
        else:
            names.add(prefix + name)
    return names


def test_every_command_has_a_default_run() -> None:
    covered = {key.removesuffix(" -o") for key in DEFAULT_RUNS}
    assert covered == _command_names(typer.main.get_command(app))


@pytest.mark.slow
def test_every_command_runs_with_its_defaults(docs_world, tiny_models, tmp_path, capsys, monkeypatch) -> None:
    """In order, in one folder: later runs read earlier outputs (an index, PerMIRS)."""
    session = DocSession(docs_world, tmp_path / "work", tiny_models, capsys, monkeypatch)
    (session.folder / "jobs.csv").write_text(JOBS_CSV)
    runs = [(key, command) for key, command in DEFAULT_RUNS.items() if key not in SLOW_DEFAULTS]
    failures = _failures([(key, session.run(["pdmtrack", *command.split()])) for key, command in runs])
    assert not failures, failures


@pytest.mark.parametrize("key", list(SLOW_DEFAULTS))
def test_default_run_not_run(key: str) -> None:
    """A defaults run the tests leave out is reported as skipped with its reason (``-rs``)."""
    pytest.skip(f"pdmtrack {DEFAULT_RUNS[key]}: {SLOW_DEFAULTS[key]}")
