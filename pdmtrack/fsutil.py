"""Files and folders: atomic writing (temporary name, then rename), the user's cache folder
and the offline switch every download obeys."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pdmtrack.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, final files should follow the umask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The temporary is ``.<stem>.<pid>-<8 random chars>.tmp<suffix>``. On an exception the
    temporary file is removed and ``target`` is left untouched, so a killed or failed run
    never leaves a half-written file under the final name. The temporary name keeps the
    target's suffix so writers that pick a format by extension (PIL, PyAV) still work.
    A full disk is an ``InputError`` naming the folder.
    """
    target = Path(target)
    with _disk_full_is_input_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.stem}.{os.getpid()}-"  # the owner's pid: stale once that process is gone
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{target.suffix}", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.chmod(tmp, file_mode())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporaries that killed processes left in ``folder`` (files named as
    :func:`atomic_path` names them, and scratch folders named the same way, whose process no
    longer runs on this machine); returns how many. Other files, and temporaries of running
    processes, are never touched."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if not match or entry.is_symlink() or _process_runs(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir():
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp(\.[^.]+)?")


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` exists (ours, or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _disk_full_is_input_error(target: Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``target`` becomes one line naming its folder."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        problem = f"no space left on the device while writing {target.name} (files finished before it are complete)"
        raise InputError(target.parent, problem) from err


def file_mode() -> int:
    """Permission bits of a new regular file under the process's umask (mkstemp makes 0600)."""
    return 0o666 & ~_UMASK


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def ensure_writable_folder(folder: str | Path, flag: str = "-o") -> Path:
    """Create ``folder`` (and its parents) and prove a file can be written in it: an
    InputError naming the folder (or the file in its way) otherwise, which asks for another
    ``flag``."""
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is an existing file" if blocker == folder else f"cannot be created: {blocker} is a file"
        raise InputError(folder, f"output folder {where}; choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(folder, f"cannot write in the output folder ({err.strerror or err}); choose another {flag}") from err
    return folder


def is_safe_component(name: object) -> bool:
    """A single relative path component: no separator, not '.', '..', empty or absolute."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    return "/" not in name and "\\" not in name and "\x00" not in name and not PurePosixPath(name).is_absolute()


def replace_folder(staging: Path, target: Path) -> None:
    """Put the complete folder ``staging`` at ``target`` by renames (same filesystem), so
    ``target`` is never a mixture of two runs; a previous ``target`` is deleted."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{id(staging):x}")
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def user_cache_dir() -> Path:
    """pdmtrack's folder in the user's cache: $XDG_CACHE_HOME/pdmtrack, else ~/.cache/pdmtrack."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pdmtrack"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network access (the HF convention)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def read_json(path: str | Path, missing: str = "not found") -> object:
    """The JSON value in ``path``; a missing file is an InputError saying ``missing``, an
    unreadable or invalid one an InputError saying why."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable JSON file ({err})") from err
