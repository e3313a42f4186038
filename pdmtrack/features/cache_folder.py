"""The feature-cache folder shared by processes: size bound, LRU eviction, locking, info, clear.

Layout of a cache folder::

    <folder>/<group>/info.json              what wrote the group (model, settings), for `cache info`
    <folder>/<group>/<xx>/<key>.safetensors one entry (one frame's features)
    <folder>/tmp/                           entries being written (outside the bound)
    <folder>/usage                          running total of entry bytes, time of the last recount
    <folder>/.lock                          serialises commits, eviction and clearing

An entry is written under ``tmp/`` and published with one ``os.replace`` while holding the
folder's lock, after evicting the least recently used entries (oldest modification time;
a hit touches its entry) until the new ones fit under the bound. So the published entries
never exceed the bound, whatever the number of writers. Readers take no lock: they read an
entry through one open file, so eviction (an unlink) never cuts a read short, and the entry's
checksum (``cache.py``) rejects anything else. ``usage`` spares a scan per commit: it is
updated before the files are published (so a killed writer leaves it too high, never too
low), and a commit that would cross the bound, or finds it older than RECOUNT_SECONDS,
rescans the folder and recounts exactly (files copied in by hand count from then on).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from pdmtrack.errors import InputError
from pdmtrack.fsutil import atomic_write_text, file_mode, remove_stale_temporaries, user_cache_dir

DEFAULT_MAX_GB = 20.0  # DAVIS 2017 val at SDXL/512 is about 9 GB; small next to a laptop's disk
MAX_GB_ENV = "PDMTRACK_CACHE_MAX_GB"
FREE_RESERVE_BYTES = 1 << 30  # the cache never fills its disk beyond leaving this much free
LOW_WATER = 0.9  # eviction frees down to this share of the bound, so scans stay rare
STALE_TEMP_SECONDS = 3600.0  # temporaries older than this are left over by killed writers
RECOUNT_SECONDS = 600.0  # the usage record is recounted at least this often
ENTRY_SUFFIX = ".safetensors"
GROUP_INFO = "info.json"
_TMP, _USAGE, _LOCK = "tmp", "usage", ".lock"
_GB = 1e9


class CacheFull(Exception):
    """The cache cannot take more entries now (disk nearly full, entry above the bound)."""


def default_cache_dir() -> Path:
    """The default cache folder.

    $PDMTRACK_CACHE_DIR when set, else $XDG_CACHE_HOME/pdmtrack/features, else
    ~/.cache/pdmtrack/features.
    """
    explicit = os.environ.get("PDMTRACK_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return user_cache_dir() / "features"


def resolve_max_bytes(max_gb: float | None) -> int:
    """The bound in bytes: ``max_gb`` (``--cache-max-gb``), else $PDMTRACK_CACHE_MAX_GB, else
    ``DEFAULT_MAX_GB``. GB are 10^9 bytes."""
    where = "--cache-max-gb"
    if max_gb is None:
        text = os.environ.get(MAX_GB_ENV, "").strip()
        if not text:
            return int(DEFAULT_MAX_GB * _GB)
        where = MAX_GB_ENV
        try:
            max_gb = float(text)
        except ValueError:
            raise InputError(where, f"'{text}' is not a number of GB") from None
    if not (math.isfinite(max_gb) and max_gb > 0):
        raise InputError(where, f"must be a positive number of GB, got {max_gb} (--no-cache turns the cache off)")
    return max(1, int(max_gb * _GB))


@dataclass
class Entry:
    """One published entry: its file, size in bytes, last use (mtime) and group folder."""

    path: Path
    size: int
    used: float
    group: str


@dataclass
class GroupInfo:
    """Entries of one group (one extractor fingerprint) and what wrote them."""

    name: str
    description: dict
    entries: int = 0
    size: int = 0
    last_used: float = 0.0

    def label(self) -> str:
        """Model, classes and the main feature settings, or why they are unknown."""
        info = self.description
        if not info:
            return "unknown (written by an older pdmtrack)"
        classes = ",".join(info.get("classes") or []) or "-"
        settings = info.get("settings", {})
        return (
            f"{info.get('model')} classes={classes} size={settings.get('size')} "
            f"inversion={settings.get('inversion')} dtype={info.get('dtype')}"
        )


@dataclass
class CacheReport:
    """What ``pdmtrack cache info`` prints."""

    folder: Path
    max_bytes: int
    groups: list[GroupInfo] = field(default_factory=list)
    free_bytes: int | None = None

    @property
    def size(self) -> int:
        return sum(group.size for group in self.groups)

    @property
    def entries(self) -> int:
        return sum(group.entries for group in self.groups)

    def format(self) -> str:
        """A few lines: folder, totals against the bound, one line per group."""
        free = "" if self.free_bytes is None else f", {self.free_bytes / _GB:.1f} GB free on its disk"
        lines = [
            f"feature cache: {self.folder}",
            f"size: {self.size / _GB:.3f} GB of {self.max_bytes / _GB:g} GB bound{free}; {self.entries} entries (frames)",
        ]
        for group in sorted(self.groups, key=lambda g: -g.size):
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(group.last_used)) if group.entries else "-"
            lines.append(f"  {group.name}: {group.entries} entries, {group.size / _GB:.3f} GB, last used {used}: {group.label()}")
        return "\n".join(lines)


class CacheFolder:
    """A feature-cache folder with a size bound of ``max_bytes`` (see the module doc)."""

    def __init__(self, root: Path | None, max_bytes: int) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = max_bytes

    # -- checks -------------------------------------------------------------------------

    def check(self) -> None:
        """InputError unless the folder can be created and written and its disk has room;
        run before any model loads."""
        hint = "pass a writable --cache-dir or --no-cache"
        if self.root.exists() and not self.root.is_dir():
            raise InputError(self.root, f"the feature cache folder is a file; {hint}")
        try:
            (self.root / _TMP).mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.root / _TMP)  # those of killed writers
            with tempfile.TemporaryFile(dir=self.root / _TMP) as probe:
                probe.write(b"0")
        except OSError as err:
            raise InputError(self.root, f"cannot write the feature cache ({err.strerror or err}); {hint}") from err
        free = self.free_bytes()
        if free < FREE_RESERVE_BYTES:
            raise InputError(
                self.root,
                f"the disk holding the feature cache is full ({free / _GB:.2f} GB free; the cache leaves "
                f"{FREE_RESERVE_BYTES / _GB:.1f} GB free): free space, pass --cache-dir on another disk, or --no-cache",
            )

    def free_bytes(self) -> int:
        """Free bytes on the disk holding the folder."""
        return shutil.disk_usage(self.root).free

    # -- writing ------------------------------------------------------------------------

    def stage(self, data: bytes) -> Path:
        """Write ``data`` to a new temporary file under ``tmp/`` (to be committed)."""
        staging = self.root / _TMP
        staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".entry.{os.getpid()}-", suffix=".tmp", dir=staging)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(name, file_mode())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def commit(self, staged: list[tuple[Path, Path]], group: str, description: dict) -> None:
        """Publish staged files ``(temporary, target)`` after evicting what they need;
        CacheFull when they cannot fit (bigger than the bound, or the disk nearly full)."""
        need = sum(tmp.stat().st_size for tmp, _ in staged)
        if need > self.max_bytes:
            raise CacheFull(f"{need / 1e6:.1f} MB of features exceed the bound ({self.max_bytes / _GB:g} GB)")
        with self.locked():
            usage, counted = self._read_usage()
            if usage + need > self.max_bytes or time.time() - counted > RECOUNT_SECONDS:
                usage, counted = self._evict(need), time.time()
            free = self.free_bytes()
            if free - need < FREE_RESERVE_BYTES:
                raise CacheFull(f"the disk holding {self.root} is nearly full ({free / _GB:.2f} GB free)")
            info = self.root / group / GROUP_INFO
            if not info.exists():
                atomic_write_text(info, json.dumps(description, indent=1, sort_keys=True))
            self._write_usage(usage + need, counted)  # first: a crash below over-counts, never under
            for tmp, target in staged:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (across processes and machines sharing the folder)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / _LOCK)):
            yield

    def _evict(self, need: int) -> int:
        """(Lock held) recount; if ``need`` more bytes do not fit, delete least recently used
        entries until usage + need is at most LOW_WATER of the bound; returns the usage."""
        self._remove_stale_temporaries()
        entries = self.entries()
        usage = sum(entry.size for entry in entries)
        if usage + need <= self.max_bytes:
            return usage
        target = LOW_WATER * self.max_bytes
        for entry in sorted(entries, key=lambda e: e.used):
            if usage + need <= target:
                break
            entry.path.unlink(missing_ok=True)
            usage -= entry.size
        return usage

    def _read_usage(self) -> tuple[int, float]:
        """(bytes, time of the last recount) as recorded; a missing record forces a recount."""
        try:
            usage, counted = (self.root / _USAGE).read_text().split()
            return int(usage), float(counted)
        except (OSError, ValueError):
            return 0, 0.0

    def _write_usage(self, usage: int, counted: float) -> None:
        (self.root / _USAGE).write_text(f"{max(0, usage)} {counted}")

    def _remove_stale_temporaries(self) -> None:
        """Delete temporaries a killed writer left behind (its process gone, or older than
        STALE_TEMP_SECONDS: a writer on another machine sharing the folder)."""
        remove_stale_temporaries(self.root / _TMP)
        cutoff = time.time() - STALE_TEMP_SECONDS
        for path in _files(self.root / _TMP):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    # -- reading the folder -------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every published entry (a scan; entries deleted meanwhile are skipped)."""
        found = []
        for group in _subfolders(self.root):
            if group.name == _TMP:
                continue
            for shard in _subfolders(group):
                for path in _files(shard):
                    if path.name.startswith(".") or not path.name.endswith(ENTRY_SUFFIX):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        stat = path.stat()
                        found.append(Entry(path, stat.st_size, stat.st_mtime, group.name))
        return found

    def report(self) -> CacheReport:
        """Size, entries and the groups (per extractor fingerprint) of the folder."""
        groups = {folder.name: GroupInfo(folder.name, _read_description(folder)) for folder in _subfolders(self.root)}
        groups.pop(_TMP, None)
        for entry in self.entries():
            group = groups[entry.group]
            group.entries += 1
            group.size += entry.size
            group.last_used = max(group.last_used, entry.used)
        free = self.free_bytes() if self.root.is_dir() else None
        return CacheReport(self.root, self.max_bytes, [g for g in groups.values() if g.entries], free)

    def clear(self, model: str | None = None, older_than_days: float | None = None) -> tuple[int, int]:
        """Delete entries (of groups written with ``model``, unused for ``older_than_days``;
        all without filters) and emptied groups; returns (entries, bytes) removed."""
        if older_than_days is not None and not older_than_days >= 0:
            raise InputError("--older-than", f"must be a number of days >= 0, got {older_than_days}")
        if not self.root.is_dir():
            return 0, 0
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        removed = freed = 0
        with self.locked():
            groups = {g.name: _read_description(g) for g in _subfolders(self.root) if g.name != _TMP}
            chosen = {name for name, info in groups.items() if model is None or _same_model(info, model)}
            for entry in self.entries():
                if entry.group in chosen and (cutoff is None or entry.used < cutoff):
                    entry.path.unlink(missing_ok=True)
                    removed, freed = removed + 1, freed + entry.size
            if model is None and cutoff is None:
                shutil.rmtree(self.root / _TMP, ignore_errors=True)
            for name in chosen:
                if not any(_files_deep(self.root / name, ENTRY_SUFFIX)):
                    shutil.rmtree(self.root / name, ignore_errors=True)
            self._write_usage(sum(entry.size for entry in self.entries()), time.time())
        return removed, freed


def _same_model(description: dict, model: str) -> bool:
    """Whether a group was written with ``model`` (a hub id, or the same local folder)."""
    written = description.get("model")
    if not written:
        return False
    return written == model or Path(written).expanduser().resolve() == Path(model).expanduser().resolve()


def _read_description(group: Path) -> dict:
    try:
        value = json.loads((group / GROUP_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [Path(item.path) for item in os.scandir(folder) if item.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(folder: Path) -> list[Path]:
    try:
        return [Path(item.path) for item in os.scandir(folder) if item.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files_deep(folder: Path, suffix: str) -> Iterator[Path]:
    for shard in _subfolders(folder):
        yield from (path for path in _files(shard) if path.name.endswith(suffix))


__all__ = [
    "CacheFolder",
    "CacheFull",
    "CacheReport",
    "DEFAULT_MAX_GB",
    "MAX_GB_ENV",
    "default_cache_dir",
    "resolve_max_bytes",
]
