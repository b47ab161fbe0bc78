"""Hostile survey files built on the spot (nothing large in the repository): decompression bombs, headers
that lie about their size, and shards that point outside themselves. Used by tests/test_hostile_inputs.py
and benchmarks/hostile.py; each writer returns the path it wrote."""
from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

MB = 1 << 20


def good_jpeg(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_good_jpegs(folder: Path, n: int, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"good_{i:04d}.jpg" for i in range(n)]
    for i, p in enumerate(paths):
        p.write_bytes(good_jpeg(i, size))
    return paths


def fits_gz_bomb(path: Path, side: int = 30_000) -> Path:
    """A ``.fits.gz`` whose header claims ``side`` x ``side`` float32 and whose gzip holds all those zero bytes.

    Written as concatenated gzip members (valid gzip; ``gzip`` and astropy read them as one stream) of
    one 64 MiB zero block compressed once, so 3.6 GB of claimed data costs a few MB and a second to write.
    """
    from astropy.io import fits

    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": side, "NAXIS2": side})
    total = side * side * 4
    block = gzip.compress(bytes(64 * MB), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header.tostring().encode()))
        for _ in range(total // (64 * MB)):
            f.write(block)
        f.write(gzip.compress(bytes(total % (64 * MB) + (-total) % 2880)))
    return path


def padded_fits_gz(path: Path, padding_mb: int) -> Path:
    """A good 64x64 ``.fits.gz`` followed by ``padding_mb`` of zeros inside the gzip (a bomb behind a true header)."""
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)).writeto(buf)
    block = gzip.compress(bytes(16 * MB), compresslevel=9)
    path.write_bytes(gzip.compress(buf.getvalue()) + block * (padding_mb // 16))
    return path


def npz_stack(path: Path, shape: tuple[int, ...], zeros: bool = True) -> Path:
    """A deflated ``.npz`` with one uint8 member ``images`` of ``shape``, streamed into the zip (never held whole)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    row = int(np.prod(shape[1:]))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("images.npy", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        chunk = bytes(row) if zeros else np.random.default_rng(0).integers(0, 255, row, dtype=np.uint8).tobytes()
        for _ in range(shape[0]):
            member.write(chunk)
    return path


def npz_lying_header(path: Path, shape: tuple[int, ...] = (4, 30_000, 30_000, 3)) -> Path:
    """An ``.npz`` whose member header claims ``shape`` but that holds 1 KB: refused from the header alone."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images.npy", header.getvalue() + bytes(1024))
    return path


def secret_file(path: Path, nbytes: int = 4 * 64 * 64 * 3) -> Path:
    """A file outside the input whose bytes must never become pixels."""
    path.write_bytes(np.random.default_rng(7).integers(0, 255, nbytes, dtype=np.uint8).tobytes())
    return path


def hdf5_external_storage(path: Path, secret: Path, n: int = 4) -> Path:
    """An HDF5 stack whose ``images`` keep their raw data in ``secret`` (HDF5 external storage)."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", shape=(n, 64, 64, 3), dtype="u1",
                          external=[(str(secret), 0, n * 64 * 64 * 3)])
    return path


def hdf5_stack(path: Path, n: int = 4) -> Path:
    import h5py

    with h5py.File(path, "w") as h5:
        h5["images"] = np.random.default_rng(3).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    return path


def hdf5_external_link(path: Path, target: Path) -> Path:
    """An HDF5 file whose ``images`` is an external link to ``target``'s ``/images``."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5["images"] = h5py.ExternalLink(str(target), "/images")
    return path


def hdf5_virtual(path: Path, target: Path, n: int = 4) -> Path:
    """An HDF5 file whose ``images`` is a virtual dataset mapping ``target``'s ``/images``."""
    import h5py

    layout = h5py.VirtualLayout(shape=(n, 64, 64, 3), dtype="u1")
    layout[:] = h5py.VirtualSource(str(target), "images", shape=(n, 64, 64, 3))
    with h5py.File(path, "w") as h5:
        h5.create_virtual_dataset("images", layout)
    return path


def hdf5_big_chunks(path: Path, n: int = 8, side: int = 1024) -> Path:
    """An HDF5 stack compressed as one chunk of all its rows (reading one row inflates them all)."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", shape=(n, side, side, 3), dtype="u1", chunks=(n, side, side, 3),
                          compression="gzip", fillvalue=0)
        h5["images"][0] = 1
    return path


def tar_with_links(path: Path) -> Path:
    """A WebDataset tar: one good JPEG, a symbolic link to /etc/passwd and a hard link to the good member."""
    with tarfile.open(path, "w") as tar:
        data = good_jpeg(11)
        info = tarfile.TarInfo("good.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, kind, target in (("sym.jpg", tarfile.SYMTYPE, "/etc/passwd"), ("hard.jpg", tarfile.LNKTYPE,
                                                                               "good.jpg")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path


def huge_png(path: Path, side: int = 12_000) -> Path:
    """A 1-bit PNG of ``side`` x ``side`` (144 megapixels at 12,000): small on disk, huge decoded."""
    Image.new("1", (side, side)).save(path, "PNG")
    return path


def jpeg_claiming(path: Path, side: int = 65_500) -> Path:
    """A small JPEG whose frame header (SOF0) claims ``side`` x ``side``."""
    data = bytearray(good_jpeg(5))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = side.to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))
    return path


def parquet_big_row_group(path: Path, rows: int = 4, row_mb: int = 8) -> Path:
    """A Parquet shard whose one row group's image column inflates to ``rows`` x ``row_mb`` MB (zeros, zstd)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"object_id": [f"p{i}" for i in range(rows)], "image": [bytes(row_mb * MB)] * rows})
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    return path
