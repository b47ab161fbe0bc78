"""Find input cutouts and decode them to pixel arrays.

Decoding failures raise :class:`~galaxy_infer.errors.InputError` with a reason a person can act
on; the pipeline turns those into ``error`` rows.
"""
from __future__ import annotations

import glob
import itertools
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from galaxy_infer.errors import InputError
from galaxy_infer.object_ids import assign_object_ids, drop_repeats, header_object_ids, id_collisions
from galaxy_infer.preprocess import Recipe

RASTER_SUFFIXES = (".jpg", ".jpeg", ".png")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")
MAX_PIXELS = 100_000_000
"""Images with more pixels are refused before decoding (decompression-bomb guard)."""


@dataclass(frozen=True)
class Decoded:
    """Pixels as decoded, plus the sky position a FITS WCS gives at the cutout centre."""

    pixels: np.ndarray
    ra: float | None = None
    dec: float | None = None


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
    """Decode one cutout, at reduced scale where the format allows it."""
    if not os.path.lexists(path):
        raise InputError("file not found")
    if not os.path.exists(path):
        raise InputError("broken symbolic link")
    if os.path.isdir(path):
        raise InputError("is a directory, not an image")
    if os.path.getsize(path) == 0:
        raise InputError("empty file (0 bytes)")
    if _suffix(path) in FITS_SUFFIXES:
        return read_fits(path)
    return Decoded(read_raster(path, recipe))


def read_raster(path: str, recipe: Recipe) -> np.ndarray:
    """JPEG/PNG -> ``(H, W, C)`` uint8 (or uint16 for 16-bit PNG)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(f"image over the {MAX_PIXELS // 1_000_000} megapixel limit: {w}x{h} pixels")
            if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
                im.draft(im.mode, recipe.decode_size(w, h))
            im.load()
            return _raster_array(im)
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


def _kind(path: str) -> str:
    return "PNG" if _suffix(path) == ".png" else "JPEG"


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


def read_fits(path: str) -> Decoded:
    """FITS (also ``.gz`` and tile-compressed ``.fz``) -> ``(bands, H, W)`` float32.

    Takes the primary HDU, or the first extension holding an image; astropy applies
    BSCALE/BZERO. Non-finite pixels are left for preprocessing to handle.
    """
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                hdu = next((h for h in hdul if h.is_image and _fits_shape(h.header)), None)
                if hdu is None:
                    raise InputError("FITS has no image data")
                shape = _fits_shape(hdu.header)
                if math.prod(shape) > MAX_PIXELS:
                    raise InputError(f"FITS image over the {MAX_PIXELS // 1_000_000} megapixel limit: "
                                     f"its header gives {'x'.join(map(str, shape))} pixels")
                data = np.asarray(hdu.data, dtype=np.float32)
                header = hdu.header
    except InputError:
        raise
    except (OSError, ValueError, TypeError, EOFError, IndexError, zlib.error) as exc:
        raise InputError(f"corrupt or truncated FITS: {exc}") from None
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


def discover(inputs: list[str], id_keyword: str | None = None) -> list[dict]:
    """Expand directories (recursively), globs and manifests into input records with unique object ids.

    A record has ``source_path``, ``object_id``, ``ra``, ``dec``, and ``error`` where a reason is
    known before decoding (an id collision, a file name that is not UTF-8). Ids follow
    :mod:`galaxy_infer.object_ids`. Files named by a manifest are kept even when missing, so they
    become ``file not found`` rows; an input argument that does not exist raises FileNotFoundError.
    """
    records, _ = drop_repeats(find_inputs(inputs))
    if id_keyword:
        header_object_ids(records, id_keyword)
    assign_object_ids(records)
    for i, reason in id_collisions(records).items():
        records[i]["error"] = records[i]["error"] or reason
    return [{k: r[k] for k in RECORD_KEYS if k != "error" or r["error"]} for r in records]


RECORD_KEYS = ("source_path", "object_id", "ra", "dec", "error")


def find_inputs(inputs: list[str]) -> list[dict]:
    """Records for every cutout the inputs name, with ``object_id`` only where a manifest gives one.

    Each record also carries ``relative_path``, its path below its input root (see
    :func:`galaxy_infer.object_ids.assign_object_ids`).
    """
    records: list[dict] = []
    for item in inputs:
        if _is_manifest(item):
            records.extend(read_manifest(item))
        elif os.path.isdir(item):
            for root, dirs, files in os.walk(item, followlinks=False):
                dirs.sort()
                below = os.path.relpath(root, item).replace(os.sep, "/")
                for name in sorted(files):
                    if is_cutout(name) and not name.startswith("."):
                        rel = name if below == "." else f"{below}/{name}"
                        records.append(_record(os.path.join(root, name), item, relative_path=rel))
        elif glob.has_magic(item):
            found = [p for p in sorted(glob.glob(item, recursive=True)) if is_cutout(p)]
            if not found:
                raise FileNotFoundError(f"no cutout matches {item}")
            records.extend(_record(p, _glob_root(item)) for p in found)
        elif not os.path.exists(item):
            raise FileNotFoundError(f"input {item} does not exist" if not os.path.lexists(item)
                                    else f"input {item} is a broken symbolic link")
        else:
            records.append(_record(item, os.path.dirname(item)))
    return records


def _glob_root(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    return os.sep.join(fixed) or ("/" if pattern.startswith(os.sep) else ".")


def _is_manifest(item: str) -> bool:
    return item.lower().endswith((".csv", ".parquet")) and os.path.isfile(item)


def _record(path: str, root: str, object_id: str | None = None, ra: float | None = None,
            dec: float | None = None, relative_path: str | None = None) -> dict:
    error = None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a file name, kept by Python as surrogates
        path = os.fsencode(path).decode("utf-8", "backslashreplace")
        error = "file name is not valid UTF-8: rename the file (the path shows the bad bytes as \\xNN)"
        relative_path = None
    rel = relative_path or (os.path.relpath(path, root or ".") if "://" not in path else path)
    rel = path if rel == ".." or rel.startswith(".." + os.sep) else rel.replace(os.sep, "/")
    return {"source_path": path, "object_id": object_id or None, "ra": ra, "dec": dec, "error": error,
            "relative_path": rel}


def read_manifest(path: str) -> list[dict]:
    """CSV or Parquet with a ``path`` column and optional ``object_id``, ``ra``, ``dec``.

    Relative paths are taken relative to the manifest's folder. Paths are read as bytes, so one that
    is not UTF-8 becomes an error row like such a file name in a folder.
    """
    import pyarrow as pa
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    try:
        if path.lower().endswith(".parquet"):
            table = pq.read_table(path)
        else:
            table = pv.read_csv(path, convert_options=pv.ConvertOptions(
                column_types={"path": pa.binary(), "object_id": pa.string()}, strings_can_be_null=True))
    except pa.ArrowInvalid as exc:
        raise ValueError(f"manifest {path}: {exc}") from None
    if "path" not in table.column_names:
        raise ValueError(f"manifest {path} has no 'path' column (columns: {', '.join(table.column_names)})")
    base = os.path.dirname(os.path.abspath(path))
    rows = table.to_pylist()
    out = []
    for row in rows:
        p = row["path"]
        if p is None or p == b"":
            continue
        p = os.fsdecode(p) if isinstance(p, bytes) else p
        full = p if os.path.isabs(p) or "://" in p else os.path.join(base, p)
        ra, dec = row.get("ra"), row.get("dec")
        out.append(_record(full, base, None if row.get("object_id") is None else str(row["object_id"]),
                           None if ra is None else float(ra), None if dec is None else float(dec)))
    return out
