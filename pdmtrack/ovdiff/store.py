"""On-disk store of class prototypes, keyed by model, class, prompt and every setting.

Layout of a store folder (``--prototypes``; default: the user cache's ``prototypes/<model>``):
``store.json`` names the model the folder belongs to (a folder of another model is refused);
per class and key, ``<class>-<key16>.safetensors`` holds the prototype tensors and
``<class>-<key16>.json`` says how they were built (class, prompt, settings, counts, time).
Both are written under temporary names and renamed; the JSON is written last, so an entry
without a matching JSON (a killed run) is incomplete and rebuilt, and so is one that does not
load — it is removed first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pdmtrack.errors import InputError
from pdmtrack.io.files import atomic_path, atomic_write_text, ensure_writable_folder, read_json, user_cache_dir
from pdmtrack.ovdiff.prototypes import ClassPrototypes

log = logging.getLogger(__name__)

STORE_FORMAT = "pdmtrack-prototypes"
STORE_VERSION = 1
MANIFEST = "store.json"
_UNSAFE = re.compile(r"[^0-9A-Za-z_-]+")


def default_store_dir(model_fingerprint: str) -> Path:
    """$XDG_CACHE_HOME/pdmtrack/prototypes/<model hash> (or under ~/.cache)."""
    return user_cache_dir() / "prototypes" / hashlib.sha256(model_fingerprint.encode()).hexdigest()[:16]


def entry_key(payload: dict) -> str:
    """sha256 of the JSON of everything a class's prototypes depend on."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_store_folder(root: Path, flag: str = "--prototypes") -> dict | None:
    """The manifest of the prototype folder ``root`` (None for a new or empty folder); an
    InputError naming ``flag`` for a file, a foreign folder or another store version."""
    if root.exists() and not root.is_dir():
        raise InputError(flag, f"{root} is a file, not a prototype folder")
    manifest = root / MANIFEST
    if not manifest.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise InputError(flag, f"{root} is not a prototype folder (no {MANIFEST}); give a new or empty folder")
        return None
    data = read_json(manifest)
    if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
        raise InputError(manifest, f"not a pdmtrack prototype store manifest (format is not '{STORE_FORMAT}')")
    if data.get("version") != STORE_VERSION:
        raise InputError(flag, f"{root} has store version {data.get('version')}, this pdmtrack reads {STORE_VERSION}; use another folder")
    return data


class PrototypeStore:
    """Prototypes of one model in one folder (``root``; None = the default folder), which the
    user names with ``flag`` (for messages)."""

    def __init__(self, root: Path | None, model_fingerprint: str, flag: str = "--prototypes") -> None:
        self.model = model_fingerprint
        self.flag = flag
        self.root = Path(root).expanduser() if root is not None else default_store_dir(model_fingerprint)
        data = check_store_folder(self.root, flag)
        if data is not None and data.get("model") != self.model:
            problem = f"{self.root} holds prototypes of model '{data.get('model')}', not of '{self.model}'; use another folder"
            raise InputError(flag, problem)

    def check_writable(self) -> None:
        """Create the folder and prove a file can be written in it; an InputError otherwise."""
        ensure_writable_folder(self.root, flag=self.flag)

    def _paths(self, name: str, key: str) -> tuple[Path, Path]:
        stem = f"{_UNSAFE.sub('_', name)[:40]}-{key[:16]}"
        return self.root / f"{stem}.safetensors", self.root / f"{stem}.json"

    def load(self, name: str, key: str) -> ClassPrototypes | None:
        """The stored prototypes of ``name`` under ``key``, or None (a broken entry is removed)."""
        tensors_path, record_path = self._paths(name, key)
        if not (tensors_path.is_file() and record_path.is_file()):
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("key") != key or record.get("class") != name:
                raise ValueError("the record does not match its key")
            return ClassPrototypes.from_tensors(load_file(str(tensors_path)))
        except (OSError, ValueError, KeyError, AttributeError, SafetensorError) as err:
            log.warning("removing a broken prototype entry %s (%s)", tensors_path, err)
            tensors_path.unlink(missing_ok=True)
            record_path.unlink(missing_ok=True)
            return None

    def save(self, name: str, key: str, prototypes: ClassPrototypes, record: dict) -> Path:
        """Store ``prototypes`` of ``name`` under ``key`` with ``record`` beside; the tensors' path."""
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            payload = {"format": STORE_FORMAT, "version": STORE_VERSION, "model": self.model}
            atomic_write_text(manifest, json.dumps(payload, indent=2) + "\n")
        tensors_path, record_path = self._paths(name, key)
        with atomic_path(tensors_path) as tmp:
            save_file(prototypes.tensors(), str(tmp), metadata={"class": name, "key": key})
        atomic_write_text(record_path, json.dumps({**record, "class": name, "key": key}, indent=2, sort_keys=True) + "\n")
        return tensors_path
