"""A corpus of awkward and broken cutouts, generated on the fly, with the outcome each must get."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from galaxy_infer.synthetic import galaxy_image, write_fits_cutout


def _jpeg_bytes(image: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


KINDS = {"empty.jpg": "corrupt", "truncated.jpg": "corrupt", "text.jpg": "corrupt", "bomb.png": "too-large",
         "no_data.fits": "corrupt", "all_nan.fits": "corrupt", "one_d.fits": "unsupported",
         "truncated_fits.fits": "corrupt", "dangling.jpg": "not-found", "missing.jpg": "not-found"}
"""The ``error_kind`` each error row of the corpus gets."""


def write_corpus(folder: Path) -> tuple[Path, dict[str, str | None]]:
    """Write the corpus and a manifest whose object ids are the file names.

    Returns the manifest and ``object_id -> expected error`` (None = ok).
    """
    from astropy.io import fits

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    galaxy = galaxy_image(rng, "spiral", 424)
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, outcome: str | None) -> None:
        (folder / name).write_bytes(data)
        expected[name] = outcome

    put("good.jpg", _jpeg_bytes(galaxy), None)
    put("empty.jpg", b"", "empty file")
    put("truncated.jpg", _jpeg_bytes(galaxy)[:3000], "truncated JPEG")
    put("text.jpg", b"this is not an image\n" * 10, "not a readable image")
    put("greyscale.jpg", _jpeg_bytes(galaxy, "L"), None)
    put("cmyk.jpg", _jpeg_bytes(galaxy, "CMYK"), None)
    put("non ascii \u00e9toile \u661f.jpg", _jpeg_bytes(galaxy), None)

    buf = io.BytesIO()
    Image.fromarray(galaxy[:, :, 0].astype(np.uint16) * 257).save(buf, "PNG")
    put("sixteen_bit.png", buf.getvalue(), None)
    buf = io.BytesIO()
    Image.fromarray(galaxy).convert("RGBA").save(buf, "PNG")
    put("rgba.png", buf.getvalue(), None)
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, "PNG")
    put("bomb.png", buf.getvalue(), "megapixel limit")
    buf = io.BytesIO()
    Image.fromarray(galaxy).resize((3000, 3000)).save(buf, "JPEG", quality=80)
    put("large_but_fine.jpg", buf.getvalue(), None)

    write_fits_cutout(folder / "good.fits", rng)
    expected["good.fits"] = None
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="ra", format="D", array=np.array([1.0]))])]).writeto(folder / "no_data.fits")
    expected["no_data.fits"] = "FITS has no image data"
    fits.PrimaryHDU(np.full((50, 50), np.nan, np.float32)).writeto(folder / "all_nan.fits")
    expected["all_nan.fits"] = "all NaN"
    fits.PrimaryHDU(np.arange(100, dtype=np.float32)).writeto(folder / "one_d.fits")
    expected["one_d.fits"] = "1-D"
    scaled = fits.PrimaryHDU((galaxy[:, :, 1].astype(np.int16) - 100))
    scaled.scale("int16", bscale=0.5, bzero=10.0)
    scaled.writeto(folder / "scaled.fits.gz")
    expected["scaled.fits.gz"] = None
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(galaxy[:, :, 2].astype(np.float32))]).writeto(
        folder / "tiled.fits.fz")
    expected["tiled.fits.fz"] = None
    good_fits = (folder / "good.fits").read_bytes()
    put("truncated_fits.fits", good_fits[: len(good_fits) // 2], "FITS")

    os.symlink(folder / "does_not_exist.jpg", folder / "dangling.jpg")
    expected["dangling.jpg"] = "broken symbolic link"
    expected["missing.jpg"] = "file not found"

    manifest = folder / "manifest.csv"
    names = sorted(p.name for p in folder.iterdir() if p.name != "manifest.csv")
    lines = ["path,object_id"] + [f'"{n}","{n}"' for n in names + ["missing.jpg"]]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest, expected
