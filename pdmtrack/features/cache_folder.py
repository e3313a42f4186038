"""The feature-cache folder shared by processes: size bound, LRU eviction, locking, info, clear.

Layout of a cache folder::

    <folder>/PDMTRACK_CACHE.json            the marker: this folder is a feature cache, its format
    <folder>/<group>/info.json              what wrote the group (model, settings), for `cache info`
    <folder>/<group>/<xx>/<key>.safetensors one entry (one frame's features; key: 64 hex digits)
    <folder>/tmp/.entry.<pid>-<8>.tmp       entries being written (outside the bound)
    <folder>/usage                          running total of entry bytes, time of the last recount
    <folder>/.lock                          serialises commits, eviction and clearing

A folder becomes a cache when the cache writes the marker into it, which it does only into a
missing or empty folder, or one laid out exactly as an older pdmtrack's cache (no marker; every
item as above, plus ``sam/`` with SAM checkpoints). Any other folder without the marker is
refused (InputError) before anything is written. Eviction and ``clear`` delete only files named
as the cache names them (entries, its own temporaries) and folders they emptied, never a
folder with anything else in it.

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
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from pdmtrack.errors import InputError, ParameterError
from pdmtrack.io.files import atomic_write_text, file_mode, process_runs, user_cache_dir

DEFAULT_MAX_GB = 20.0  # DAVIS 2017 val at SDXL/512 is about 9 GB; small next to a laptop's disk
MAX_GB_ENV = "PDMTRACK_CACHE_MAX_GB"
FREE_RESERVE_BYTES = 1 << 30  # the cache never fills its disk beyond leaving this much free
LOW_WATER = 0.9  # eviction frees down to this share of the bound, so scans stay rare
STALE_TEMP_SECONDS = 3600.0  # temporaries older than this are left over by killed writers
RECOUNT_SECONDS = 600.0  # the usage record is recounted at least this often
ENTRY_SUFFIX = ".safetensors"
GROUP_INFO = "info.json"
MARKER = "PDMTRACK_CACHE.json"
FOLDER_FORMAT = 1  # the marker's "format": bump when the folder layout changes
_TMP, _USAGE, _LOCK, _SAM = "tmp", "usage", ".lock", "sam"  # sam/: SAM checkpoints (build.load_refiner)
_PLAIN = re.compile(r"[0-9A-Za-z_-]+")
_GROUP = re.compile(r"[0-9A-Za-z_-]{1,16}")  # what group_name gives
_SHARD = re.compile(r"[0-9a-f]{2}")
_ENTRY = re.compile(r"[0-9a-f]{64}" + re.escape(ENTRY_SUFFIX))
_STAGED = re.compile(r"\.entry\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp")  # what ``stage`` names
_SAM_CHECKPOINT = re.compile(r"sam_\w+\.pth")  # official SAM checkpoints (sam.loading)
_MARKER_TEMPORARY = re.compile(r"\.PDMTRACK_CACHE\.\d+-[a-z0-9_]{8}\.tmp\.json")  # atomic_write_text's
_HINT = "pass --cache-dir a new or empty folder (or an existing pdmtrack cache), or --no-cache"
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


def group_name(fingerprint: str) -> str:
    """The group folder of an extractor's ``fingerprint``: its first 16 characters when it is
    a plain name (and not a folder of the cache's own), else those of its sha256."""
    if not _PLAIN.fullmatch(fingerprint) or fingerprint[:16] in (_TMP, _SAM):
        fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()
    return fingerprint[:16]


def resolve_max_bytes(max_gb: float | None) -> int:
    """The bound in bytes: ``max_gb`` (``--cache-max-gb``), else $PDMTRACK_CACHE_MAX_GB, else
    ``DEFAULT_MAX_GB``. GB are 10^9 bytes."""
    from_environment = max_gb is None
    if max_gb is None:
        text = os.environ.get(MAX_GB_ENV, "").strip()
        if not text:
            return int(DEFAULT_MAX_GB * _GB)
        try:
            max_gb = float(text)
        except ValueError:
            raise InputError(MAX_GB_ENV, f"'{text}' is not a number of GB") from None
    if not (math.isfinite(max_gb) and max_gb > 0):
        problem = f"must be a positive number of GB, got {max_gb} (--no-cache turns the cache off)"
        raise InputError(MAX_GB_ENV, problem) if from_environment else ParameterError("cache_max_gb", problem)
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

    def __init__(self, root: str | Path | None, max_bytes: int) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self._claimed = False

    # -- checks -------------------------------------------------------------------------

    def check(self) -> None:
        """InputError unless the folder is a feature cache (or can become one: see the module
        doc), can be written and its disk has room; run before any model loads."""
        try:
            self._claim()
            (self.root / _TMP).mkdir(exist_ok=True)
            self._remove_stale_temporaries()
            with tempfile.TemporaryFile(dir=self.root / _TMP) as probe:
                probe.write(b"0")
        except OSError as err:
            raise InputError(self.root, f"cannot write the feature cache ({err.strerror or err}); {_HINT}") from err
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

    def _inspect(self) -> str:
        """'marked' (a cache), 'empty' (missing or empty) or 'unmarked' (an older pdmtrack's
        cache); InputError for a file, an unreadable folder or one holding anything else."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(self.root, f"is a file, not a feature cache folder; {_HINT}")
        marker = self.root / MARKER
        if marker.is_file():
            _check_marker(marker)
            return "marked"
        try:
            items = list(os.scandir(self.root))
            foreign = sorted(item.name for item in items if not _in_layout(item))
        except FileNotFoundError:
            return "empty"
        except OSError as err:
            raise InputError(self.root, f"cannot read the feature cache folder ({err.strerror or err}); {_HINT}") from err
        if foreign:
            raise InputError(
                self.root,
                f"not a pdmtrack feature cache (no {MARKER}, and it holds {foreign[0]!r}, which is not laid out "
                f"as the cache's own files); {_HINT}",
            )
        content = [item for item in items if item.name != _LOCK and not _MARKER_TEMPORARY.fullmatch(item.name)]
        return "unmarked" if content else "empty"

    def _claim(self) -> None:
        """Make the folder a cache unless it is one: create it and write the marker (see the
        module doc); InputError for any other folder."""
        if self._claimed:
            return
        if self._inspect() != "marked":
            self.root.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.root / _LOCK)):
                if self._inspect() != "marked":  # not marked by another process meanwhile
                    marker = {"format": FOLDER_FORMAT, "what": "pdmtrack feature cache", "created": time.time()}
                    atomic_write_text(self.root / MARKER, json.dumps(marker, indent=1))
        self._claimed = True

    # -- writing ------------------------------------------------------------------------

    def stage(self, data: bytes) -> Path:
        """Write ``data`` to a new temporary file under ``tmp/`` (to be committed)."""
        self._claim()
        staging = self.root / _TMP
        staging.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".entry.{os.getpid()}-", suffix=".tmp", dir=staging)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(name, file_mode())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def entry_path(self, group: str, key: str) -> Path:
        """Where the entry ``key`` (a sha256 in hex) of ``group`` (a ``group_name``) lives."""
        if not (_GROUP.fullmatch(group) and group not in (_TMP, _SAM) and _ENTRY.fullmatch(key + ENTRY_SUFFIX)):
            raise ValueError(f"not a cache group and entry key: {group!r}, {key!r}")
        return self.root / group / key[:2] / f"{key}{ENTRY_SUFFIX}"

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
        """Hold the folder's lock (across processes and machines sharing the folder), making
        the folder a cache first (InputError when it holds anything else)."""
        self._claim()
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
        """Delete the temporaries (named as ``stage`` names them) that a killed writer left
        behind: its process gone, or older than STALE_TEMP_SECONDS (a writer on another
        machine sharing the folder). Nothing else in ``tmp/`` is touched."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        for path in _files(self.root / _TMP):
            match = _STAGED.fullmatch(path.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                if not process_runs(int(match["pid"])) or path.stat().st_mtime < cutoff:
                    path.unlink()

    # -- reading the folder -------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every published entry (a scan; entries deleted meanwhile are skipped). Only files
        named as the cache names entries count: nothing else is ever evicted or cleared."""
        found = []
        for group in _groups(self.root):
            for shard in _shards(group):
                for path in _files(shard):
                    if not _is_entry(path):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        stat = path.stat()
                        found.append(Entry(path, stat.st_size, stat.st_mtime, group.name))
        return found

    def report(self) -> CacheReport:
        """Size, entries and the groups (per extractor fingerprint) of the folder; InputError
        when it is not a feature cache. Writes nothing."""
        self._inspect()
        groups = {folder.name: GroupInfo(folder.name, _read_description(folder)) for folder in _groups(self.root)}
        for entry in self.entries():
            group = groups[entry.group]
            group.entries += 1
            group.size += entry.size
            group.last_used = max(group.last_used, entry.used)
        free = self.free_bytes() if self.root.is_dir() else None
        return CacheReport(self.root, self.max_bytes, [g for g in groups.values() if g.entries], free)

    def clear(self, model: str | None = None, older_than_days: float | None = None) -> tuple[int, int]:
        """Delete entries (of groups written with ``model``, unused for ``older_than_days``;
        all without filters), the folders they emptied and, without filters, stale
        temporaries; returns (entries, bytes) removed. InputError when the folder is not a
        feature cache or cannot be written."""
        if older_than_days is not None and not older_than_days >= 0:
            raise ParameterError("older_than_days", f"must be a number of days >= 0, got {older_than_days}")
        if self._inspect() == "empty":
            return 0, 0
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        removed = freed = 0
        try:
            with self.locked():
                chosen = {g.name for g in _groups(self.root) if model is None or _same_model(_read_description(g), model)}
                for entry in self.entries():
                    if entry.group in chosen and (cutoff is None or entry.used < cutoff):
                        entry.path.unlink(missing_ok=True)
                        removed, freed = removed + 1, freed + entry.size
                if model is None and cutoff is None:
                    self._remove_stale_temporaries()
                for name in chosen:
                    _remove_if_emptied(self.root / name)
                self._write_usage(sum(entry.size for entry in self.entries()), time.time())
        except OSError as err:
            raise InputError(self.root, f"cannot clear the feature cache ({err.strerror or err})") from err
        return removed, freed


def _check_marker(marker: Path) -> None:
    """InputError unless ``marker`` is a cache marker of the format this pdmtrack writes."""
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(marker, f"unreadable feature cache marker ({err}); {_HINT}") from err
    found = value.get("format") if isinstance(value, dict) else None
    if found != FOLDER_FORMAT:
        raise InputError(marker, f"feature cache format {found!r}, this pdmtrack reads {FOLDER_FORMAT}; {_HINT}")


def _in_layout(item: os.DirEntry) -> bool:
    """Whether a top-level item of an unmarked folder is laid out exactly as the cache lays
    out its own (so an older pdmtrack's cache is adopted, and nothing else is)."""
    name, path = item.name, Path(item.path)
    if item.is_symlink():
        return False
    if name in (_LOCK, _USAGE) or _MARKER_TEMPORARY.fullmatch(name):
        return item.is_file()
    if not item.is_dir():
        return False
    if name == _TMP:
        return _only(path, lambda file: bool(_STAGED.fullmatch(file.name)))
    if name == _SAM:
        return _only(path, lambda file: bool(_SAM_CHECKPOINT.fullmatch(file.name)))
    return (
        _is_group(path)
        and _only(path, lambda file: file.name == GROUP_INFO, lambda folder: bool(_SHARD.fullmatch(folder.name)))
        and all(_only(shard, _is_entry) for shard in _shards(path))
    )


def _only(folder: Path, file_ok: Callable[[Path], bool], folder_ok: Callable[[Path], bool] = lambda _: False) -> bool:
    """Whether every item of ``folder`` is a file that ``file_ok`` accepts or a folder that
    ``folder_ok`` accepts (symbolic links never)."""
    for item in os.scandir(folder):
        path = Path(item.path)
        if item.is_file(follow_symlinks=False):
            if not file_ok(path):
                return False
        elif not (item.is_dir(follow_symlinks=False) and folder_ok(path)):
            return False
    return True


def _is_group(folder: Path) -> bool:
    """A folder named as FeatureCache names groups that holds its info.json or shard folders."""
    named = bool(_GROUP.fullmatch(folder.name)) and folder.name not in (_TMP, _SAM)
    return named and ((folder / GROUP_INFO).is_file() or bool(_shards(folder)))


def _groups(root: Path) -> list[Path]:
    return [folder for folder in _subfolders(root) if _is_group(folder)]


def _shards(group: Path) -> list[Path]:
    return [folder for folder in _subfolders(group) if _SHARD.fullmatch(folder.name)]


def _is_entry(path: Path) -> bool:
    """Whether ``path`` is named as an entry is: ``<xx>/<key>.safetensors``, xx = key[:2]."""
    return bool(_ENTRY.fullmatch(path.name)) and path.name[:2] == path.parent.name


def _remove_if_emptied(group: Path) -> None:
    """Remove the empty shard folders of ``group``, then the group if only its info.json is left."""
    for shard in _shards(group):
        with contextlib.suppress(OSError):  # not empty
            shard.rmdir()
    if {item.name for item in os.scandir(group)} <= {GROUP_INFO}:
        (group / GROUP_INFO).unlink(missing_ok=True)
        group.rmdir()


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


__all__ = [
    "CacheFolder",
    "CacheFull",
    "CacheReport",
    "DEFAULT_MAX_GB",
    "MAX_GB_ENV",
    "default_cache_dir",
    "group_name",
    "resolve_max_bytes",
]
