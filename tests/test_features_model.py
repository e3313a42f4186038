"""Loading a diffusion checkpoint: local folders, the HF cache offline, and one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import torch

from pdmtrack.config import FeatureConfig
from pdmtrack.errors import InputError
from pdmtrack.features.model import load_diffusion_parts
from pdmtrack.testing.diffusion import build_tiny_pipeline

CPU = torch.device("cpu")
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def empty_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An HF_HOME with nothing cached, offline."""
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode, but the hub endpoint refuses connections (no network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")


def cache_as_hub_model(tiny_folder: Path, hf_home: Path, repo_id: str) -> None:
    """Lay ``tiny_folder`` out in the HF cache as ``repo_id`` at FAKE_COMMIT (as a download would)."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(tiny_folder, repo_dir / "snapshots" / FAKE_COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(FAKE_COMMIT)


def test_local_folder_loads_both_families(tiny_sdxl: Path, tmp_path: Path) -> None:
    tiny_sd = build_tiny_pipeline(tmp_path / "tiny-sd", family="sd")
    sdxl = load_diffusion_parts(FeatureConfig(model=str(tiny_sdxl)), CPU, torch.float32)
    sd = load_diffusion_parts(FeatureConfig(model=str(tiny_sd)), CPU, torch.float32)

    assert (sdxl.family, len(sdxl.text_encoders), len(sdxl.tokenizers)) == ("sdxl", 2, 2)
    assert (sd.family, len(sd.text_encoders), len(sd.tokenizers)) == ("sd", 1, 1)
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sdxl.alphas_cumprod.shape == (1000,)
    assert bool((sdxl.alphas_cumprod.diff() < 0).all())  # noise grows with t
    assert sdxl.fingerprint != sd.fingerprint
    again = load_diffusion_parts(FeatureConfig(model=str(tiny_sdxl)), CPU, torch.float32)
    assert again.fingerprint == sdxl.fingerprint


def test_local_fingerprint_follows_the_weights(tiny_sdxl: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sdxl, copy)
    before = load_diffusion_parts(FeatureConfig(model=str(copy)), CPU, torch.float32).fingerprint
    config_file = copy / "unet" / "config.json"
    config_file.write_text(config_file.read_text().replace('"sample_size": 8', '"sample_size": 16'))
    after = load_diffusion_parts(FeatureConfig(model=str(copy)), CPU, torch.float32).fingerprint
    assert before != after


def test_folder_missing_a_component_names_it(tiny_sdxl: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sdxl, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(InputError) as err:
        load_diffusion_parts(FeatureConfig(model=str(broken)), CPU, torch.float32)
    assert str(broken) in str(err.value) and "text_encoder_2" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_folder_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^model: folder .* does not exist"):
        load_diffusion_parts(FeatureConfig(model=str(tmp_path / "nope")), CPU, torch.float32)


def test_offline_model_not_in_cache_is_one_line(empty_hf_home: Path) -> None:
    with pytest.raises(InputError) as err:
        load_diffusion_parts(FeatureConfig(model="stabilityai/sdxl-turbo"), CPU, torch.float32)
    message = str(err.value)
    assert message.startswith("model: 'stabilityai/sdxl-turbo' is not in the Hugging Face cache")
    assert "--model PATH" in message and "\n" not in message
    assert not any((empty_hf_home / "hub").glob("models--*/snapshots/*/*"))  # nothing fetched


def test_unreachable_hub_model_not_in_cache_is_one_line(empty_hf_home: Path, unreachable_hub: None) -> None:
    with pytest.raises(InputError) as err:
        load_diffusion_parts(FeatureConfig(model="stabilityai/sdxl-turbo"), CPU, torch.float32)
    assert "hub cannot be reached" in str(err.value) and "\n" not in str(err.value)


def test_cached_hub_model_loads_offline(tiny_sdxl: Path, empty_hf_home: Path) -> None:
    cache_as_hub_model(tiny_sdxl, empty_hf_home, "tiny/sdxl")
    parts = load_diffusion_parts(FeatureConfig(model="tiny/sdxl"), CPU, torch.float32)
    assert parts.family == "sdxl"
    assert parts.fingerprint == f"hub:tiny/sdxl@{FAKE_COMMIT}"


def test_cached_hub_model_loads_when_hub_unreachable(tiny_sdxl: Path, empty_hf_home: Path, unreachable_hub: None) -> None:
    cache_as_hub_model(tiny_sdxl, empty_hf_home, "tiny/sdxl")
    parts = load_diffusion_parts(FeatureConfig(model="tiny/sdxl"), CPU, torch.float32)
    assert parts.fingerprint == f"hub:tiny/sdxl@{FAKE_COMMIT}"


def test_partial_cached_snapshot_reports_not_cached(tiny_sdxl: Path, empty_hf_home: Path) -> None:
    cache_as_hub_model(tiny_sdxl, empty_hf_home, "tiny/sdxl")
    snapshot = empty_hf_home / "hub" / "models--tiny--sdxl" / "snapshots" / FAKE_COMMIT
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(InputError, match="'tiny/sdxl' is not in the Hugging Face cache"):
        load_diffusion_parts(FeatureConfig(model="tiny/sdxl"), CPU, torch.float32)


def test_fp16_variant_files_are_preferred_for_fp16(tiny_sdxl: Path, tmp_path: Path) -> None:
    """A folder with only ``.fp16.`` weight files (the hub's variant naming) still loads."""
    variant_only = tmp_path / "variant"
    shutil.copytree(tiny_sdxl, variant_only)
    for weights in variant_only.glob("*/*.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    parts = load_diffusion_parts(FeatureConfig(model=str(variant_only)), CPU, torch.float16)
    assert parts.unet.dtype == torch.float16
    assert parts.vae.dtype == torch.float32  # force_upcast: SDXL's VAE overflows in fp16


def test_tiny_weights_depend_only_on_the_seed(tmp_path: Path) -> None:
    def unet_bytes(folder: Path) -> bytes:
        return (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    first = build_tiny_pipeline(tmp_path / "a", family="sd", seed=0)
    again = build_tiny_pipeline(tmp_path / "b", family="sd", seed=0)
    other = build_tiny_pipeline(tmp_path / "c", family="sd", seed=1)
    assert unet_bytes(first) == unet_bytes(again) != unet_bytes(other)
    with pytest.raises(FileExistsError):
        build_tiny_pipeline(first, family="sd")


def test_loading_is_quiet_and_skips_random_init(tiny_sdxl: Path, capfd: pytest.CaptureFixture, caplog) -> None:
    """With accelerate installed, diffusers loads weights into empty modules (no random
    initialisation first): no "accelerate was not found" warning on any channel."""
    import warnings

    from diffusers.utils import is_accelerate_available

    assert is_accelerate_available()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        load_diffusion_parts(FeatureConfig(model=str(tiny_sdxl)), CPU, torch.float32)
    said = capfd.readouterr()
    text = "\n".join([said.out, said.err, caplog.text, *(str(w.message) for w in caught)])
    assert "accelerate" not in text.lower() and "low_cpu_mem_usage" not in text


def test_attention_runs_through_sdpa(tiny_sdxl: Path) -> None:
    """Every attention of the UNet uses torch's scaled_dot_product_attention (flash / memory-
    efficient kernels on a GPU); PDM observes the hooked block without replacing them."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = load_diffusion_parts(FeatureConfig(model=str(tiny_sdxl)), CPU, torch.float32).unet
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
