"""The restricted unpickler builds plain data and numpy arrays, and refuses everything else."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pdmtrack.errors import InputError
from pdmtrack.io.safe_pickle import load_plain_pickle, loads_plain

PLAIN = {
    "imlist": ["all_souls_000001", "oxford_001"],
    "gnd": [{"bbx": [1.5, 2.0, 30.0, 40.0], "easy": np.array([0, 3]), "hard": [], "junk": np.int64(1)}],
    "tuple": (1, 2.5, None, True),
    "set": {1, 2},
    "bytes": b"\x00\xff",
    "matrix": np.arange(6, dtype=np.float32).reshape(2, 3),
}


class _Plain:
    """An ordinary object of a user class."""


class _Touch:
    """Unpickling this would create a file (the shape of a code-execution payload)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_data_round_trips(protocol: int) -> None:
    loaded = loads_plain(pickle.dumps(PLAIN, protocol=protocol))
    assert loaded["imlist"] == PLAIN["imlist"] and loaded["tuple"] == PLAIN["tuple"]
    assert loaded["set"] == {1, 2} and loaded["bytes"] == b"\x00\xff"
    np.testing.assert_array_equal(loaded["gnd"][0]["easy"], [0, 3])
    np.testing.assert_array_equal(loaded["matrix"], PLAIN["matrix"])
    assert loaded["matrix"].dtype == np.float32 and int(loaded["gnd"][0]["junk"]) == 1


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_refuses_a_payload_and_runs_nothing(tmp_path: Path, protocol: int) -> None:
    target = tmp_path / "touched"
    data = pickle.dumps({"gnd": [_Touch(str(target))]}, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing to build"):
        loads_plain(data)
    assert not target.exists()


@pytest.mark.parametrize(
    "value",
    [collections.OrderedDict(a=1), os.system, Path("x"), _Plain(), slice(1, 2), complex(1, 2)],
    ids=["ordered-dict", "function", "path", "instance", "slice", "complex"],
)
def test_refuses_any_other_object(value: object) -> None:
    with pytest.raises(pickle.UnpicklingError):
        loads_plain(pickle.dumps(value, protocol=2))


def test_load_plain_pickle_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_plain_pickle(tmp_path / "missing.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(InputError, match="bad.pkl: not a plain-data pickle"):
        load_plain_pickle(bad)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps(PLAIN)[:20])
    with pytest.raises(InputError, match="truncated.pkl"):
        load_plain_pickle(truncated)
