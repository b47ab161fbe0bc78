"""Size limits every decoder checks from a header or metadata before it decompresses or allocates.

Survey files are untrusted: a few MB of gzip can claim gigapixels. Each format reads what its
header claims (FITS NAXISn/ZNAXISn and BITPIX, the ``.npy`` header inside an ``.npz`` member,
HDF5 dataset shape, dtype and chunking, Parquet column-chunk sizes, JPEG/PNG dimensions) and
refuses with an ``error`` row of kind ``too-large`` that names the limit and the option raising it
(``classify`` and ``ingest`` take the same). Streams that are decompressed anyway (gzip) stop at the
byte cap, so a bomb costs at most the cap.

The defaults fit any real survey cutout with room to spare (a 100-megapixel image, 1 GiB
decoded); a task holds one cutout and one decompressed object at a time, so these limits times
the workers per node bound a node's decoding memory.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from galaxy_infer.errors import ErrorKind, InputError

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The three limits; a run sets them from ``--max-megapixels``, ``--max-cutout-mb`` and
    ``--max-decompressed-mb``."""

    pixels: int = 100_000_000
    """Pixels of one image, all bands together (FITS NAXIS1 x NAXIS2 x NAXIS3, a raster's width x height)."""
    cutout_bytes: int = 1024 * MB
    """Bytes of one decoded cutout as stored (pixels x bytes per sample), e.g. a row of an HDF5/NumPy stack."""
    decompressed_bytes: int = 1024 * MB
    """Bytes one object may inflate to and be held at once: a gzip file or member, a tar member, an HDF5
    chunk, a Parquet column chunk of one row group, and a single cutout file, which is read whole."""

    def check_pixels(self, dims: tuple[int, ...], what: str, claim: str = "its header gives") -> None:
        """``dims`` as the format states them (FITS ``NAXISn..NAXIS1``, a raster's width x height)."""
        if math.prod(dims) > self.pixels:
            raise too_large(f"{what} over the {self.pixels / 1e6:g} megapixel limit: "
                            f"{claim + ' ' if claim else ''}{'x'.join(map(str, dims))} pixels", "--max-megapixels")

    def check_cutout_bytes(self, nbytes: int, what: str) -> None:
        if nbytes > self.cutout_bytes:
            raise too_large(f"{what} over the {self.cutout_bytes / MB:g} MB per-cutout limit: "
                            f"it decodes to {nbytes / MB:,.0f} MB", "--max-cutout-mb")

    def check_image(self, dims: tuple[int, ...], itemsize: int, what: str) -> None:
        """Pixels and decoded bytes of an image whose header claims ``dims`` of ``itemsize``-byte samples."""
        self.check_pixels(dims, what)
        self.check_cutout_bytes(math.prod(dims) * itemsize, what)

    def check_decompressed(self, nbytes: int, what: str) -> None:
        if nbytes > self.decompressed_bytes:
            raise too_large(f"{what} over the {self.decompressed_bytes / MB:g} MB decompressed-size limit: "
                            f"it inflates to {nbytes / MB:,.0f} MB", "--max-decompressed-mb")

    def check_file(self, nbytes: int, what: str = "file") -> None:
        """A file read whole into memory (a single cutout) against the decompressed-size limit."""
        if nbytes > self.decompressed_bytes:
            raise too_large(f"{what} over the {self.decompressed_bytes / MB:g} MB decompressed-size limit: "
                            f"it holds {'more than ' if nbytes == self.decompressed_bytes + 1 else ''}"
                            f"{nbytes / MB:,.0f} MB", "--max-decompressed-mb")


def too_large(reason: str, option: str) -> InputError:
    return InputError(f"{reason} (raise it with {option})", kind=ErrorKind.TOO_LARGE)


DEFAULT = Limits()
_active = DEFAULT


def active() -> Limits:
    """The limits of the run this process works for (set by :func:`use` when a task starts; else the defaults)."""
    return _active


def use(limits: Limits | None) -> None:
    """Make ``limits`` this process's limits: a Ray worker runs one task at a time, and every task of a run
    sets the run's limits before it decodes (they travel in the run's recipe)."""
    global _active
    _active = limits or DEFAULT


def gunzip(data: bytes, what: str, limits: Limits | None = None,
           inspect: Callable[[bytearray], int | None] | None = None) -> bytes:
    """Decompress gzip ``data`` (all members), refusing once the output would pass the decompressed-size limit.

    Own code rather than :func:`gzip.decompress`, which inflates everything before anyone can look:
    ``zlib.decompressobj(...).decompress(buf, max_length)`` inflates a step at a time and stops at the
    cap, so a bomb costs at most the cap. ``inspect`` sees the output after each step and may raise
    (a FITS header claiming too much is refused before its data is inflated) or return where the
    content ends (inflating stops there: padding after the last FITS HDU is never inflated).
    """
    limits = limits or active()
    cap = limits.decompressed_bytes
    out = bytearray()
    rest = bytes(data)
    while rest:
        d = zlib.decompressobj(wbits=31)
        tail = rest
        try:
            while not d.eof and len(out) <= cap:
                step = d.decompress(tail, min(GUNZIP_STEP, cap + 1 - len(out)))
                tail = d.unconsumed_tail
                if not step and not tail:
                    break
                out += step
                end = None if inspect is None else inspect(out)
                if end is not None:
                    return bytes(out[:end])
        except zlib.error as exc:
            raise InputError(f"corrupt gzip data in {what}: {exc}", kind=ErrorKind.CORRUPT) from None
        if len(out) > cap:
            raise too_large(f"{what} over the {cap / MB:g} MB decompressed-size limit: inflating stopped there",
                            "--max-decompressed-mb")
        if not d.eof:
            raise InputError(f"truncated gzip data in {what}", kind=ErrorKind.CORRUPT)
        rest = d.unused_data.lstrip(b"\0")
    return bytes(out)


GUNZIP_STEP = 4 * MB
"""Bytes inflated between looks at the output."""
