"""Shards: many cutouts in one file (HDF5, Parquet with image bytes, WebDataset tar, NumPy, multi-HDU FITS).

Discovery expands a shard into one record per cutout without touching pixel data: the record
names the shard (``shard``), how to read it (``shard_layout``, JSON) and where the cutout sits in
it (``shard_pos``: the row of an HDF5/NumPy stack or a Parquet file, the HDU of a FITS file, the
header offset of a tar member). Tasks then read only their rows: HDF5 hyperslabs, the Parquet row
groups that hold them, the tar members at those offsets. :func:`read_units` turns a batch of
records, single files and shard rows alike, into decoded pixels, so the pipeline has no per-layout
code.

``source_path`` of a shard row is ``<shard path>#<row>`` (``#<HDU index>`` for FITS, ``#<key>``
for tar); ``object_id`` comes from the shard's id column (``object_id``, ``id_str``, ``iauname``,
``dr8_id`` or the one named by the user), the tar key or the HDU's EXTNAME, else
``<shard file name>#<row>``.

Readers take a *source*: an open binary file (a pyarrow ``NativeFile``) or bytes. Shards are
opened through :func:`galaxy_infer.storage.open_input`, local and object store alike, and a
failed open or read is split by :func:`galaxy_infer.storage.read_error`: a shard that cannot be
read *now* (permission, I/O, a store's 503 or reset) gives ``unreadable-now`` rows, which the
nightly ingest does not hold and tries again; a shard whose bytes are bad gives error rows.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import os
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Union

import numpy as np

from galaxy_infer import limits, readers, storage
from galaxy_infer.errors import ErrorKind, InputError, TransientInputError
from galaxy_infer.preprocess import Recipe

Source = Union[BinaryIO, bytes]

HDF5_SUFFIXES = (".h5", ".hdf5")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
NUMPY_SUFFIXES = (".npy", ".npz")
PARQUET_SUFFIXES = (".parquet",)
MEF_SUFFIXES = (".fits", ".fit", ".fts")
SHARD_SUFFIXES = HDF5_SUFFIXES + TAR_SUFFIXES + NUMPY_SUFFIXES + PARQUET_SUFFIXES
ID_FIELDS = ("object_id", "id_str", "iauname", "dr8_id")
IMAGE_FIELDS = ("images", "image", "cutouts", "stamps", "pixels", "imgs", "jpg", "png")
RA_FIELDS = ("ra",)
DEC_FIELDS = ("dec",)
TAR_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".fits", ".fit", ".fits.gz")
MAX_BANDS = 16
READ_ROWS = 64
"""Rows read per HDF5 hyperslab or NumPy slice: bounds a task's memory at 256 px and above."""
READ_BYTES = 16 << 20
"""Bytes read per HDF5 hyperslab or NumPy slice at most (fewer rows of large stamps, down to one)."""
JSON_BYTES = 1 << 20
"""Largest WebDataset ``.json`` member read for ids and positions."""


@dataclass(frozen=True)
class ShardFields:
    """Field names the user gives when a shard's layout is ambiguous (None: detect)."""

    image: str | None = None
    id: str | None = None
    ra: str | None = None
    dec: str | None = None


@dataclass(frozen=True)
class Layout:
    """What a task needs to read a shard: its kind and, for HDF5/Parquet/npz, the image field."""

    kind: str
    image: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Layout:
        return cls(**json.loads(text))


def _lower(path: str) -> str:
    return os.path.basename(os.fspath(path)).lower()


def is_shard_name(path: str) -> bool:
    """Whether the name alone makes a file a shard (FITS files are shards only with several image HDUs)."""
    return _lower(path).endswith(SHARD_SUFFIXES)


@contextmanager
def _opened(path: str, source: Source | None) -> Iterator[Source]:
    """``source``, or else the shard at ``path`` opened through storage and closed after."""
    if source is not None:
        yield source
        return
    with storage.open_input(path) as opened:
        yield opened


