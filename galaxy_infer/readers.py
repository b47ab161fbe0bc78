"""Cutout formats: suffixes, file-name stems, and decoding each format to pixel arrays.

Finding inputs is :mod:`galaxy_infer.worklist`'s; this module is the layer below it.

Decoding failures raise :class:`~galaxy_infer.errors.InputError` with a reason a person can act
on; the pipeline turns those into ``error`` rows.
"""
from __future__ import annotations

import io
import math
import re
import warnings
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from galaxy_infer import limits, storage
from galaxy_infer.errors import ErrorKind, InputError
from galaxy_infer.preprocess import Recipe

RASTER_SUFFIXES = (".jpg", ".jpeg", ".png")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")
GZIP_MAGIC = b"\x1f\x8b"
"""Pillow's own bomb guard; the run's limit (:mod:`galaxy_infer.limits`) is checked before it."""


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
            run = limits.active()
            Image.MAX_IMAGE_PIXELS = run.pixels  # Pillow's guard (2x this) stays behind ours
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            run.check_pixels((w, h), "image", claim="")
            run.check_cutout_bytes(w * h * len(im.getbands()) * RASTER_SAMPLE_BYTES.get(im.mode, 1), "image")
            if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
                im.draft(im.mode, recipe.decode_size(w, h))
            im.load()
        return im if im.mode == "RGB" else _raster_array(im)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("not a readable image (unknown or corrupt format)", kind=ErrorKind.CORRUPT) from None
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's own guard (twice our limit) spoke first
        count = f"{int(claimed.group(1)):,}" if claimed else "too many"
        raise limits.too_large(f"image over the {limits.active().pixels / 1e6:g} megapixel limit: its header gives "
                               f"{count} pixels", "--max-megapixels") from None
    except OSError as exc:
        message = str(exc)
        if "truncated" in message or "broken data stream" in message or "premature end" in message.lower():
            raise InputError(f"truncated {_kind(path)}", kind=ErrorKind.CORRUPT) from None
        raise InputError(f"corrupt {_kind(path)}: {message}", kind=ErrorKind.CORRUPT) from None
    except (SyntaxError, ValueError, zlib.error) as exc:
        raise InputError(f"corrupt {_kind(path)}: {exc}", kind=ErrorKind.CORRUPT) from None


RASTER_SAMPLE_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16S": 2}


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
    raise InputError(f"unsupported image mode {im.mode}", kind=ErrorKind.UNSUPPORTED)


def read_fits(data: bytes) -> Decoded:
    """FITS bytes (also gzipped and tile-compressed ``.fz``) -> ``(bands, H, W)`` float32.

    Takes the primary HDU, or the first extension holding an image; astropy applies
    BSCALE/BZERO. Non-finite pixels are left for preprocessing to handle. Every HDU's header
    is checked against the run's limits before its data is decompressed or read (see
    :func:`check_fits_headers`).
    """
    from astropy.io import fits

    try:
        if data[:2] == GZIP_MAGIC:
            try:
                data = limits.gunzip(data, "gzip-compressed FITS", inspect=FitsHeaderWalk())
            except InputError as exc:
                if exc.kind != ErrorKind.CORRUPT:
                    raise
                raise InputError(f"corrupt or truncated FITS: {exc}", kind=ErrorKind.CORRUPT) from None
        else:
            FitsHeaderWalk()(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdul:
                hdu = next((h for h in hdul if h.is_image and _fits_shape(h.header)), None)
                if hdu is None:
                    raise InputError("FITS has no image data", kind=ErrorKind.CORRUPT)
                return decode_fits_hdu(hdu)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, EOFError, IndexError, KeyError, zlib.error) as exc:
        raise InputError(f"corrupt or truncated FITS: {exc}", kind=ErrorKind.CORRUPT) from None


