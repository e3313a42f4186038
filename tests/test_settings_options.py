"""Settings speak Python: every flat option is typed in ``TrackOptions`` (kept equal to the
settings fields), a wrong type or value is a ParameterError naming the option (not a flag),
paths may be str or Path; the CLI shows such an error under the flag that sets the option."""

from __future__ import annotations

from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest

from pdmtrack import Tracker
from pdmtrack.config import OPTION_FIELDS, FeatureConfig, GlobalConfig, SamConfig, TrackOptions, TrackSettings
from pdmtrack.errors import ParameterError
from pdmtrack.ovdiff.config import PrototypeConfig, SegmentConfig
from tests.cli_runner import assert_one_line_error, run_cli
from tests.test_e2e import PixelStatistics


def test_track_options_list_every_option_with_the_type_it_takes() -> None:
    """TrackOptions is written out for editors; it must name and type exactly the settings' options."""
    assert get_type_hints(TrackOptions) == {name: option.accepted for name, option in OPTION_FIELDS.items()}
    assert get_type_hints(TrackOptions)["cache_dir"] == str | Path | None


def test_a_bad_value_names_the_option() -> None:
    with pytest.raises(ParameterError, match=r"^size: must be a positive multiple of 64, got 65$") as error:
        TrackSettings.from_options(size=65)
    assert error.value.parameter == "size"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(size="512"), "size: expected an integer, got '512'"),
        (dict(size=True), "size: expected an integer, got True"),
        (dict(context=2.0), "context: expected an integer, got 2.0"),
        (dict(square=1), "square: expected True or False, got 1"),
        (dict(no_cache="yes"), "no_cache: expected True or False, got 'yes'"),
        (dict(tau="0.5"), "tau: expected a number, got '0.5'"),
        (dict(tau=float("nan")), "tau: must be a finite number, got nan"),
        (dict(inversion="dd"), "inversion: unknown value 'dd' (choose from aidi, ddim, ddim-reconstruct, noise)"),
        (dict(cache_dir=3), "cache_dir: expected a path (str or Path) or None, got 3"),
        (dict(dift_timestep=2.0), "dift_timestep: expected an integer or None, got 2.0"),
        (dict(batch_size=2.5), "batch_size: expected an integer or a string, got 2.5"),
        (dict(model=7), "model: expected a string or Path, got 7"),
    ],
)
def test_a_wrong_type_names_the_option(options: dict, message: str) -> None:
    with pytest.raises(ParameterError) as error:
        TrackSettings.from_options(**options)
    assert str(error.value) == message


def test_settings_objects_name_their_flat_options() -> None:
    """A field whose option has another name is reported under the option's name."""
    cases = [
        (lambda: FeatureConfig(feature_timestep=-1), "timestep"),
        (lambda: SamConfig(model_type="vit_x"), "sam"),  # type: ignore[arg-type]
        (lambda: GlobalConfig(size=7), "global_size"),
        (lambda: PrototypeConfig(num_support=0), "support"),
        (lambda: PrototypeConfig(seed=1.5), "support_seed"),  # type: ignore[arg-type]
    ]
    for make, name in cases:
        with pytest.raises(ParameterError) as error:
            make()
        assert error.value.parameter == name


def test_numbers_of_other_types_and_paths_as_strings() -> None:
    settings = TrackSettings.from_options(
        tau=1, temperature=np.float32(0.5), context=np.int64(3), cache_dir="/tmp/c", sam_checkpoint="x.safetensors", model=Path("models/sd")
    )
    assert settings.match.tau == 1 and settings.memory.context == 3
    assert settings.runtime.cache_dir == Path("/tmp/c") and settings.sam.checkpoint == Path("x.safetensors")
    assert settings.features.model == "models/sd"
    assert GlobalConfig(model=Path("vit")).model == "vit"
    assert SegmentConfig(clip="none").clip is None and SegmentConfig(stuff=["sky"]).stuff == ("sky",)  # type: ignore[arg-type]


def test_the_tracker_takes_paths_as_strings(tmp_path: Path, tiny_sam: Path) -> None:
    tracker = Tracker(features=PixelStatistics(), device="cpu", cache_dir=str(tmp_path / "cache"), sam_checkpoint=str(tiny_sam))
    assert tracker.settings.runtime.cache_dir == tmp_path / "cache" and tracker.refiner is not None
    with pytest.raises(ParameterError, match="^sam_checkpoint: no such file"):
        Tracker(features=PixelStatistics(), device="cpu", sam_checkpoint=str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["propagate-batch", "--videos", "no-such-folder", "--cls", "dog"], "--videos: no-such-folder is not a folder"),
        (["propagate-batch", "--videos", ".", "--size", "65"], "--size: must be a positive multiple of 64"),
        (["cache", "clear", "--older-than", "-1"], "--older-than: must be a number of days >= 0"),
        (["eval", "permir", "--root", ".", "--rerank", "-1"], "--rerank: must be at least 0, got -1"),
        (["segment-ov", "x.png", "--classes", "dog", "--features", "dift"], "--features: OVDiff commands use PDM features only"),
    ],
)
def test_the_cli_shows_the_flag_of_the_parameter(args: list[str], flag: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(args, capsys, monkeypatch), f"pdmtrack: error: {flag}")


@pytest.mark.parametrize(
    ("parameter", "command", "flag"),
    [
        ("classes", ["propagate"], "--cls"),
        ("classes", ["segment-ov"], "--classes"),
        ("masks", ["propagate"], "--mask"),
        ("kind", ["index", "build"], "--index-type"),
        ("results_dir", ["eval", "davis"], "--results"),
        ("support", ["prototypes", "build"], "--support"),
        ("video", ["propagate"], "VIDEO"),
        ("frame_idx", ["propagate"], "--frame-idx"),  # no such option: the name with dashes
    ],
)
def test_the_flag_of_a_parameter_is_the_invoked_commands(parameter: str, command: list[str], flag: str) -> None:
    from pdmtrack.cli import _flag

    assert _flag(parameter, [*command, "--size", "64"]) == flag