@contextmanager
def _binary(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    else:
        source.seek(0)
        yield source


def _read_failure(exc: OSError, reason: str) -> InputError:
    """Storage's split of a failed open or read (missing, unreadable now), else ``reason``: the bytes are bad."""
    return storage.read_error(exc) or InputError(reason[:300])


def shard_records(path: str, fields: ShardFields | None = None, source: Source | None = None) -> list[dict] | None:
    """One record per cutout of the shard at ``path``, or None when ``path`` is not a shard.

    ``source`` is the shard's content when it is not a local path (an open file, bytes). A shard
    that cannot be opened gives one record carrying the reason in ``error``.
    """
    fields = fields or ShardFields()
    name = _lower(path)
    if name.endswith(MEF_SUFFIXES):
        try:
            with _opened(path, source) as src:
                hdus = _fits_image_hdus_or_none(src)
        except OSError:  # missing or unreadable: the reader gives the row its reason
            return None
        return None if hdus is None or len(hdus) < 2 else _fits_records(path, hdus)
    if not name.endswith(SHARD_SUFFIXES):
        return None
    try:
        with _opened(path, source) as src:
            return _lister(name)(path, src, fields)
    except InputError as exc:
        return [_shard_error(path, exc)]
    except (OSError, ValueError, KeyError, EOFError, tarfile.TarError, zipfile.BadZipFile) as exc:
        now = storage.read_error(exc) if isinstance(exc, OSError) else None
        if isinstance(now, TransientInputError):  # not bad bytes: its row is not held, the next night lists it again
            return [_shard_error(path, now)]
        return [_shard_error(path, InputError(f"cannot open {_kind_name(name)} shard: {type(exc).__name__}: {exc}"[:300]))]


class FieldError(InputError):
    """A shard's layout is ambiguous or a named field is missing: the user must name the field."""


def is_parquet_shard(path: str) -> bool:
    """A Parquet file with an image-bytes column (else it is a manifest or a catalog)."""
    import pyarrow.parquet as pq

    try:
        filesystem, where = storage.resolve(path)
        schema = pq.read_schema(where, filesystem=filesystem)
    except (OSError, ValueError):
        return False
    return bool(_image_columns(schema))


def _kind_name(name: str) -> str:
    for suffixes, kind in ((HDF5_SUFFIXES, "HDF5"), (TAR_SUFFIXES, "tar"), (NUMPY_SUFFIXES, "NumPy"),
                           (PARQUET_SUFFIXES, "Parquet")):
        if name.endswith(suffixes):
            return kind
    return "FITS"


def _lister(name: str) -> Callable[[str, Source, ShardFields], list[dict]]:
    if name.endswith(HDF5_SUFFIXES):
        return _hdf5_records
    if name.endswith(TAR_SUFFIXES):
        return _tar_records
    if name.endswith(".npy"):
        return _npy_records
    if name.endswith(".npz"):
        return _npz_records
    return _parquet_records


def _shard_error(path: str, error: InputError) -> dict:
    return {"source_path": path, "object_id": os.path.basename(path), "ra": None, "dec": None,
            "shard": path, "shard_layout": None, "shard_pos": None, "error": str(error), "error_kind": error.kind.value}


def _records(path: str, layout: Layout, positions: list[int], labels: list[str], ids: list | None,
             ra: list | None, dec: list | None, fallback_ids: list[str] | None = None) -> list[dict]:
    """Records of one shard; ``labels`` name each cutout inside it (row, HDU or key).

    ``id_given`` says the id is one the shard holds; otherwise it is ``fallback_ids`` (a tar key,
    an EXTNAME) or ``<shard file name>#<label>``, which the run's id rule may lengthen.
    """
    base = os.path.basename(path)
    text = layout.to_json()
    out = []
    for i, (pos, label) in enumerate(zip(positions, labels)):
        oid = None if ids is None else _id_text(ids[i])
        fallback = fallback_ids[i] if fallback_ids else f"{base}#{label}"
        out.append({"source_path": f"{path}#{label}", "object_id": oid or fallback, "id_given": oid is not None,
                    "ra": _float(ra, i), "dec": _float(dec, i), "shard": path, "shard_layout": text,
                    "shard_pos": pos, "error": None, "error_kind": None})
    return out


def _id_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _float(values: list | None, i: int) -> float | None:
    if values is None or values[i] is None:
        return None
    v = float(values[i])
    return v if math.isfinite(v) else None


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str) -> str | None:
    """The field the user named, else the first candidate present (case-insensitive), else None."""
    if wanted is not None:
        if wanted not in names:
            raise FieldError(f"no {what} field {wanted!r}; the shard has {', '.join(names) or 'nothing'}")
        return wanted
    lowered = {n.lower().rsplit("/", 1)[-1]: n for n in names}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _choose_image(found: list[str], wanted: str | None, all_names: list[str], what: str) -> str:
    if wanted is not None:
        if wanted not in all_names:
            raise FieldError(f"no image field {wanted!r}; the shard has {', '.join(all_names) or 'nothing'}")
        return wanted
    if len(found) == 1:
        return found[0]
    preferred = _pick(found, None, IMAGE_FIELDS, "image")
    if preferred is not None:
        return preferred
    if not found:
        raise FieldError(f"no {what} found (fields: {', '.join(all_names) or 'none'}); name it with --image-field")
    raise FieldError(f"several possible image fields ({', '.join(found)}); name one with --image-field")