class FitsHeaderWalk:
    """Checks each HDU's header claims against the run's limits as FITS bytes arrive, before their data.

    Called with the bytes so far (the whole file, or a gzip stream's output after each step);
    an image HDU (``NAXISn``/``BITPIX``) or a tile-compressed one (``ZNAXISn``/``ZBITPIX``) that
    claims more than the limits raises ``too-large`` then, so a gzip bomb is refused after its
    first 2,880-byte header block. Returns where the FITS content ends once bytes follow the last
    HDU that do not start another (``XTENSION``): whatever follows is never inflated. Own code:
    astropy parses a header only once its bytes are all there, and decompresses a ``.fits.gz``
    whole before it looks at one.
    """

    def __init__(self) -> None:
        self.at = 0

    def __call__(self, data: bytes | bytearray) -> int | None:
        while True:
            if self.at and len(data) >= self.at + 8 and bytes(data[self.at:self.at + 8]) != b"XTENSION":
                return self.at
            cards, end = _header_cards(data, self.at)
            if cards is None:
                return None
            _check_hdu_claims(cards)
            self.at = end + -(-_data_bytes(cards) // 2880) * 2880


def _header_cards(data: bytes | bytearray, at: int) -> tuple[dict[str, str] | None, int]:
    """The ``KEY = value`` cards of the header starting at ``at`` and the offset after it (None until its END)."""
    cards: dict[str, str] = {}
    while at + 2880 <= len(data):
        block = bytes(data[at:at + 2880])
        at += 2880
        for k in range(0, 2880, 80):
            key = block[k:k + 8].decode("ascii", "replace").strip()
            if key == "END":
                return cards, at
            if block[k + 8:k + 10] == b"= ":
                cards.setdefault(key, block[k + 10:k + 80].decode("ascii", "replace"))
    return None, at


def card_value(text: str) -> str:
    """A FITS header card's value without quotes or comment."""
    text = text.strip()
    if text.startswith("'"):
        return text[1:].split("'", 1)[0].strip()
    return text.split("/", 1)[0].strip()


def _int_card(cards: dict[str, str], key: str, default: int = 0) -> int:
    if key not in cards:
        return default
    try:
        return int(card_value(cards[key]))
    except ValueError:
        raise InputError(f"FITS header keyword {key} is not an integer: {cards[key].strip()[:40]!r}",
                         kind=ErrorKind.CORRUPT) from None


def _axes(cards: dict[str, str], prefix: str) -> tuple[int, ...]:
    """``(<prefix>n, ..., <prefix>1)`` as :func:`_fits_shape` orders them."""
    return tuple(_int_card(cards, f"{prefix}{i}") for i in range(_int_card(cards, prefix), 0, -1))


def _data_bytes(cards: dict[str, str]) -> int:
    """Bytes of an HDU's data area, as the FITS standard computes it from the header."""
    dims = _axes(cards, "NAXIS")
    return (abs(_int_card(cards, "BITPIX", 8)) // 8 * _int_card(cards, "GCOUNT", 1)
            * (_int_card(cards, "PCOUNT") + (math.prod(dims) if dims else 0)))


def _check_hdu_claims(cards: dict[str, str]) -> None:
    run = limits.active()
    if card_value(cards.get("ZIMAGE", "F")).upper() == "T":
        dims = _axes(cards, "ZNAXIS")
        if dims:
            run.check_image(dims, abs(_int_card(cards, "ZBITPIX", 8)) // 8, "tile-compressed FITS image")
        return
    dims = _axes(cards, "NAXIS")
    extension = card_value(cards.get("XTENSION", "'IMAGE'")).upper()
    if extension == "IMAGE" and dims and all(n > 0 for n in dims):
        run.check_image(dims, abs(_int_card(cards, "BITPIX", 8)) // 8, "FITS image")


def decode_fits_hdu(hdu) -> Decoded:
    """One image HDU -> ``(bands, H, W)`` float32 with the WCS centre position.

    The pixel count and decoded size its header claims are checked before the data is read (as
    rasters are), so a header claiming gigapixels costs nothing.
    """
    shape = _fits_shape(hdu.header)
    limits.active().check_image(shape, abs(int(hdu.header.get("BITPIX", 8))) // 8, "FITS image")
    data, header = hdu.data, hdu.header
    if data is None or not data.size:
        raise InputError("FITS HDU has no image data", kind=ErrorKind.CORRUPT)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    elif data.ndim != 3:
        raise InputError(f"FITS image is {data.ndim}-D; expected 2-D (y, x) or 3-D (bands, y, x)",
                         kind=ErrorKind.UNSUPPORTED)
    if not np.isfinite(data).any():
        raise InputError("FITS image is all NaN/inf", kind=ErrorKind.CORRUPT)
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
Image.MAX_IMAGE_PIXELS = limits.DEFAULT.pixels  # each decode sets the run's own
