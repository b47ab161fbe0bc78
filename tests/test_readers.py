from pathlib import Path

import numpy as np
import pytest

from galaxy_infer.errors import InputError
from galaxy_infer.preprocess import Recipe
from galaxy_infer.readers import read_cutout
from galaxy_infer.worklist import discover
from tests.bad_inputs import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_each_corpus_file_decodes_or_fails_with_its_reason(corpus):
    manifest, expected = corpus
    records = discover([str(manifest)])
    assert {r["object_id"] for r in records} == set(expected)
    for record in records:
        outcome = expected[record["object_id"]]
        if outcome is None:
            pixels = read_cutout(record["source_path"], Recipe()).pixels
            assert pixels.size > 0
        else:
            with pytest.raises(InputError, match=outcome):
                read_cutout(record["source_path"], Recipe())


def test_fits_wcs_gives_the_centre_position(corpus):
    manifest, _ = corpus
    decoded = read_cutout(str(manifest.parent / "good.fits"), Recipe())
    assert decoded.pixels.shape == (3, 128, 128)
    assert decoded.ra == pytest.approx(150.1, abs=1e-6) and decoded.dec == pytest.approx(2.2, abs=1e-6)


def test_bscale_bzero_are_applied(corpus):
    manifest, _ = corpus
    from astropy.io import fits

    path = manifest.parent / "scaled.fits.gz"
    assert fits.getheader(path)["BSCALE"] == 0.5
    pixels = read_cutout(str(path), Recipe()).pixels
    assert pixels.dtype == np.float32 and pixels.shape == (1, 424, 424)
    assert pixels.min() == -100.0 and pixels.max() <= 155.0


def test_jpeg_decodes_at_reduced_scale(corpus):
    manifest, _ = corpus
    pixels = read_cutout(str(manifest.parent / "good.jpg"), Recipe(input_size=64, crop_fraction=0.6)).pixels
    assert pixels.shape == (106, 106, 3)


def test_directory_discovery_is_recursive_and_skips_other_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["a/x.jpg", "a/b/y.fits.gz", "a/b/z.fits.fz", "notes.txt", "a/w.PNG"]:
        (tmp_path / name).write_bytes(b"0")
    ids = sorted(r["object_id"] for r in discover([str(tmp_path)]))
    assert ids == ["w", "x", "y", "z"]
    assert [r["object_id"] for r in discover([str(tmp_path / "a" / "*.jpg")])] == ["x"]


def test_manifest_positions_and_relative_paths(tmp_path):
    (tmp_path / "m.csv").write_text("path,object_id,ra,dec\nimg/a.jpg,obj1,10.5,-3.25\n")
    [record] = discover([str(tmp_path / "m.csv")])
    assert record == {"source_path": str(tmp_path / "img" / "a.jpg"), "object_id": "obj1", "ra": 10.5, "dec": -3.25}


def test_real_survey_fits_files_read(shared_data: Path):
    folder = shared_data / "fits"
    a = read_cutout(str(folder / "decals_dr5_example_a.fits"), Recipe())
    assert a.pixels.shape == (3, 509, 509) and a.ra is not None
    hst = read_cutout(str(folder / "hst_AEGIS_F606w_images_01.fits"), Recipe())
    assert hst.pixels.shape[0] == 1
    with pytest.raises(InputError, match="no image data"):
        read_cutout(str(folder / "hst_AEGIS_F606w_catalog.fits"), Recipe())


def test_fits_over_the_pixel_limit_is_refused_from_its_header_before_reading_data(tmp_path):
    from astropy.io import fits

    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": 20_000, "NAXIS2": 20_000,
                          "NAXIS3": 3})
    path = tmp_path / "huge.fits"
    path.write_bytes(header.tostring().encode() + b"\0" * 2880)  # claims 4.8 GB of pixels, holds one block
    with pytest.raises(InputError, match=r"over the 100 megapixel limit: its header gives 3x20000x20000"):
        read_cutout(str(path), Recipe())
    extension = tmp_path / "huge_ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2), np.float32))]).writeto(extension)
    data = bytearray(extension.read_bytes())
    at = data.index(b"NAXIS1  =", 2880)
    data[at:at + 30] = b"NAXIS1  =               200000"
    at = data.index(b"NAXIS2  =", 2880)
    data[at:at + 30] = b"NAXIS2  =               200000"
    extension.write_bytes(bytes(data))
    with pytest.raises(InputError, match="megapixel limit"):
        read_cutout(str(extension), Recipe())