# --- HDF5 -------------------------------------------------------------------------------------

def _hdf5_datasets(h5) -> dict[str, Any]:
    import h5py

    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    h5.visititems(visit)
    return found


def _hdf5_records(path: str, source: Source, fields: ShardFields) -> list[dict]:
    with _h5_file(source) as h5:
        datasets = _hdf5_datasets(h5)
        stacks = [n for n, d in datasets.items() if d.ndim >= 3 and d.dtype.kind in "uif"]
        try:
            image = _choose_image(stacks, fields.image, list(datasets),
                                  "image stack (a dataset of 3 or more dimensions)")
        except FieldError:
            links = _h5_external_links(h5)
            if links:
                raise _outside(f"HDF5 external links ({', '.join(links)[:200]})") from None
            raise
        _check_dataset_storage(datasets[image], image)
        n = datasets[image].shape[0]
        columns = [n_ for n_, d in datasets.items() if d.ndim == 1 and d.shape[0] == n]

        def column(wanted: str | None, candidates: tuple[str, ...], what: str) -> list | None:
            name = _pick(columns if wanted is None else list(datasets), wanted, candidates, what)
            if name is None:
                return None
            _check_dataset_storage(datasets[name], name)
            limits.active().check_decompressed(datasets[name].nbytes, f"HDF5 column {name!r}")
            return datasets[name][()].tolist()

        ids = column(fields.id, ID_FIELDS, "id")
        ra, dec = column(fields.ra, RA_FIELDS, "ra"), column(fields.dec, DEC_FIELDS, "dec")
    rows = list(range(n))
    return _records(path, Layout("hdf5", image), rows, [str(r) for r in rows], ids, ra, dec)


def _h5_dataset(h5, name: str):
    """The dataset ``name``, refused (``outside-input``) when reaching it or its bytes would leave the file:
    an external link on its path, external storage (raw data in another file) or a virtual dataset."""
    import h5py

    group = h5
    parts = [p for p in name.split("/") if p]
    for i, part in enumerate(parts):
        link = group.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise _outside(f"HDF5 {'/'.join(parts[:i + 1])!r} is an external link to {link.filename}:{link.path}")
        if link is None:
            raise KeyError(f"no {name!r} in the HDF5 file")
        group = group[part]
    _check_dataset_storage(group, name)
    return group


def _check_dataset_storage(ds, name: str) -> None:
    if ds.external:
        files = ", ".join(sorted({os.fsdecode(e[0]) for e in ds.external}))
        raise _outside(f"HDF5 dataset {name!r} keeps its data in another file (external storage: {files})")
    if ds.is_virtual:
        raise _outside(f"HDF5 dataset {name!r} is a virtual dataset (its data comes from other files)")


OUTSIDE = "refers outside the input"
"""Starts every ``outside-input`` reason."""


def _outside(reason: str) -> InputError:
    return InputError(f"{OUTSIDE}: {reason}; not read", kind=ErrorKind.OUTSIDE_INPUT)


def _h5_external_links(h5) -> list[str]:
    import h5py

    found: list[str] = []
    h5.visititems_links(lambda name, link: found.append(f"{name} -> {link.filename}:{link.path}")
                        if isinstance(link, h5py.ExternalLink) else None)
    return found


@contextmanager
def _h5_file(source: Source):
    import h5py

    with _maybe_binary(source) as src, h5py.File(src, "r") as h5:
        yield h5


@contextmanager
def _maybe_binary(source: Source):
    """Local paths as they are (the library's native reader), bytes as a file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    else:
        yield source


def _rows_per_read(row_bytes: int) -> int:
    return max(1, min(READ_ROWS, READ_BYTES // max(1, row_bytes)))


def _check_stamp(shape: tuple[int, ...], itemsize: int) -> None:
    """A stack's rows against the limits, from its header (shape, dtype) before any row is read."""
    limits.active().check_image(tuple(shape[1:]), itemsize, "a stamp of this stack")


def _read_hdf5(source: Source, layout: Layout, positions: list[int]) -> Iterator[tuple[int, Any]]:
    """Rows of an HDF5 stack, a bounded run at a time, after the dataset's storage and sizes are checked."""
    with _h5_file(source) as h5:
        ds = _h5_dataset(h5, layout.image)
        _check_stamp(ds.shape, ds.dtype.itemsize)
        if ds.chunks:
            limits.active().check_decompressed(math.prod(ds.chunks) * ds.dtype.itemsize, "an HDF5 chunk of this stack")
        for start, stop in _runs(positions, _rows_per_read(math.prod(ds.shape[1:]) * ds.dtype.itemsize)):
            block = ds[start:stop]
            for pos in range(start, stop):
                yield pos, block[pos - start]


