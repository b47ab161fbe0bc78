"""Cutout formats: suffixes, file-name stems, and decoding each format to pixel arrays.

Finding inputs is :mod:`galaxy_infer.worklist`'s; this module is the layer below it.

Decoding failures raise :class:`~galaxy_infer.errors.InputError` with a reason a person can act
on; the pipeline turns those into ``error`` rows.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from galaxy_infer import storage
from galaxy_infer.errors import InputError
from galaxy_infer.preprocess import Recipe

RASTER_SUFFIXES = (".jpg", ".jpeg", ".png")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")
GZIP_MAGIC = b"\x1f\x8b"
MAX_PIXELS = 100_000_000
"""Images with more pixels are refused before decoding (decompression-bomb guard)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded cutout, plus the sky position a FITS WCS gives at the cutout centre.

    ``image`` is what :func:`~galaxy_infer.preprocess.preprocess` takes: an 8-bit RGB raster stays
    the Pillow image it was decoded to, so that preprocessing resizes it without copying it into
    NumPy and back (two copies, measured at about a tenth of a cutout's decode time); anything
    else is its array. ``pixels`` is always the array.
    """

    image: np.ndarray | Image.Image
    ra: float | None = None
    dec: float | None = None

    @cached_property
    def pixels(self) -> np.ndarray:
        return self.image if isinstance(self.image, np.ndarray) else _raster_array(self.image)


def _suffix(path: str) -> str:
    name = path.lower()
    for s in FITS_SUFFIXES + RASTER_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(name).suffix


def object_id_from_path(path: str) -> str:
    """The file name without its extension(s): ``a/b/J1234.fits.gz`` -> ``J1234``."""
    name = os.path.basename(path)
    suffix = _suffix(path)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def is_cutout(path: str) -> bool:
    return _suffix(path) in RASTER_SUFFIXES + FITS_SUFFIXES


def read_cutout(path: str, recipe: Recipe) -> Decoded:
    """Fetch one cutout (local path or URI) and decode it, at reduced scale where the format allows it."""
    return decode_cutout(storage.read_bytes(path), path, recipe)


def decode_cutout(data: bytes, path: str, recipe: Recipe) -> Decoded:
    """Decode a cutout's bytes, in memory; ``path`` names the format (by suffix) and the file in reasons."""
    if _suffix(path) in FITS_SUFFIXES:
        return read_fits(data)
    return Decoded(_decode_raster(data, path, recipe))


def read_raster(data: bytes, path: str, recipe: Recipe) -> np.ndarray:
    """JPEG/PNG bytes -> ``(H, W, C)`` uint8 (or uint16 for 16-bit PNG)."""
    image = _decode_raster(data, path, recipe)
    return image if isinstance(image, np.ndarray) else _raster_array(image)


def _decode_raster(data: bytes, path: str, recipe: Recipe) -> Image.Image | np.ndarray:
    """JPEG/PNG bytes -> the loaded Pillow image when it is 8-bit RGB, else :func:`read_raster`'s array."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"image over the {MAX_PIXELS // 1_000_000} megapixel limit: {w}x{h} pixels")
            if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
                im.draft(im.mode, recipe.decode_size(w, h))
            im.load()
        return im if im.mode == "RGB" else _raster_array(im)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large: {exc}") from None
    except OSError as exc:
        message = str(exc)
        if "truncated" in message or "broken data stream" in message or "premature end" in message.lower():
            raise InputError(f"truncated {_kind(path)}") from None
        raise InputError(f"corrupt {_kind(path)}: {message}") from None
    except (SyntaxError, ValueError, zlib.error) as exc:
        raise InputError(f"corrupt {_kind(path)}: {exc}") from None


def _kind(path) -> str:
    return "PNG" if _suffix(str(getattr(path, "name", path))) == ".png" else "JPEG"


def _raster_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(im)
        return np.clip(data, 0, 65535).astype(np.uint16)[:, :, None]
    if im.mode in ("L", "RGB"):
        return np.asarray(im)[:, :, None] if im.mode == "L" else np.asarray(im)
    if im.mode in ("LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "1", "F", "I;16S"):
        if im.mode in ("LA", "1"):
            return np.asarray(im.convert("L"))[:, :, None]
        return np.asarray(im.convert("RGB"))
    raise InputError(f"unsupported image mode {im.mode}")


def read_fits(data: bytes) -> Decoded:
    """FITS bytes (also gzipped and tile-compressed ``.fz``) -> ``(bands, H, W)`` float32.

    Takes the primary HDU, or the first extension holding an image; astropy applies
    BSCALE/BZERO. Non-finite pixels are left for preprocessing to handle.
    """
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == GZIP_MAGIC else io.BytesIO(data)
            with fits.open(source, memmap=False, lazy_load_hdus=True) as hdul:
                hdu = next((h for h in hdul if h.is_image and _fits_shape(h.header)), None)
                if hdu is None:
                    raise InputError("FITS has no image data")
                return decode_fits_hdu(hdu)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, EOFError, IndexError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"corrupt or truncated FITS: {exc}") from None


def decode_fits_hdu(hdu) -> Decoded:
    """One image HDU -> ``(bands, H, W)`` float32 with the WCS centre position.

    The pixel count its header claims is checked before the data is read (as rasters are), so a
    header claiming gigapixels costs nothing.
    """
    shape = _fits_shape(hdu.header)
    if math.prod(shape) > MAX_PIXELS:
        raise InputError(f"FITS image over the {MAX_PIXELS // 1_000_000} megapixel limit: "
                         f"its header gives {'x'.join(map(str, shape))} pixels")
    data, header = hdu.data, hdu.header
    if data is None or not data.size:
        raise InputError("FITS HDU has no image data")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    elif data.ndim != 3:
        raise InputError(f"FITS image is {data.ndim}-D; expected 2-D (y, x) or 3-D (bands, y, x)")
    if not np.isfinite(data).any():
        raise InputError("FITS image is all NaN/inf")
    ra, dec = _centre_radec(header, data.shape[-2:])
    return Decoded(data, ra, dec)


def _fits_shape(header) -> tuple[int, ...]:
    """``(NAXISn, ..., NAXIS1)`` from an image header, before any data is read; () when it holds no pixels."""
    shape = tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(int(header.get("NAXIS", 0)), 0, -1))
    return shape if shape and all(n > 0 for n in shape) else ()


def _centre_radec(header, shape: tuple[int, int]) -> tuple[float | None, float | None]:
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header).celestial
            if not wcs.has_celestial:
                return None, None
            ra, dec = wcs.all_pix2world([[(shape[1] - 1) / 2, (shape[0] - 1) / 2]], 0)[0]
    except Exception:  # noqa: BLE001 - a malformed WCS only loses the position, not the row
        return None, None
    if not (np.isfinite(ra) and np.isfinite(dec)):
        return None, None
    return float(ra), float(dec)


ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
