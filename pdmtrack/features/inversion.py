"""Clean latent -> noisy latent at the feature timestep, the step before the UNet pass whose
attention the PDM features are read from.

Modes (``FeatureConfig.inversion``):

- ``aidi`` (the paper): deterministic DDIM inversion along the trailing schedule of
  ``schedule_steps`` steps (SDXL-turbo's 4 steps: 249, 499, 749, 999), from t = 0 up to
  ``feature_timestep``; each step solves the implicit inversion equation by fixed-point
  iteration (AIDI, Pan et al. 2023): start from eps = UNet(z_a, t_a), then
  ``fixed_point_iters`` (K) times eps = UNet(z_b, t_b) and recompute z_b. (K + 1) UNet passes
  per step; with the defaults (t = 249, K = 2) one step, 3 passes.
- ``ddim`` (the authors' code): the same walk on a ``ddim_steps``-step trailing schedule with
  K = 0 (plain DDIM inversion); 50 steps up to t = 249 is 13 passes.
- ``ddim-reconstruct`` (the authors' ``pdm_matching.py``): plain DDIM inversion over the whole
  ``ddim_steps``-step schedule of SD 1.x's DDIMScheduler ("leading" spacing, offset 1: 1, 21,
  ..., 981 for 50 steps), then DDIM denoising back down from the top; the feature pass is the
  reconstruction's pass at ``feature_timestep`` (the authors keep its last step, t = 1). Each
  inversion step evaluates the UNet at the current latent with the next timestep and moves
  from the previous timestep's alpha (alphas_cumprod[0] before the first), as their
  ``scheduler_next_step`` does. 50 steps down to t = 1: 50 + 49 passes before the feature pass.
- ``noise`` (DIFT): z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) n with n drawn once from a generator
  seeded with ``seed`` (the same n for every frame, on CPU so every device agrees); no pass.

The walk's timesteps are the schedule's timesteps below ``feature_timestep`` followed by
``feature_timestep`` itself. Guidance is 0: the UNet sees the conditional prompt only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pdmtrack.config import FeatureConfig
from pdmtrack.errors import ParameterError

# eps = predict_noise(latents, timestep): the UNet (with its prompt) as the walk sees it.
NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """diffusers' ``timestep_spacing="trailing"`` schedule, ascending (1000, 4 -> 249..999)."""
    ratio = num_train_timesteps / steps
    timesteps = np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1
    return sorted(int(t) for t in timesteps)


def inversion_walk(num_train_timesteps: int, steps: int, feature_timestep: int) -> list[int]:
    """Timesteps the inversion visits after t = 0, ending at ``feature_timestep``."""
    return [t for t in trailing_timesteps(num_train_timesteps, steps) if t < feature_timestep] + [feature_timestep]


def leading_timesteps(num_train_timesteps: int, steps: int, offset: int = 1) -> list[int]:
    """diffusers' ``timestep_spacing="leading"`` schedule with ``steps_offset``, ascending
    (1000, 50 -> 1, 21, ..., 981: SD 1.x's DDIMScheduler config)."""
    ratio = num_train_timesteps // steps
    return [i * ratio + offset for i in range(steps)]


def _steps_and_iters(config: FeatureConfig) -> tuple[int, int]:
    """(schedule steps, fixed-point iterations K) of the aidi or ddim walk."""
    if config.inversion == "aidi":
        return config.schedule_steps, config.fixed_point_iters
    return config.ddim_steps, 0


def unet_passes(config: FeatureConfig, num_train_timesteps: int = 1000) -> int:
    """UNet passes the inversion of one batch costs (not counting the feature pass)."""
    if config.inversion == "noise":
        return 0
    if config.inversion == "ddim-reconstruct":
        schedule = leading_timesteps(num_train_timesteps, config.ddim_steps)
        return len(schedule) + sum(t > config.feature_timestep for t in schedule)
    steps, iters = _steps_and_iters(config)
    return len(inversion_walk(num_train_timesteps, steps, config.feature_timestep)) * (iters + 1)


