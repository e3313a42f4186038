"""Inversion: schedules match diffusers', AIDI solves the implicit DDIM equation, noise mode."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from pdmtrack.config import FeatureConfig
from pdmtrack.errors import InputError
from pdmtrack.features.inversion import (
    check_inversion_config,
    ddim_step,
    inversion_walk,
    invert,
    leading_timesteps,
    trailing_timesteps,
    unet_passes,
)

SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
ALPHAS = DDPMScheduler(**SCHEDULE).alphas_cumprod.double()


class LinearNoise:
    """A stand-in UNet: eps(z, t) = 0.3 z + 0.01 t, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, latents: torch.Tensor, timestep: int) -> torch.Tensor:
        self.calls += 1
        return 0.3 * latents + 0.01 * timestep


@pytest.mark.parametrize("steps", [1, 4, 50])
def test_trailing_schedule_matches_diffusers(steps: int) -> None:
    scheduler = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    assert trailing_timesteps(1000, steps) == sorted(scheduler.timesteps.tolist())


def test_walk_ends_at_the_feature_timestep() -> None:
    four = trailing_timesteps(1000, 4)
    assert inversion_walk(1000, 4, four[0]) == [four[0]]  # the default: one step from t = 0
    assert inversion_walk(1000, 4, four[1]) == four[:2]
    fifty = inversion_walk(1000, 50, 249)
    assert fifty[-1] == 249 and fifty == sorted(fifty) and all(t < 249 for t in fifty[:-1])


def test_aidi_converges_to_the_exact_inversion() -> None:
    """The inverted z_b must be a fixed point: denoising it with eps(z_b) gives back z_0."""
    latents = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    config = FeatureConfig(inversion="aidi", feature_timestep=249)
    alpha_b = float(ALPHAS[249])

    def residual(iters: int) -> float:
        z_b = invert(latents, LinearNoise(), ALPHAS, replace(config, fixed_point_iters=iters))
        back = ddim_step(z_b, LinearNoise()(z_b, 249), alpha_b, 1.0)  # denoise to t = 0
        return float((back - latents).abs().max())

    errors = [residual(k) for k in (0, 1, 2, 8)]
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1e-6 * errors[0]


def test_unet_pass_counts() -> None:
    for config in (
        FeatureConfig(inversion="aidi"),
        FeatureConfig(inversion="aidi", feature_timestep=749, fixed_point_iters=3),
        FeatureConfig(inversion="ddim", ddim_steps=50),
        FeatureConfig(inversion="noise"),
        FeatureConfig(inversion="ddim-reconstruct", feature_timestep=1),
        FeatureConfig(inversion="ddim-reconstruct", ddim_steps=10, feature_timestep=501),
    ):
        predictor = LinearNoise()
        invert(torch.zeros(1, 4, 2, 2), predictor, ALPHAS, config)
        assert predictor.calls == unet_passes(config)
    assert unet_passes(FeatureConfig()) == 3  # default: one step, K = 2 -> (K + 1) passes
    assert unet_passes(FeatureConfig(inversion="ddim-reconstruct", feature_timestep=1)) == 99  # 50 up, 49 down


@pytest.mark.parametrize("steps", [10, 50])
def test_leading_schedule_matches_sd_ddim_scheduler(steps: int) -> None:
    scheduler = DDIMScheduler(**SCHEDULE, timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(steps)
    assert leading_timesteps(1000, steps) == sorted(scheduler.timesteps.tolist())


def test_invert_and_reconstruct_matches_the_authors_loop() -> None:
    """Inversion as the authors' scheduler_next_step writes it, then diffusers' DDIM sampler
    (SD 1.4's config: offset 1, alphas_cumprod[0] below t = 0, eta 0) down to t = 1."""
    latents = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    config = FeatureConfig(inversion="ddim-reconstruct", ddim_steps=50, feature_timestep=1)
    unet = LinearNoise()
    scheduler = DDIMScheduler(**SCHEDULE, steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(50)
    expected = latents.clone()
    for t in reversed(scheduler.timesteps.tolist()):  # 1, 21, ..., 981
        eps = unet(expected, t)
        alpha_prev = ALPHAS[t - 20] if t - 20 >= 0 else scheduler.final_alpha_cumprod.double()
        x0 = (expected - (1 - alpha_prev) ** 0.5 * eps) / alpha_prev**0.5
        expected = ALPHAS[t] ** 0.5 * x0 + (1 - ALPHAS[t]) ** 0.5 * eps
    for t in scheduler.timesteps.tolist()[:-1]:  # 981 ... 21: the feature pass is the one at t = 1
        expected = scheduler.step(unet(expected, t), t, expected, eta=0.0).prev_sample
    # the scheduler keeps its alphas in float32: agreement to float32 precision
    torch.testing.assert_close(invert(latents, LinearNoise(), ALPHAS, config), expected, rtol=1e-4, atol=1e-5)


def test_noise_mode_is_ddpm_add_noise_with_seeded_noise() -> None:
    latents = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(1))
    config = FeatureConfig(inversion="noise", feature_timestep=261, seed=5)
    noisy = invert(latents, LinearNoise(), ALPHAS, config)
    noise = torch.randn((1, 4, 5, 6), generator=torch.Generator().manual_seed(5)).expand_as(latents)
    expected = DDPMScheduler(**SCHEDULE).add_noise(latents, noise, torch.tensor([261] * 3))
    torch.testing.assert_close(noisy, expected)
    assert torch.equal(noisy, invert(latents, LinearNoise(), ALPHAS, config))


def test_bad_settings_are_input_errors() -> None:
    with pytest.raises(InputError, match="^timestep: "):
        check_inversion_config(FeatureConfig(feature_timestep=1000), 1000)
    with pytest.raises(InputError, match="^fixed_point_iters: "):
        check_inversion_config(FeatureConfig(fixed_point_iters=-1), 1000)
    with pytest.raises(InputError, match="^inversion: "):
        check_inversion_config(FeatureConfig(inversion="sde"), 1000)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="^timestep: "):  # not a step of the leading schedule
        check_inversion_config(FeatureConfig(inversion="ddim-reconstruct", feature_timestep=249), 1000)
