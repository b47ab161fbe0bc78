"""Turn decoded pixels into the model's input tensor.

:func:`preprocess` is the one function that both training and inference call, parameterised by
a :class:`Recipe` stored inside every exported model. Changing what it does changes what every
model sees, so it is versioned through the recipe rather than edited in place.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from PIL import Image

from galaxy_infer.errors import ErrorKind, InputError
from galaxy_infer.limits import DEFAULT as DEFAULT_LIMITS
from galaxy_infer.limits import Limits


@dataclass(frozen=True)
class Recipe:
    """How a cutout becomes a ``(channels, size, size)`` float32 tensor.

    ``crop_fraction`` keeps the central part of the cutout (survey cutouts are framed wide);
    raster images are scaled to [0, 1]; FITS bands are clipped at percentiles and
    asinh-stretched, ``asinh_softening`` being the linear-to-log transition as a fraction of the
    clipped range. ``greyscale`` turns three bands into one luminance channel (ITU-R 601-2 weights,
    as PIL's ``convert("L")`` and torchvision's ``Grayscale``) for one-channel models.

    ``resampling`` says how the central part becomes ``input_size`` pixels: ``"crop-resize"``
    resizes the central box once (the bundled models); ``"zoobot"`` reproduces Zoobot's inference
    view (:func:`zoobot_view`: a ``1 / crop_fraction`` zoom at full resolution, then an
    antialiased resize and a centre crop), so a converted Zoobot model sees what Zoobot shows it.
    """

    input_size: int = 64
    channels: int = 3
    crop_fraction: float = 0.6
    stretch: str = "asinh"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    asinh_softening: float = 0.1
    version: str = "1"
    greyscale: bool = False
    resampling: str = "crop-resize"

    def __post_init__(self) -> None:
        if self.resampling not in RESAMPLINGS:
            raise ValueError(f"unknown resampling {self.resampling!r}: this galaxy-infer knows {RESAMPLINGS}")

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

    @property
    def limits(self) -> Limits:
        """The run's decoding limits (:mod:`galaxy_infer.limits`). Not a field: never compared, written into a
        model or a training config; it rides on the recipe because the recipe is what reaches every decoding task."""
        return self.__dict__.get("_limits", DEFAULT_LIMITS)

    def with_limits(self, limits: Limits) -> Recipe:
        """This recipe carrying the run's ``limits`` (kept when the recipe is pickled to a Ray worker)."""
        copy = replace(self)
        object.__setattr__(copy, "_limits", limits)
        return copy

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest full-image size whose central crop still covers ``input_size`` pixels.

        JPEG decoders can scale by 1/2, 1/4 or 1/8 while decoding; asking for this size lets
        them do so. A 5% shortfall is accepted so a 424-pixel cutout decodes at 1/4 scale.
        Zoobot's view starts from the full-resolution image, so it decodes at full size.
        """
        if self.resampling == "zoobot":
            return width, height
        need = self.input_size / self.crop_fraction * 0.95
        scale = max(need / width, need / height)
        return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


RESAMPLINGS = ("crop-resize", "zoobot")
_LATER_FIELDS = {"greyscale": False, "resampling": "crop-resize"}

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _crop_box(width: int, height: int, fraction: float) -> tuple[float, float, float, float]:
    side = min(width, height) * fraction
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def _resize(plane: Image.Image, recipe: Recipe) -> Image.Image:
    if recipe.resampling == "zoobot":
        return zoobot_view(plane, recipe)
    box = _crop_box(plane.width, plane.height, recipe.crop_fraction)
    size = (recipe.input_size, recipe.input_size)
    return plane.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=None)


ZOOBOT_MAX_ASPECT = 16
"""Longest side over shortest that :func:`zoobot_view` takes: its resize of the whole image grows
with the aspect ratio (16 at 224 pixels is 2.4 MB of RGB)."""


def zoobot_view(image: Image.Image, recipe: Recipe) -> Image.Image:
    """Zoobot 2.9's inference view of a Pillow image, ``input_size`` pixels square.

    Step for step what ``galaxy_datasets.transforms.get_galaxy_transform(minimal_view_config())``
    (galaxy-datasets 0.0.25, torchvision 0.29) does to the Pillow image Zoobot's loader gives it:
    ``RandomAffine(degrees=0, scale=(z, z))`` zooms by ``z`` about ``(w/2, h/2)`` at full
    resolution (Pillow's bilinear affine, zero fill), ``Resize(input_size)`` brings the shorter
    side to ``input_size`` (Pillow's bilinear resize, which is antialiased: its filter widens when
    shrinking), ``CenterCrop`` cuts the square. torchvision hands Pillow images to these same Pillow
    calls, so for 8-bit cutouts this is bit-identical to Zoobot without importing torch. ``z`` is
    ``1 / crop_fraction`` rounded to float32 because torch samples the scale into a float32 tensor.
    Resizing only the central box instead would bound the work but is not bit-identical (Pillow's
    filter positions then differ in the last bits), so very elongated images are refused instead.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long > ZOOBOT_MAX_ASPECT * short:
        raise InputError(f"image is {width}x{height} pixels: the zoobot resampling resizes the whole image, so it "
                         f"takes aspect ratios up to {ZOOBOT_MAX_ASPECT}; cut a squarer cutout",
                         kind=ErrorKind.UNSUPPORTED)
    inverse = 1.0 / float(np.float32(1.0 / recipe.crop_fraction))
    cx, cy = width * 0.5, height * 0.5
    zoomed = image.transform((width, height), Image.Transform.AFFINE,
                             (inverse, 0.0, cx - cx * inverse, 0.0, inverse, cy - cy * inverse),
                             Image.Resampling.BILINEAR, fillcolor=0)
    size = recipe.input_size
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    resized = zoomed if new_size == zoomed.size else zoomed.resize(new_size, Image.Resampling.BILINEAR)
    left, top = int(round((new_size[0] - size) / 2.0)), int(round((new_size[1] - size) / 2.0))
    return resized.crop((left, top, left + size, top + size))


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
    if recipe.resampling == "zoobot" and pixels.dtype == np.uint8 and pixels.shape[2] in (1, 3):
        return _zoobot_uint8(pixels, recipe)
    scale = 1.0 / float(np.iinfo(pixels.dtype).max)
    planes = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    resized = [np.asarray(_resize(Image.fromarray(planes[:, :, c].astype(np.float32), "F"), recipe))
               for c in range(planes.shape[2])]
    return _to_channels(np.stack(resized) * np.float32(scale), recipe)


def _zoobot_uint8(pixels: np.ndarray, recipe: Recipe) -> np.ndarray:
    """8-bit grey or RGB through Zoobot's view as 8-bit Pillow images, as Zoobot resamples them
    (rounded to 8 bits after each step); a greyscale recipe takes the luminance first, as Zoobot's
    ``Grayscale`` comes before its geometry."""
    image = Image.fromarray(pixels[:, :, 0], "L") if pixels.shape[2] == 1 else Image.fromarray(pixels, "RGB")
    if recipe.greyscale and image.mode == "RGB":
        image = image.convert("L")
    view = np.asarray(zoobot_view(image, recipe)).reshape(recipe.input_size, recipe.input_size, -1)
    return _to_channels(view.transpose(2, 0, 1) * _UINT8_SCALE, recipe)


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