def check_inversion_config(config: FeatureConfig, num_train_timesteps: int) -> None:
    """Raise InputError for settings the inversion cannot run with."""
    if config.inversion not in ("aidi", "ddim", "ddim-reconstruct", "noise"):
        raise ParameterError("inversion", f"unknown mode '{config.inversion}' (use aidi, ddim, ddim-reconstruct or noise)")
    if not 0 < config.feature_timestep < num_train_timesteps:
        raise ParameterError("timestep", f"{config.feature_timestep} is outside 1..{num_train_timesteps - 1}")
    if config.fixed_point_iters < 0:
        raise ParameterError("fixed_point_iters", f"must be at least 0, got {config.fixed_point_iters}")
    if config.schedule_steps < 1 or config.ddim_steps < 1:
        raise ParameterError("inversion", "the schedule needs at least one step (schedule_steps, ddim_steps)")
    if config.inversion == "ddim-reconstruct" and config.ddim_steps > num_train_timesteps:
        raise ParameterError("inversion", f"ddim_steps {config.ddim_steps} exceeds the {num_train_timesteps} training timesteps")
    if config.inversion == "ddim-reconstruct":
        schedule = leading_timesteps(num_train_timesteps, config.ddim_steps)
        if config.feature_timestep not in schedule:
            shown = f"{schedule[0]}, {schedule[1]}, ..., {schedule[-1]}" if len(schedule) > 2 else str(schedule)
            raise ParameterError("timestep", f"{config.feature_timestep} is not a step of the reconstruction ({shown})")


def ddim_step(z_a: torch.Tensor, eps: torch.Tensor, alpha_a: float, alpha_b: float) -> torch.Tensor:
    """Deterministic DDIM move from (z_a, alpha_a) to the noisier alpha_b with noise ``eps``."""
    x0 = (z_a - (1 - alpha_a) ** 0.5 * eps) / alpha_a**0.5
    return alpha_b**0.5 * x0 + (1 - alpha_b) ** 0.5 * eps


def invert(latents: torch.Tensor, predict_noise: NoisePredictor, alphas_cumprod: torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """Clean latents (B, C, h, w) -> latents at ``config.feature_timestep``."""
    t_feature = config.feature_timestep
    if config.inversion == "noise":
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        noise = torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32)
        noise = noise.to(device=latents.device, dtype=latents.dtype).expand_as(latents)
        alpha = float(alphas_cumprod[t_feature])
        return alpha**0.5 * latents + (1 - alpha) ** 0.5 * noise
    if config.inversion == "ddim-reconstruct":
        return _invert_and_reconstruct(latents, predict_noise, alphas_cumprod, config)
    steps, iters = _steps_and_iters(config)
    z_a, t_a, alpha_a = latents, 0, 1.0  # t = 0 is the clean latent (alpha = 1)
    for t_b in inversion_walk(len(alphas_cumprod), steps, t_feature):
        alpha_b = float(alphas_cumprod[t_b])
        eps = predict_noise(z_a, t_a)
        z_b = ddim_step(z_a, eps, alpha_a, alpha_b)
        for _ in range(iters):
            z_b = ddim_step(z_a, predict_noise(z_b, t_b), alpha_a, alpha_b)
        z_a, t_a, alpha_a = z_b, t_b, alpha_b
    return z_a


def _invert_and_reconstruct(
    latents: torch.Tensor, predict_noise: NoisePredictor, alphas_cumprod: torch.Tensor, config: FeatureConfig
) -> torch.Tensor:
    """DDIM inversion to the top of the leading schedule, then DDIM denoising down to
    ``config.feature_timestep`` (see the module docstring); returns the latent there."""
    schedule = leading_timesteps(len(alphas_cumprod), config.ddim_steps)
    ratio = len(alphas_cumprod) // config.ddim_steps

    def alpha(t: int) -> float:  # alphas_cumprod[0] below the schedule (SD: set_alpha_to_one=False)
        return float(alphas_cumprod[max(t, 0)])

    z = latents
    for t in schedule:
        z = ddim_step(z, predict_noise(z, t), alpha(t - ratio), alpha(t))
    for t in reversed(schedule):
        if t <= config.feature_timestep:
            break
        z = ddim_step(z, predict_noise(z, t), alpha(t), alpha(t - ratio))
    return z
