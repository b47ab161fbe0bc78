"""Find input cutouts and decode them to pixel arrays.

Decoding failures raise :class:`~galaxy_infer.errors.InputError` with a reason a person can act
on; the pipeline turns those into ``error`` rows.
"""
from __future__ import annotations

import gzip
import io
import itertools
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFile, UnidentifiedImageError

from galaxy_infer import shards, storage
from galaxy_infer.errors import ErrorKind, InputError
from galaxy_infer.object_ids import assign_object_ids, drop_repeats, header_object_ids, id_collisions
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
                raise InputError(f"image over the {MAX_PIXELS // 1_000_000} megapixel limit: {w}x{h} pixels",
                                 kind=ErrorKind.TOO_LARGE)
            if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
                im.draft(im.mode, recipe.decode_size(w, h))
            im.load()
        return im if im.mode == "RGB" else _raster_array(im)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large: {exc}", kind=ErrorKind.TOO_LARGE) from None
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
    raise InputError(f"unsupported image mode {im.mode}", kind=ErrorKind.UNSUPPORTED)


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
                         f"its header gives {'x'.join(map(str, shape))} pixels", kind=ErrorKind.TOO_LARGE)
    data, header = hdu.data, hdu.header
    if data is None or not data.size:
        raise InputError("FITS HDU has no image data")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    elif data.ndim != 3:
        raise InputError(f"FITS image is {data.ndim}-D; expected 2-D (y, x) or 3-D (bands, y, x)",
                         kind=ErrorKind.UNSUPPORTED)
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


RECORD_SCHEMA = pa.schema([
    ("object_id", pa.string()), ("source_path", pa.string()), ("ra", pa.float64()), ("dec", pa.float64()),
    ("shard", pa.string()), ("shard_layout", pa.string()), ("shard_pos", pa.int64()), ("error", pa.string()),
    ("error_kind", pa.string())])
"""One input cutout. ``shard*`` locate a cutout inside a shard (see :mod:`galaxy_infer.shards`);
``error`` is set when discovery already knows the cutout becomes an error row (an unopenable
shard, an object id collision, a file name that is not UTF-8), with its ``error_kind`` where that
is not ``corrupt``."""


def discover(inputs: list[str], fields: shards.ShardFields | None = None, id_keyword: str | None = None) -> list[dict]:
    """Expand folders/prefixes (recursively), globs, manifests and shards, local or in an object store,
    into records with unique object ids.

    A record has ``source_path`` (a local path or a URI), ``object_id`` (see
    :mod:`galaxy_infer.object_ids`), ``ra`` and ``dec``, plus the shard columns of
    :data:`RECORD_SCHEMA` for cutouts inside shards and ``error`` where a reason is already
    known. Files named by a manifest are kept even when missing, so they become ``file not
    found`` rows; an input argument that does not exist raises FileNotFoundError. Hidden files
    (leading ``.``) are skipped when listing. ``fields`` names the image/id/ra/dec fields of
    shards whose layout is ambiguous.
    """
    records, _ = drop_repeats(find_inputs(inputs, fields))
    if id_keyword:
        header_object_ids(records, id_keyword)
    assign_object_ids(records)
    for i, reason in id_collisions(records).items():
        if not records[i]["error"]:
            records[i]["error"], records[i]["error_kind"] = reason, ErrorKind.ID_COLLISION.value
    return [{k: r.get(k) for k in RECORD_SCHEMA.names if k in RECORD_KEYS or r.get(k) is not None} for r in records]


RECORD_KEYS = ("object_id", "source_path", "ra", "dec")
"""Keys every record has; the shard columns and ``error`` are there only when set."""


def find_inputs(inputs: list[str], fields: shards.ShardFields | None = None) -> list[dict]:
    """Records for every cutout the inputs name, with ``object_id`` only where a manifest or a shard gives one.

    Each record also carries ``relative_path``, its path below its input root, and shard rows
    without an id of their own their fallback id as ``stem`` (see
    :func:`galaxy_infer.object_ids.assign_object_ids`).
    """
    records: list[dict] = []
    for item in inputs:
        storage.check_reachable(item)
        if _is_manifest(item) and not shards.is_parquet_shard(item):
            records.extend(read_manifest(item, fields))
        elif storage.is_dir(item):
            for p in storage.list_uris(item):
                if (is_cutout(p) or shards.is_shard_name(p)) and not os.path.basename(p).startswith("."):
                    records.extend(_expand(p, item, fields, in_folder=True))
        elif storage.has_magic(item):
            found = [p for p in storage.glob(item) if is_cutout(p) or shards.is_shard_name(p)]
            if not found:
                raise FileNotFoundError(f"no cutout matches {item}")
            root = _glob_root(item)
            for p in found:
                records.extend(_expand(p, root, fields, in_folder=True))
        elif not storage.exists(item):
            raise FileNotFoundError(f"input {item} is a broken symbolic link"
                                    if not storage.is_remote(item) and os.path.lexists(item)
                                    else f"input {item} does not exist")
        else:
            records.extend(_expand(item, storage.parent_and_name(item)[0], fields))
    return records


