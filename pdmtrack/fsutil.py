"""Files and folders: atomic writing (temporary name, then rename), the user's cache folder
and the offline switch every download obeys."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pdmtrack.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates 0600 files, final files should follow the umask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left untouched, so a
    killed or failed run never leaves a half-written file under the final name.
    The temporary name keeps the target's suffix so writers that pick a format by
    extension (PIL, PyAV) still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


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