def _runs(positions: list[int], most: int = READ_ROWS) -> Iterator[tuple[int, int]]:
    """Sorted positions as contiguous ``[start, stop)`` runs of at most ``most`` rows."""
    ordered = sorted(set(positions))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1 and j + 1 - i < most:
            j += 1
        yield ordered[i], ordered[j] + 1
        i = j + 1


# --- NumPy ------------------------------------------------------------------------------------

def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an ``.npy`` stream, reading its header only."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if fortran and len(shape) > 1:
        raise InputError("Fortran-ordered .npy stacks are not supported; save the stack in C order",
                         kind=ErrorKind.UNSUPPORTED)
    if dtype.hasobject:
        raise InputError(f"the stack holds Python objects ({dtype}); save a numeric array", kind=ErrorKind.UNSUPPORTED)
    return shape, dtype, f.tell()


def _stack_records(path: str, shape: tuple[int, ...], layout: Layout, ids=None, ra=None, dec=None) -> list[dict]:
    if len(shape) < 3:
        raise InputError(f"the array is {len(shape)}-D {shape}; a stack of cutouts is N x H x W or N x C x H x W",
                         kind=ErrorKind.UNSUPPORTED)
    rows = list(range(shape[0]))
    return _records(path, layout, rows, [str(r) for r in rows], ids, ra, dec)


def _npy_records(path: str, source: Source, fields: ShardFields) -> list[dict]:
    with _binary(source) as f:
        shape, _, _ = _npy_header(f)
    return _stack_records(path, shape, Layout("npy"))


def _npz_records(path: str, source: Source, fields: ShardFields) -> list[dict]:
    with _binary(source) as f, zipfile.ZipFile(f) as zf:
        shapes, itemsizes = {}, {}
        for name in zf.namelist():
            if name.endswith(".npy"):
                with zf.open(name) as member:
                    shape, dtype, _ = _npy_header(member)
                    shapes[name[:-4]] = shape
                    itemsizes[name[:-4]] = dtype.itemsize
        stacks = [n for n, s in shapes.items() if len(s) >= 3]
        image = _choose_image(stacks, fields.image, list(shapes), "image stack (an array of 3 or more dimensions)")
        n = shapes[image][0]
        columns = [k for k, s in shapes.items() if len(s) == 1 and s[0] == n]

        def column(wanted: str | None, candidates: tuple[str, ...], what: str) -> list | None:
            name = _pick(columns if wanted is None else list(shapes), wanted, candidates, what)
            if name is None:
                return None
            limits.active().check_decompressed(math.prod(shapes[name]) * itemsizes[name], f"npz column {name!r}")
            with zf.open(name + ".npy") as member:
                return np.lib.format.read_array(member, allow_pickle=False).tolist()

        ids = column(fields.id, ID_FIELDS, "id")
        ra, dec = column(fields.ra, RA_FIELDS, "ra"), column(fields.dec, DEC_FIELDS, "dec")
    return _stack_records(path, shapes[image], Layout("npz", image), ids, ra, dec)


def _read_npy_stream(f: BinaryIO, positions: list[int]) -> Iterator[tuple[int, Any]]:
    """Rows of an ``.npy`` stream, checked against the limits from its header first and read a bounded run at a time
    (a deflated ``.npz`` member inflates only as far as the rows asked for, never whole)."""
    shape, dtype, offset = _npy_header(f)
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    _check_stamp(shape, dtype.itemsize)
    for start, stop in _runs(positions, _rows_per_read(row_bytes)):
        f.seek(offset + start * row_bytes)
        data = f.read((stop - start) * row_bytes)
        have = len(data) // row_bytes
        block = np.frombuffer(memoryview(data)[: have * row_bytes], dtype=dtype).reshape((have, *shape[1:]))
        for pos in range(start, stop):
            yield pos, block[pos - start] if pos - start < have else InputError("stack is truncated before this row",
                                                                                  kind=ErrorKind.CORRUPT)


def _read_npy(source: Source, layout: Layout, positions: list[int]) -> Iterator[tuple[int, Any]]:
    with _binary(source) as f:
        yield from _read_npy_stream(f, positions)


def _read_npz(source: Source, layout: Layout, positions: list[int]) -> Iterator[tuple[int, Any]]:
    with _binary(source) as f, zipfile.ZipFile(f) as zf, zf.open(f"{layout.image}.npy") as member:
        yield from _read_npy_stream(member, positions)


