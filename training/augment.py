"""Augmentation that respects a galaxy's symmetries, applied to preprocessed tensors.

A galaxy has no preferred orientation or handedness, and survey cutouts vary in zoom and
centring, so each sample gets a random rotation (any angle), a random flip, a small zoom and a
small shift, in one affine resampling. Borders are filled by reflection, which keeps the sky
background statistics; values stay within the input's range (bilinear interpolation is convex).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, strength: float = 1.0, max_zoom: float = 0.25,
                  max_shift: float = 0.06, generator: torch.Generator | None = None,
                  exact_fraction: float = 0.0) -> torch.Tensor:
    """Rotate by any angle, flip, zoom by up to ``±max_zoom·strength`` (log scale) and shift.

    ``strength`` 0 returns the input unchanged (apart from flips and right-angle rotations, which
    are exact); 1 uses the full ranges. ``exact_fraction`` of the samples get only a right-angle
    rotation and flip, which need no interpolation, so the model also sees unblurred pixels as
    survey images have them.
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
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
