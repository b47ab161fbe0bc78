"""Turn decoded pixels into the model's input tensor.

:func:`preprocess` is the one function that both training and inference call, parameterised by
a :class:`Recipe` stored inside every exported model. Changing what it does changes what every
model sees, so it is versioned through the recipe rather than edited in place.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image

from galaxy_infer.errors import ErrorKind, InputError


@dataclass(frozen=True)
class Recipe:
    """How a cutout becomes a ``(channels, size, size)`` float32 tensor.

    ``crop_fraction`` keeps the central part of the cutout (survey cutouts are framed wide);
    raster images are scaled to [0, 1]; FITS bands are clipped at percentiles and
    asinh-stretched, ``asinh_softening`` being the linear-to-log transition as a fraction of the
    clipped range. ``greyscale`` turns three bands into one luminance channel (ITU-R 601-2 weights,
    as PIL's ``convert("L")`` and torchvision's ``Grayscale``) for one-channel models.
    """

    input_size: int = 64
    channels: int = 3
    crop_fraction: float = 0.6
    stretch: str = "asinh"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    asinh_softening: float = 0.1
    version: str = "1"
    greyscale: bool = False

    def to_json(self) -> str:
        """Fields added after version 1 are written only when set, so older recipes keep their JSON."""
        data = {k: v for k, v in asdict(self).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing recipe fields: {sorted(unknown)}")
        values = dict(data)
        if "clip_percentiles" in values:
            values["clip_percentiles"] = tuple(values["clip_percentiles"])
        return cls(**values)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest full-image size whose central crop still covers ``input_size`` pixels.

        JPEG decoders can scale by 1/2, 1/4 or 1/8 while decoding; asking for this size lets
        them do so. A 5% shortfall is accepted so a 424-pixel cutout decodes at 1/4 scale.
        """
        need = self.input_size / self.crop_fraction * 0.95
        scale = max(need / width, need / height)
        return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


_LATER_FIELDS = {"greyscale": False}

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _crop_box(width: int, height: int, fraction: float) -> tuple[float, float, float, float]:
    side = min(width, height) * fraction
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def _resize(plane: Image.Image, recipe: Recipe) -> Image.Image:
    box = _crop_box(plane.width, plane.height, recipe.crop_fraction)
    size = (recipe.input_size, recipe.input_size)
    return plane.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=None)


_UINT8_SCALE = np.float32(1.0 / 255.0)


def preprocess_rgb(image: Image.Image, recipe: Recipe, out: np.ndarray | None = None) -> np.ndarray:
    """8-bit RGB Pillow image -> ``(3, size, size)`` float32 in [0, 1], written into ``out`` if given.

    The common case, kept to one resize, one copy out of Pillow and one scaling pass into
    ``out``. Pillow's line-interleaved raw mode ``RGB;L`` hands the rows over as (row, channel,
    column), so the channel-first result is a cheap row-wise transpose (measured in instructions:
    a quarter less than ``np.asarray`` then a pixel-wise transpose).
    """
    size = recipe.input_size
    rows = np.frombuffer(_resize(image, recipe).tobytes("raw", "RGB;L"), np.uint8).reshape(size, 3, size)
    if out is None:
        out = np.empty((3, size, size), np.float32)
    return np.multiply(rows.transpose(1, 0, 2), _UINT8_SCALE, out=out, dtype=np.float32)


def preprocess_raster(pixels: np.ndarray, recipe: Recipe) -> np.ndarray:
    """``(H, W, C)`` uint8 or uint16 image -> ``(channels, size, size)`` float32 in [0, 1]."""
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and recipe.channels == 3:
        return preprocess_rgb(Image.fromarray(pixels, "RGB"), recipe)
    scale = 1.0 / float(np.iinfo(pixels.dtype).max)
    planes = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    resized = [np.asarray(_resize(Image.fromarray(planes[:, :, c].astype(np.float32), "F"), recipe))
               for c in range(planes.shape[2])]
    return _to_channels(np.stack(resized) * np.float32(scale), recipe)


def asinh_stretch(band: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Clip one band at the recipe's percentiles and asinh-stretch it to [0, 1]."""
    lo, hi = np.percentile(band, recipe.clip_percentiles)
    if not hi > lo:
        return np.zeros_like(band, dtype=np.float32)
    x = (np.clip(band, lo, hi) - lo) / (hi - lo)
    a = recipe.asinh_softening
    return (np.arcsinh(x / a) / np.arcsinh(1.0 / a)).astype(np.float32)


def preprocess_bands(bands: np.ndarray, recipe: Recipe) -> np.ndarray:
    """``(B, H, W)`` float FITS bands -> ``(channels, size, size)`` float32 in [0, 1].

    Non-finite pixels take the band's median so that masked regions do not dominate the stretch.
    """
    out = []
    for i, band in enumerate(bands.astype(np.float32, copy=False)):
        finite = np.isfinite(band)
        if not finite.any():
            raise InputError(f"FITS band {i} has no finite pixels")
        if not finite.all():
            band = np.where(finite, band, np.median(band[finite]))
        stretched = asinh_stretch(band, recipe)
        out.append(np.asarray(_resize(Image.fromarray(stretched, "F"), recipe)))
    return _to_channels(np.stack(out), recipe)


def _to_channels(planes: np.ndarray, recipe: Recipe) -> np.ndarray:
    n = planes.shape[0]
    if recipe.greyscale and n == 3 and recipe.channels == 1:
        return np.ascontiguousarray(np.tensordot(LUMA, planes, axes=1)[None], dtype=np.float32)
    if n == recipe.channels:
        return np.ascontiguousarray(planes, dtype=np.float32)
    if n == 1:
        return np.ascontiguousarray(np.repeat(planes, recipe.channels, axis=0), dtype=np.float32)
    raise InputError(f"image has {n} bands; the model takes {recipe.channels} (or 1, repeated)",
                     kind=ErrorKind.UNSUPPORTED)


def preprocess(pixels: np.ndarray | Image.Image, recipe: Recipe, out: np.ndarray | None = None) -> np.ndarray:
    """Decoded pixels -> model input, written into ``out`` (a slot of a batch) when given.

    Integer arrays are raster ``(H, W[, C])``, floats FITS ``(B, H, W)``; a Pillow image (an
    8-bit RGB raster as the reader decoded it) gives exactly what its array gives.
    """
    if isinstance(pixels, Image.Image):
        if pixels.mode == "RGB" and recipe.channels == 3:
            return preprocess_rgb(pixels, recipe, out)
        pixels = np.asarray(pixels)
    if np.issubdtype(pixels.dtype, np.integer):
        result = preprocess_raster(pixels if pixels.ndim == 3 else pixels[:, :, None], recipe)
    else:
        result = preprocess_bands(pixels, recipe)
    if out is None:
        return result
    out[...] = result
    return out
