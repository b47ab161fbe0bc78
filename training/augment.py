"""Augmentation on preprocessed tensors: a galaxy's symmetries, and the ways surveys differ.

A galaxy has no preferred orientation or handedness, and survey cutouts vary in zoom and
centring, so each sample gets a random rotation (any angle), a random flip, a zoom and a small
shift, in one affine resampling (:func:`random_affine`). Borders are filled by reflection, which
keeps the sky background statistics, or, for wide zoom ranges where reflection would mirror the
galaxy into the frame, by the image's own border level; values stay within the input's range
(bilinear interpolation is convex).

Surveys also differ in bands and colour balance, PSF, depth and surface brightness;
:func:`survey_augment` imitates each of these (switched by :class:`SurveyAugment`), on the
[0, 1] display-space tensor that the preprocessing produces, so they are approximations of the
physical effects, not forward models: grey renderings of one band (or a mix) as every channel,
per-band gains, Gaussian PSF blur, Gaussian sky noise, and flux dimming towards the background.
Each operation takes explicit per-sample parameters, so the same functions serve training (random
parameters) and the fixed survey shifts of :mod:`training.experiments.robustness`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.config import SurveyAugment


def border_level(images: torch.Tensor, width: int = 4) -> torch.Tensor:
    """``(n, C, 1, 1)`` per-channel median of each image's outer ``width`` pixels (the sky level)."""
    n, c, h, w = images.shape
    ring = torch.cat([images[:, :, :width].reshape(n, c, -1), images[:, :, -width:].reshape(n, c, -1),
                      images[:, :, width:-width, :width].reshape(n, c, -1),
                      images[:, :, width:-width, -width:].reshape(n, c, -1)], dim=2)
    return ring.median(dim=2).values[:, :, None, None]


def random_affine(images: torch.Tensor, strength: float = 1.0, max_zoom: float = 0.25,
                  max_shift: float = 0.06, generator: torch.Generator | None = None,
                  exact_fraction: float = 0.0, zoom_range: tuple[float, ...] = ()) -> torch.Tensor:
    """Rotate by any angle, flip, zoom by up to ``±max_zoom·strength`` (log scale) and shift.

    ``strength`` 0 returns the input unchanged (apart from flips and right-angle rotations, which
    are exact); 1 uses the full ranges. ``exact_fraction`` of the samples get only a right-angle
    rotation and flip, which need no interpolation, so the model also sees unblurred pixels as
    survey images have them. ``zoom_range = (lo, hi)`` draws the apparent size factor
    log-uniformly from it instead (its log-width scaled by ``strength``) and fills the borders
    with the image's border level instead of reflecting it.
    """
    n = images.shape[0]
    dev, dtype = images.device, images.dtype

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev, dtype=dtype)

    if strength <= 0:
        k = int(torch.randint(0, 4, (1,), generator=generator))
        out = torch.rot90(images, k, dims=(2, 3))
        return out.flip(3) if bool(rand(1) < 0.5) else out
    angle = rand(n) * 2 * math.pi
    if zoom_range:
        lo, hi = math.log(zoom_range[0]), math.log(zoom_range[1])
        zoom = torch.exp((lo + hi) / 2 + (rand(n) * 2 - 1) * (hi - lo) / 2 * strength)
    else:
        zoom = torch.exp((rand(n) * 2 - 1) * math.log1p(max_zoom * strength))
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0).to(dtype)
    shift = (rand(n, 2) * 2 - 1) * max_shift * strength * 2  # grid units span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    if exact_fraction > 0:
        exact = rand(n) < exact_fraction
        quarter = torch.floor(rand(n) * 4) * (math.pi / 2)
        c, s = torch.round(torch.cos(quarter)), torch.round(torch.sin(quarter))
        zero = torch.zeros_like(c)
        exact_theta = torch.stack([torch.stack([c * flip, -s, zero], 1), torch.stack([s * flip, c, zero], 1)], 1)
        theta = torch.where(exact[:, None, None], exact_theta, theta)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if not zoom_range:
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    sky = border_level(images)
    return F.grid_sample(images - sky, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + sky


def rescale(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Show every galaxy ``factor`` times as large (centred, no rotation); borders at the sky level."""
    n = images.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factor
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    sky = border_level(images)
    return F.grid_sample(images - sky, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + sky


def grey(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One grey plane per sample, ``sum_c weights[:, c] * band c`` (weights sum to 1), as every channel.

    A single-band cutout reaches the model this way: :func:`galaxy_infer.preprocess` repeats it.
    """
    plane = (images * weights[:, :, None, None]).sum(dim=1, keepdim=True)
    return plane.expand_as(images).contiguous()


def band_gains(images: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Multiply each band by its ``(n, C)`` gain (another colour balance), clipped to [0, 1]."""
    return (images * gains[:, :, None, None]).clamp(0.0, 1.0)


def psf_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-sample ``sigma`` in pixels (0 = unchanged), reflected borders."""
    n, c, h, w = images.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max())))) if len(sigma) else 1
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    s = sigma.clamp(min=1e-3)[:, None]
    kernel = torch.exp(-0.5 * (x[None] / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(c, dim=0)  # (n*c, k): one kernel per sample and band
    flat = F.pad(images.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def dim(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale the flux above each image's border level by a per-sample ``factor`` (fainter or farther)."""
    sky = border_level(images)
    return sky + (images - sky) * factor[:, None, None, None]


def add_noise(images: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add Gaussian sky noise of a per-sample ``sigma`` (a shallower survey), clipped to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return (images + noise * sigma[:, None, None, None]).clamp(0.0, 1.0)


def survey_augment(images: torch.Tensor, config: SurveyAugment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply each enabled survey difference to a random share ``config.p`` of the samples.

    Order: PSF blur, dimming, colour balance, noise, then grey rendering (so a grey sample's
    noise is the same in every channel, as in a repeated single band).
    """
    n, c = images.shape[:2]
    dev, dtype = images.device, images.dtype

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev, dtype=dtype)

    def chosen(share: float) -> torch.Tensor:
        return (rand(n) < share)

    out = images
    if config.blur > 0:
        sigma = rand(n) * config.blur * chosen(config.p)
        some = sigma > 0.05  # a narrower kernel hardly changes a pixel; blurring only the rest halves the cost
        if some.any():
            out = out.clone()
            out[some] = psf_blur(out[some], sigma[some])
    if config.dim < 1:
        factor = torch.exp(rand(n) * math.log(config.dim))
        out = dim(out, torch.where(chosen(config.p), factor, torch.ones_like(factor)))
    if config.colour > 0:
        gains = torch.exp(torch.randn(n, c, generator=generator, device=dev, dtype=dtype) * config.colour)
        out = band_gains(out, torch.where(chosen(config.p)[:, None], gains, torch.ones_like(gains)))
    if config.noise > 0:
        sigma = config.noise * torch.exp(rand(n) * math.log(20.0)) / 20.0
        out = add_noise(out, sigma * chosen(config.p), generator)
    if config.grey > 0:
        # half of the grey samples show one band, half a random mix of the bands
        one_band = F.one_hot(torch.randint(0, c, (n,), generator=generator, device=dev), c).to(dtype)
        mix = rand(n, c) + 1e-3
        mix = mix / mix.sum(dim=1, keepdim=True)
        weights = torch.where(chosen(0.5)[:, None], one_band, mix)
        pick = chosen(config.grey)
        out = torch.where(pick[:, None, None, None], grey(out, weights), out)
    return out