def _expand(path: str, root: str, fields: shards.ShardFields | None, in_folder: bool = False) -> list[dict]:
    """A shard's cutouts, or the file itself. In folders, Parquet files without an image column
    (catalogs, manifests) are not inputs."""
    record = _record(path, root)
    if record["error"]:
        return [record]
    if in_folder and path.lower().endswith(".parquet") and not shards.is_parquet_shard(path):
        return []
    found = shards.shard_records(path, fields)
    return [_shard_row(r, record["relative_path"]) for r in found] if found else [record]


def _shard_row(record: dict, shard_relative_path: str) -> dict:
    """A shard's record made ready for the id rule.

    Ids the shard holds (its id column, a WebDataset JSON id) are given ids, like a manifest's. Its
    fallback ids (``<shard name>#<row>``, the tar key, the HDU's EXTNAME) are like file stems:
    kept when unique in the run, else replaced by ``<shard path below the input root>#<row>``.
    """
    given = record.pop("id_given", False)
    label = record["source_path"][len(record["shard"]):]
    return {**record, "object_id": record["object_id"] if given else None,
            "stem": None if given else record["object_id"], "relative_path": shard_relative_path + label}


def records_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def _glob_root(pattern: str) -> str:
    """The folder a glob's fixed leading part names (its matches' ids are relative to it)."""
    sep = "/" if storage.is_remote(pattern) else os.sep
    fixed = list(itertools.takewhile(lambda part: not storage.has_magic(part), pattern.split(sep)))
    return sep.join(fixed) or (sep if pattern.startswith(sep) else ".")


def _relative(path: str, root: str) -> str:
    """``path`` below ``root``, ``/``-separated; the path as given when it is not below ``root``."""
    remote = storage.is_remote(path)
    sep = "/" if remote else os.sep
    prefix = root.rstrip(sep) + sep if root else ""
    if prefix and path.startswith(prefix):
        return path[len(prefix):].replace(os.sep, "/")
    if remote:
        return path
    rel = os.path.relpath(path, root or ".")
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel.replace(os.sep, "/")


def _is_manifest(item: str) -> bool:
    return item.lower().endswith((".csv", ".parquet")) and storage.is_file(item)


def _record(path: str, root: str, object_id: str | None = None, ra: float | None = None,
            dec: float | None = None) -> dict:
    error = None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of a file name, kept by Python as surrogates
        path = os.fsencode(path).decode("utf-8", "backslashreplace")
        error = "file name is not valid UTF-8: rename the file (the path shows the bad bytes as \\xNN)"
    return {"source_path": path, "object_id": object_id or None, "ra": ra, "dec": dec, "error": error,
            "error_kind": ErrorKind.UNSUPPORTED.value if error else None,
            "relative_path": _relative(path, root)}


def read_manifest(path: str, fields: shards.ShardFields | None = None) -> list[dict]:
    """CSV or Parquet (local or in an object store) with a ``path`` column and optional ``object_id``, ``ra``, ``dec``.

    Relative paths are taken relative to the manifest's folder (its prefix, for a manifest in an
    object store); a ``path`` that is a URI is used as is. A path naming a shard stands for all
    its cutouts (their ids and positions come from the shard). Paths are read as bytes, so one
    that is not UTF-8 becomes an error row like such a file name in a folder.
    """
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    try:
        with storage.open_input(path) as f:
            if path.lower().endswith(".parquet"):
                table = pq.read_table(f)
            else:
                table = pv.read_csv(f, convert_options=pv.ConvertOptions(
                    column_types={"path": pa.binary(), "object_id": pa.string()}, strings_can_be_null=True))
    except pa.ArrowInvalid as exc:
        raise ValueError(f"manifest {path}: {exc}") from None
    if "path" not in table.column_names:
        raise ValueError(f"manifest {path} has no 'path' column, nor is it a shard with an image-bytes column "
                         f"(columns: {', '.join(table.column_names)})")
    base = storage.parent_and_name(path)[0]
    rows = table.to_pylist()
    out = []
    for row in rows:
        p = row["path"]
        if p is None or p == b"":
            continue
        p = os.fsdecode(p) if isinstance(p, bytes) else p
        full = p if os.path.isabs(p) or "://" in p else storage.join(base, p)
        ra, dec = row.get("ra"), row.get("dec")
        record = _record(full, base, None if row.get("object_id") is None else str(row["object_id"]),
                         None if ra is None else float(ra), None if dec is None else float(dec))
        shard = None if record["error"] or not (shards.is_shard_name(full) or is_cutout(full)) else \
            shards.shard_records(full, fields)
        if shard is not None:
            out.extend(_shard_row(r, record["relative_path"]) for r in shard)
        else:
            out.append(record)
    return out