# --- Parquet ----------------------------------------------------------------------------------

def _image_columns(schema) -> list[str]:
    """Binary columns, and structs with a binary ``bytes`` field (the Hugging Face ``Image`` layout)."""
    import pyarrow as pa

    def binary(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    return [f.name for f in schema
            if binary(f.type) or (pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0
                                  and binary(f.type.field("bytes").type))]


def _parquet_records(path: str, source: Source, fields: ShardFields) -> list[dict]:
    import pyarrow.parquet as pq

    with _maybe_binary(source) as src:
        pf = pq.ParquetFile(src)
        schema = pf.schema_arrow
        names = schema.names
        image = _choose_image(_image_columns(schema), fields.image, names,
                              "image-bytes column (binary, or a struct with 'bytes')")
        scalar = [n for n in names if n != image and not schema.field(n).type.num_fields]
        wanted = {what: _pick(scalar if want is None else names, want, cands, what)
                  for what, want, cands in (("id", fields.id, ID_FIELDS), ("ra", fields.ra, RA_FIELDS),
                                            ("dec", fields.dec, DEC_FIELDS))}
        read = sorted({c for c in wanted.values() if c})
        meta = pf.metadata
        limits.active().check_decompressed(
            sum(meta.row_group(g).column(c).total_uncompressed_size for g in range(meta.num_row_groups)
                for c in range(meta.num_columns) if meta.row_group(g).column(c).path_in_schema in read),
            f"Parquet columns {', '.join(read)}")
        table = pf.read(columns=read) if read else None
        n = pf.metadata.num_rows
    cols = {what: None if c is None else table.column(c).to_pylist() for what, c in wanted.items()}
    rows = list(range(n))
    return _records(path, Layout("parquet", image), rows, [str(r) for r in rows], cols["id"], cols["ra"], cols["dec"])


def _read_parquet(source: Source, layout: Layout, positions: list[int]) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _maybe_binary(source) as src:
        pf = pq.ParquetFile(src)
        wanted = sorted(set(positions))
        start = 0
        k = 0
        for g in range(pf.metadata.num_row_groups):
            stop = start + pf.metadata.row_group(g).num_rows
            here = []
            while k < len(wanted) and wanted[k] < stop:
                here.append(wanted[k])
                k += 1
            if here:
                try:
                    _check_column_chunk(pf.metadata.row_group(g), layout.image, g)
                except InputError as exc:
                    for pos in here:
                        yield pos, exc
                    start = stop
                    continue
                column = pf.read_row_group(g, columns=[layout.image]).column(0).combine_chunks()
                if pa.types.is_struct(column.type):
                    column = column.field("bytes")
                for pos in here:
                    value = column[pos - start].as_py()
                    yield pos, value if value is not None else InputError(
                        f"no image bytes (null) in column {layout.image!r}", kind=ErrorKind.CORRUPT)
            start = stop
            if k == len(wanted):
                break


def _check_column_chunk(row_group, image: str, index: int) -> None:
    """The image column of one row group is read whole: its uncompressed size (Parquet metadata) against the limit."""
    size = sum(row_group.column(c).total_uncompressed_size for c in range(row_group.num_columns)
               if row_group.column(c).path_in_schema.split(".")[0] == image)
    limits.active().check_decompressed(size, f"Parquet row group {index}'s column {image!r}")


# --- tar (WebDataset) -------------------------------------------------------------------------

def _tar_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the member path up to the first dot of its file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


@contextmanager
def _tar_stream(source: Source, path: str) -> Iterator[BinaryIO]:
    """The uncompressed tar stream (gzip-compressed tars decompress on the fly, so seeks read forward)."""
    with _binary(source) as f:
        if _lower(path).endswith((".tar.gz", ".tgz")):
            with gzip.GzipFile(fileobj=f) as gz:
                yield gz
        else:
            yield f


def _tar_records(path: str, source: Source, fields: ShardFields) -> list[dict]:
    keys: dict[str, dict[str, Any]] = {}
    with _tar_stream(source, path) as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
        for member in iter(tar.next, None):
            key, ext = _tar_key(member.name)
            if member.issym() or member.islnk():
                if ext in TAR_IMAGE_SUFFIXES:
                    keys.setdefault(key, {}).setdefault("link", _tar_link_reason(member))
                continue
            if not member.isfile():
                continue
            entry = keys.setdefault(key, {})
            if ext in TAR_IMAGE_SUFFIXES and "offset" not in entry:
                entry["offset"] = member.offset
            elif ext == ".json" and member.size <= JSON_BYTES:
                entry["meta"] = _json_meta(tar.extractfile(member).read())
    if not keys:
        raise InputError("tar shard holds no files", kind=ErrorKind.CORRUPT)
    records, orphans = [], []
    for key, entry in keys.items():
        meta = entry.get("meta") or {}
        if "offset" not in entry and "link" in entry:
            records.append({"source_path": f"{path}#{key}", "object_id": key, "ra": None, "dec": None, "shard": path,
                            "shard_layout": None, "shard_pos": None, "error": str(entry["link"]),
                            "error_kind": entry["link"].kind.value})
            continue
        if "offset" not in entry:
            orphans.append(key)
            continue
        oid = _id_text(meta.get(fields.id)) if fields.id else next(
            (_id_text(meta[f]) for f in ID_FIELDS if meta.get(f) is not None), None)
        rec = _records(path, Layout("tar"), [entry["offset"]], [key], [oid],
                       [meta.get(fields.ra or "ra")], [meta.get(fields.dec or "dec")], [key])[0]
        records.append(rec)
    for key in orphans:
        records.append({"source_path": f"{path}#{key}", "object_id": key, "ra": None, "dec": None, "shard": path,
                        "shard_layout": None, "shard_pos": None,
                        "error": f"tar key {key!r} has no image member ({', '.join(TAR_IMAGE_SUFFIXES)})",
                        "error_kind": ErrorKind.CORRUPT.value})
    return records


def _json_meta(data: bytes) -> dict:
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _tar_link_reason(member: tarfile.TarInfo) -> InputError:
    kind = "symbolic link" if member.issym() else "hard link"
    return _outside(f"tar member {member.name!r} is a {kind} to {member.linkname!r}")


def _read_tar(source: Source, layout: Layout, positions: list[int], path: str) -> Iterator[tuple[int, Any]]:
    with _tar_stream(source, path) as stream:
        for pos in sorted(set(positions)):
            try:
                stream.seek(pos)
                with tarfile.open(fileobj=stream, mode="r:") as tar:
                    member = tar.next()
                    if member is None:
                        raise InputError("tar member is missing (shard truncated or rewritten)",
                                         kind=ErrorKind.CORRUPT)
                    if member.issym() or member.islnk():
                        raise _tar_link_reason(member)
                    limits.active().check_decompressed(member.size, f"tar member {member.name!r}")
                    data = tar.extractfile(member).read()
                    if len(data) < member.size:
                        raise InputError("tar member is truncated", kind=ErrorKind.CORRUPT)
                yield pos, _named_bytes(data, member.name)
            except InputError as exc:
                yield pos, exc
            except OSError as exc:
                yield pos, _read_failure(exc, f"unreadable tar member: {exc}")
            except (tarfile.TarError, EOFError) as exc:
                yield pos, InputError(f"unreadable tar member: {exc}", kind=ErrorKind.CORRUPT)


# --- multi-extension FITS ---------------------------------------------------------------------

def _fits_image_hdus_or_none(source: Source) -> list[tuple[int, str | None]] | None:
    try:
        with _binary(source) as f:
            return fits_image_hdus(f)
    except (OSError, ValueError):
        return None


def fits_image_hdus(f: BinaryIO) -> list[tuple[int, str | None]] | None:
    """``(HDU index, EXTNAME)`` of each HDU holding an image, reading header blocks only; None if not FITS.

    Own code: opening with astropy (lazy HDUs) measured 1.6 ms per file; discovery pays this for
    every FITS file, single cutouts included, so it reads the 2880-byte header blocks and seeks
    over the data instead.
    """
    found: list[tuple[int, str | None]] = []
    index = 0
    while True:
        cards: dict[str, str] = {}
        ended = False
        while not ended:
            block = f.read(2880)
            if len(block) < 2880:
                return found if index else None
            if index == 0 and not cards and not block.startswith(b"SIMPLE  ="):
                return None
            for k in range(0, 2880, 80):
                card = block[k:k + 80].decode("ascii", "replace")
                key = card[:8].strip()
                if key == "END":
                    ended = True
                    break
                if card[8:10] == "= ":
                    cards[key] = card[10:]
        naxis = int(readers.card_value(cards.get("NAXIS", "0")))
        dims = [int(readers.card_value(cards.get(f"NAXIS{i}", "0"))) for i in range(1, naxis + 1)]
        size = (abs(int(readers.card_value(cards.get("BITPIX", "8")))) // 8 * int(readers.card_value(cards.get("GCOUNT", "1")))
                * (int(readers.card_value(cards.get("PCOUNT", "0"))) + (math.prod(dims) if dims else 0)))
        extension = readers.card_value(cards.get("XTENSION", "'IMAGE'")).upper()
        if extension == "IMAGE" and len(dims) >= 2 and size:
            found.append((index, readers.card_value(cards["EXTNAME"]) if "EXTNAME" in cards else None))
        f.seek(-(-size // 2880) * 2880, io.SEEK_CUR)
        index += 1


def _fits_records(path: str, hdus: list[tuple[int, str | None]]) -> list[dict]:
    names = [name for _, name in hdus]
    unique = all(names) and len(set(names)) == len(names)
    return _records(path, Layout("fits"), [i for i, _ in hdus], [str(i) for i, _ in hdus],
                    None, None, None, names if unique else None)


def _read_fits(source: Source, layout: Layout, positions: list[int]) -> Iterator[tuple[int, Any]]:
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _maybe_binary(source) as src, fits.open(src, memmap=False, lazy_load_hdus=True) as hdul:
            for pos in sorted(set(positions)):
                try:
                    hdu = hdul[pos]
                    yield pos, readers.decode_fits_hdu(hdu)
                except InputError as exc:
                    yield pos, exc
                except OSError as exc:
                    yield pos, _read_failure(exc, f"corrupt or truncated FITS HDU {pos}: {exc}")
                except (ValueError, TypeError, IndexError, EOFError) as exc:
                    yield pos, InputError(f"corrupt or truncated FITS HDU {pos}: {exc}", kind=ErrorKind.CORRUPT)


# --- pixels -----------------------------------------------------------------------------------

def _named_bytes(data: bytes, name: str) -> io.BytesIO:
    buf = io.BytesIO(data)
    buf.name = name
    return buf


def decode_bytes(data: bytes | io.BytesIO, recipe: Recipe) -> readers.Decoded:
    """JPEG/PNG/FITS (also gzip-compressed FITS) bytes -> decoded pixels, sniffing the format."""
    buf = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    head = buf.getbuffer()[:9].tobytes()
    if not head:
        raise InputError("empty image bytes", kind=ErrorKind.CORRUPT)
    if head.startswith(b"\x1f\x8b"):
        data = buf.getvalue()
        try:
            fits_inside = zlib.decompressobj(wbits=31).decompress(data, 9).startswith(b"SIMPLE  =")
        except zlib.error as exc:
            raise InputError(f"corrupt gzip-compressed member: {exc}", kind=ErrorKind.CORRUPT) from None
        if fits_inside:
            return readers.read_fits(data)  # inflated there with each header checked before its data
        buf = io.BytesIO(limits.gunzip(data, "gzip-compressed member"))
        head = buf.getbuffer()[:9].tobytes()
    if head.startswith(b"SIMPLE  ="):
        return readers.read_fits(buf.getvalue())
    name = getattr(buf, "name", None) or ("image.png" if head.startswith(b"\x89PNG") else "image.jpg")
    return readers.Decoded(readers.read_raster(buf.getvalue(), name, recipe))


def stamp_pixels(array: np.ndarray) -> readers.Decoded:
    """A raw stamp from a stack -> pixels :func:`~galaxy_infer.preprocess.preprocess` takes.

    uint8/uint16 become raster ``(H, W, C)`` (scaled to [0, 1] by the recipe); other numbers
    become float bands ``(B, H, W)`` (percentile clip and stretch). The band axis is the first or
    last one, whichever is short (at most MAX_BANDS).
    """
    a = np.asarray(array)
    if a.dtype.kind not in "uif":
        raise InputError(f"stamp of type {a.dtype} is not numeric pixels", kind=ErrorKind.UNSUPPORTED)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        first, last = a.shape[0], a.shape[-1]
        if last <= MAX_BANDS and last < first:
            a = a.transpose(2, 0, 1)
        elif not (first <= MAX_BANDS and first < last):
            raise InputError(f"cannot tell the band axis of a stamp shaped {a.shape}; "
                             f"expected (H, W, C) or (C, H, W) with at most {MAX_BANDS} bands",
                             kind=ErrorKind.UNSUPPORTED)
    else:
        raise InputError(f"stamp is {a.ndim}-D {a.shape}; expected (H, W), (H, W, C) or (C, H, W)",
                         kind=ErrorKind.UNSUPPORTED)
    if a.dtype in (np.uint8, np.uint16):
        return readers.Decoded(np.ascontiguousarray(a.transpose(1, 2, 0)))
    a = a.astype(np.float32)
    if not np.isfinite(a).any():
        raise InputError("stamp is all NaN/inf", kind=ErrorKind.CORRUPT)
    return readers.Decoded(a)


def _as_decoded(value: Any, recipe: Recipe) -> readers.Decoded:
    if isinstance(value, Exception):
        raise value
    if isinstance(value, readers.Decoded):
        return value
    if isinstance(value, (bytes, io.BytesIO)):
        return decode_bytes(value, recipe)
    return stamp_pixels(value)


def read_shard_rows(shard: str, layout: Layout, positions: list[int],
                    source: Source | None = None) -> Iterator[tuple[int, Any]]:
    """``(position, raw value)`` for each position, read in order: a stamp array, image bytes,
    :class:`~galaxy_infer.readers.Decoded`, or the :class:`InputError` that this cutout gets.
    ``source`` as for :func:`shard_records`; the shard opened here is closed once its rows are read."""
    if layout.kind not in ("hdf5", "parquet", "tar", "npy", "npz", "fits"):
        raise ValueError(f"unknown shard layout {layout.kind!r}")
    with _opened(shard, source) as src:
        if layout.kind == "hdf5":
            yield from _read_hdf5(src, layout, positions)
        elif layout.kind == "parquet":
            yield from _read_parquet(src, layout, positions)
        elif layout.kind == "tar":
            yield from _read_tar(src, layout, positions, shard)
        elif layout.kind == "npy":
            yield from _read_npy(src, layout, positions)
        elif layout.kind == "npz":
            yield from _read_npz(src, layout, positions)
        else:
            yield from _read_fits(src, layout, positions)


def read_units(batch: dict[str, Any], recipe: Recipe,
               filesystem: Any = None) -> Iterator[tuple[int, Callable[[], readers.Decoded]]]:
    """For each row of a records batch, in order, its index and a call that returns its pixels or raises.

    Single files are fetched many at once ahead of their calls (:func:`galaxy_infer.storage.read_many`;
    ``filesystem`` reads them through that filesystem instead of the one their URI names);
    consecutive rows of one shard are read together (one hyperslab, row group or run of tar
    members), a run at a time, so a task holds few raw stamps.
    """
    limits.use(recipe.limits)
    n = len(batch["source_path"])
    shards, layouts, positions, errors, kinds = (batch.get(k, [None] * n) for k in (
        "shard", "shard_layout", "shard_pos", "error", "error_kind"))
    files = [str(batch["source_path"][i]) for i in range(n)
             if not errors[i] and (shards[i] is None or layouts[i] is None)]
    fetched = storage.read_many(files, filesystem)
    i = 0
    while i < n:
        if errors[i]:
            yield i, _raiser(InputError(errors[i], kind=ErrorKind(kinds[i]) if kinds[i] else None))
            i += 1
        elif shards[i] is None or layouts[i] is None:
            path, data = str(batch["source_path"][i]), next(fetched)
            yield i, lambda path=path, data=data: _decode_file(data, path, recipe)
            i += 1
        else:
            j = i
            while j < n and shards[j] == shards[i] and layouts[j] == layouts[i] and not errors[j]:
                j += 1
            yield from _shard_run(shards[i], Layout.from_json(layouts[i]), range(i, j),
                                  [int(p) for p in positions[i:j]], recipe)
            i = j


def _decode_file(data: bytes | InputError, path: str, recipe: Recipe) -> readers.Decoded:
    if isinstance(data, InputError):
        raise data
    return readers.decode_cutout(data, path, recipe)


def _shard_run(shard: str, layout: Layout, rows: range, positions: list[int],
               recipe: Recipe) -> Iterator[tuple[int, Callable[[], readers.Decoded]]]:
    by_pos: dict[int, list[int]] = {}
    for row, pos in zip(rows, positions):
        by_pos.setdefault(pos, []).append(row)
    pending = dict(by_pos)
    try:
        for pos, value in read_shard_rows(shard, layout, positions):
            for row in pending.pop(pos, []):
                yield row, lambda value=value: _as_decoded(value, recipe)
    except InputError as exc:
        failure: Exception = exc
    except OSError as exc:  # storage's split: a failed open or read of the shard may be retried, bad bytes not
        failure = _read_failure(exc, f"cannot read {_kind_name(_lower(shard))} shard {os.path.basename(shard)}: "
                                     f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a shard that fails mid-read costs its rows, not the run
        failure = InputError(f"cannot read {_kind_name(_lower(shard))} shard {os.path.basename(shard)}: "
                             f"{type(exc).__name__}: {exc}"[:300])
    else:
        failure = InputError("row not found in the shard (it changed since it was listed)")
    for rows_left in pending.values():
        for row in rows_left:
            yield row, _raiser(failure)


def _raiser(exc: Exception) -> Callable[[], readers.Decoded]:
    def fail() -> readers.Decoded:
        raise exc

    return fail
