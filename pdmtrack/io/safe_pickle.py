"""A restricted unpickler for data files that only ship as pickles (ROxford/RParis ground truth).

It builds plain containers (dict, list, tuple, set, str, bytes, numbers) and numpy arrays and
scalars, and nothing else: any other class or callable named in the pickle is refused before
it is looked up, so no code in the file can run. Files are never handed to the plain unpickler.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from pdmtrack.errors import InputError


def _numpy_builders() -> dict[tuple[str, str], object]:
    """The callables numpy's own pickles name (under both numpy 1 and numpy 2 module names)."""
    reconstruct = np.zeros(0).__reduce__()[0]  # multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # multiarray.scalar
    frombuffer = np.zeros(2).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED: dict[tuple[str, str], object] = {
    **_numpy_builders(),
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
    **{(module, name): kind for module in ("builtins", "__builtin__") for name, kind in (("set", set), ("frozenset", frozenset))},
}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable globals are those in ``_ALLOWED``."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("refusing a persistent id")


def loads_plain(data: bytes) -> object:
    """Unpickle ``data`` allowing only plain containers and numpy arrays (UnpicklingError otherwise)."""
    return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()


def load_plain_pickle(path: str | Path) -> object:
    """The plain data in pickle file ``path``; a missing file or any other object is an InputError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror or err})") from err
    try:
        return loads_plain(data)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise InputError(path, f"not a plain-data pickle ({err})") from err
