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
from collections.abc import Iterable, Iterator
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
    with disk_full_is_input_error(target):
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
        if not match or entry.is_symlink() or process_runs(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir():
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp(\.[^.]+)?")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary as :func:`atomic_path` names them."""
    return _TEMPORARY.fullmatch(name) is not None


def process_runs(pid: int) -> bool:
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
def disk_full_is_input_error(target: Path) -> Iterator[None]:
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


def folder_mode() -> int:
    """Permission bits of a new folder under the process's umask (mkdtemp makes 0700)."""
    return 0o777 & ~_UMASK


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def check_output_folder(out_dir: str | Path, inputs: Iterable[str | Path] = (), hint: str = "", flag: str = "-o") -> Path:
    """``out_dir`` as a Path, checked without creating anything: a symbolic link loop, an
    existing file in its place or in place of a parent, and an overlap with one of
    ``inputs`` (the folder is, or lies inside, an input folder, or holds an input; symbolic
    links resolved) are user mistakes, which ask for another ``flag``; ``hint`` says what to
    do about an overlap instead."""
    out_dir = Path(out_dir)
    hint = hint or f"choose another {flag}"
    try:
        resolved = out_dir.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symbolic link loop (Python < 3.13)
        raise InputError(out_dir, f"output folder cannot be resolved ({err}); choose another {flag}") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, f"output folder is an existing file; choose another {flag}")
    blocker = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(out_dir, f"output folder cannot be created: {blocker} is a file; choose another {flag}")
    for given in inputs:
        try:
            source = Path(given).resolve()
        except (OSError, RuntimeError):
            continue  # an unreadable input is reported where it is read
        if source == resolved or resolved in source.parents:
            raise InputError(out_dir, f"output folder holds the input {given}; outputs must not mix with inputs: {hint}")
        if source in resolved.parents:
            raise InputError(out_dir, f"output folder lies inside the input folder {given}; outputs must not mix with inputs: {hint}")
    return out_dir


def ensure_writable_folder(folder: str | Path, inputs: Iterable[str | Path] = (), keep: bool = True, flag: str = "-o") -> Path:
    """Prove a file can be written in ``folder`` (after :func:`check_output_folder` with
    ``inputs``): an InputError naming the folder, which asks for another ``flag``, otherwise.
    The folder (and missing parents) is created; with ``keep`` False the folders this call
    created are removed again, so a probe before a run that may still be refused leaves
    nothing behind."""
    folder = check_output_folder(folder, inputs, flag=flag)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # innermost first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(folder, f"cannot write in the output folder ({err.strerror or err}); choose another {flag}") from err
    finally:
        for path in created if not keep else ():
            with contextlib.suppress(OSError):
                path.rmdir()
    return folder


LOCK_FILE = ".pdmtrack.lock"  # inside an output folder while a run writes there


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s run lock (``LOCK_FILE`` inside it, holding the owner's pid) while the
    block runs; a folder another process holds is an InputError at once (no waiting)."""
    from filelock import FileLock, Timeout

    path = Path(folder) / LOCK_FILE
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(folder, f"is in use by another pdmtrack run ({_lock_owner(path)}); wait for it or choose another -o") from None
    try:
        path.write_text(f"{os.getpid()}\n", encoding="ascii")
        yield
    finally:
        lock.release()


def check_not_in_use(folder: str | Path) -> None:
    """InputError when another process holds ``folder``'s run lock (see :func:`folder_lock`);
    creates nothing."""
    if (Path(folder) / LOCK_FILE).is_file():
        with folder_lock(folder):
            pass


def _lock_owner(path: Path) -> str:
    """ "pid N" from a lock file, as far as it can be read."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        pid = path.read_text(encoding="ascii").strip()
        if pid.isdigit():
            return f"pid {pid}"
    return "pid unknown"


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


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder beside ``target`` (named as :func:`atomic_path` names its
    temporaries); when the block completes it replaces ``target`` (:func:`replace_folder`).
    After an exception it is deleted, with the parent folders this call created, and
    ``target`` is left as it was. A full disk is an InputError naming the folder."""
    target = Path(target)
    created = [path for path in target.parents if not path.exists()]  # innermost first
    try:
        with disk_full_is_input_error(target):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent))
            except PermissionError as err:
                raise InputError(target.parent, f"cannot write in this folder ({err.strerror})") from err
            try:
                os.chmod(staging, folder_mode())
                yield staging
                replace_folder(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


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
