"""Synthetic galaxy cutouts that the product generates itself: for the demo and for tests.

They look like survey cutouts (a Sersic-like bulge, an inclined exponential disk, optional
spiral arms, sky noise) but carry no science; real data stays in ``../shared/data``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("elliptical", "spiral", "edge_on")


def galaxy_image(rng: np.random.Generator, kind: str, size: int = 424) -> np.ndarray:
    """An ``(size, size, 3)`` uint8 colour image of one synthetic galaxy of ``kind``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    angle = rng.uniform(0, np.pi)
    xr = x * np.cos(angle) + y * np.sin(angle)
    yr = -x * np.sin(angle) + y * np.cos(angle)
    scale = size / rng.uniform(9, 14)
    axis_ratio = {"elliptical": rng.uniform(0.6, 1.0), "spiral": rng.uniform(0.6, 1.0), "edge_on": rng.uniform(0.12, 0.22)}[kind]
    r = np.hypot(xr, yr / axis_ratio)
    bulge = np.exp(-7.67 * ((r / (0.5 * scale)) ** 0.25 - 1))
    disk = np.exp(-r / scale)
    if kind == "spiral":
        theta = np.arctan2(yr / axis_ratio, xr)
        arms = 0.5 * (1 + np.cos(2 * (theta - np.log(r + 1) / np.tan(np.radians(rng.uniform(15, 30))))))
        disk = disk * (0.3 + 1.7 * arms ** 3)
    weights = {"elliptical": (1.0, 0.0), "spiral": (0.25, 1.0), "edge_on": (0.3, 1.0)}[kind]
    light = weights[0] * bulge / bulge.max() + weights[1] * disk / disk.max()
    colour = np.array([1.0, 0.85, 0.6] if kind == "elliptical" else [0.7, 0.8, 1.0], np.float32)
    image = light[..., None] * colour * rng.uniform(0.6, 1.0) + rng.normal(0, 0.02, (size, size, 3))
    return (np.clip(np.arcsinh(image * 8) / np.arcsinh(8), 0, 1) * 255).astype(np.uint8)


def write_fits_cutout(path: Path, rng: np.random.Generator, size: int = 128, bands: int = 3,
                      ra: float = 150.1, dec: float = 2.2) -> Path:
    """A float32 ``(bands, size, size)`` FITS cutout with a celestial WCS centred on (ra, dec)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    image = galaxy_image(rng, "spiral", size).astype(np.float32).transpose(2, 0, 1)[:bands] / 255.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]
    wcs.wcs.cdelt = [-0.262 / 3600, 0.262 / 3600]
    fits.PrimaryHDU(image, header=wcs.to_header()).writeto(path, overwrite=True)
    return path


def write_sample(folder: str | Path, n: int = 24, seed: int = 0, size: int = 424) -> list[Path]:
    """Write ``n`` JPEG cutouts cycling through :data:`KINDS`, plus one 3-band FITS cutout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        path = folder / f"synthetic_{kind}_{i:04d}.jpg"
        Image.fromarray(galaxy_image(rng, kind, size)).save(path, quality=90)
        paths.append(path)
    paths.append(write_fits_cutout(folder / "synthetic_fits_0000.fits", rng))
    return paths
