"""Survey files are untrusted input (issue 27): every hostile file built here costs at most the limits,
becomes its own ``error`` row of the right kind, and never makes the run read outside the input."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.run import PeakMemory
from galaxy_infer import limits, readers, shards
from galaxy_infer.errors import ErrorKind, InputError
from galaxy_infer.pipeline import RunConfig, classify
from galaxy_infer.preprocess import Recipe
from tests import hostile_files as H

MB = 1 << 20


def outcomes(path: Path, recipe: Recipe = Recipe()) -> list[tuple[str, ErrorKind | None, str]]:
    """``(source_path, kind or None when ok, reason)`` for every cutout of one file, listed and read as a run does."""
    records = shards.shard_records(str(path)) or [{"source_path": str(path), "error": None}]
    batch = {k: [r.get(k) for r in records] for k in ("source_path", "shard", "shard_layout", "shard_pos", "error",
                                                      "error_kind")}
    out = []
    for i, load in shards.read_units(batch, recipe):
        try:
            load()
            out.append((records[i]["source_path"], None, ""))
        except InputError as exc:
            out.append((records[i]["source_path"], exc.kind, str(exc)))
    return out


def kinds(path: Path, recipe: Recipe = Recipe()) -> set:
    return {kind for _, kind, _ in outcomes(path, recipe)}


def test_gzip_fits_bomb_is_refused_from_its_header_before_inflating(tmp_path):
    bomb = H.fits_gz_bomb(tmp_path / "bomb.fits.gz")  # 3.6 GB of claimed float32 in 3.5 MB of gzip
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"over the 100 megapixel limit: its header gives 30000x30000 pixels "
                                         r"\(raise it with --max-megapixels\)") as caught:
        readers.read_cutout(str(bomb), Recipe())
    assert caught.value.kind == ErrorKind.TOO_LARGE
    assert time.perf_counter() - started < 1


def test_gzip_inflating_stops_at_the_cap_and_padding_after_the_last_hdu_is_never_inflated(tmp_path):
    padded = H.padded_fits_gz(tmp_path / "padded.fits.gz", 2048)  # a true 64x64 header, then 2 GB of zeros
    started = time.perf_counter()
    assert readers.read_cutout(str(padded), Recipe()).pixels.shape == (1, 64, 64)
    assert time.perf_counter() - started < 2
    small = limits.Limits(decompressed_bytes=8 * MB)
    import gzip
    with pytest.raises(InputError, match="over the 8 MB decompressed-size limit: inflating stopped there") as caught:
        limits.gunzip(gzip.compress(bytes(64 * MB)), "a test stream", small)
    assert caught.value.kind == ErrorKind.TOO_LARGE


def test_tile_compressed_fits_is_checked_by_its_znaxis_before_decompressing(tmp_path):
    import numpy as np
    from astropy.io import fits

    path = tmp_path / "tiles.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.ones((64, 64), np.float32))]).writeto(path)
    assert readers.read_cutout(str(path), Recipe()).pixels.shape == (1, 64, 64)
    limits.use(limits.Limits(pixels=1000))
    try:
        with pytest.raises(InputError, match="tile-compressed FITS image over the 0.001 megapixel limit: "
                                             "its header gives 64x64 pixels") as caught:
            readers.read_cutout(str(path), Recipe())
    finally:
        limits.use(None)
    assert caught.value.kind == ErrorKind.TOO_LARGE


def test_npz_member_claiming_gigapixel_stamps_is_refused_from_its_npy_header(tmp_path):
    found = outcomes(H.npz_lying_header(tmp_path / "lie.npz"))
    assert len(found) == 4
    assert {k for _, k, _ in found} == {ErrorKind.TOO_LARGE}
    assert "its header gives 30000x30000x3 pixels" in found[0][2]


def test_deflated_npz_is_read_a_bounded_run_of_rows_at_a_time(tmp_path):
    npz = H.npz_stack(tmp_path / "big.npz", (40, 1024, 1024, 3))  # 126 MB raw, a few hundred KB on disk
    assert npz.stat().st_size < 2 * MB
    with PeakMemory(os.getpid(), interval=0.05) as memory:
        before = memory._sample()
        assert kinds(npz) == {None}
    assert memory.peak - before < 64 * MB  # a run of READ_BYTES (16 MB) of rows at a time, not the 126 MB member


@pytest.mark.parametrize("build, reason", [
    (lambda d: H.hdf5_external_storage(d / "ext.h5", H.secret_file(d / "secret.bin")),
     "keeps its data in another file (external storage"),
    (lambda d: H.hdf5_external_link(d / "link.h5", H.hdf5_stack(d / "target.h5")), "HDF5 external links"),
    (lambda d: H.hdf5_virtual(d / "virtual.h5", H.hdf5_stack(d / "target.h5")), "is a virtual dataset"),
])
def test_hdf5_that_reaches_another_file_is_refused_and_never_read(tmp_path, build, reason):
    found = outcomes(build(tmp_path))
    assert len(found) == 1
    assert found[0][1] == ErrorKind.OUTSIDE_INPUT
    assert found[0][2].startswith("refers outside the input: ") and reason in found[0][2]


def test_hdf5_dataset_behind_an_external_link_is_refused_when_rows_are_read(tmp_path):
    """A shard rewritten between listing and reading (a plain stack became a link) is still not followed."""
    target = H.hdf5_stack(tmp_path / "target.h5")
    path = H.hdf5_stack(tmp_path / "stack.h5")
    records = shards.shard_records(str(path))
    H.hdf5_external_link(path, target)
    with pytest.raises(InputError, match="'images' is an external link to ") as caught:
        list(shards.read_shard_rows(str(path), shards.Layout.from_json(records[0]["shard_layout"]), [0]))
    assert caught.value.kind == ErrorKind.OUTSIDE_INPUT


def test_hdf5_chunk_and_parquet_row_group_over_the_decompressed_limit_are_refused(tmp_path):
    small = Recipe().with_limits(limits.Limits(decompressed_bytes=16 * MB))
    h5 = H.hdf5_big_chunks(tmp_path / "chunks.h5")  # one 24 MB gzip chunk holding all 8 rows
    assert kinds(h5) == {None}
    found = outcomes(h5, small)
    assert {k for _, k, _ in found} == {ErrorKind.TOO_LARGE}
    assert "an HDF5 chunk of this stack over the 16 MB decompressed-size limit: it inflates to 24 MB" in found[0][2]
    pq = H.parquet_big_row_group(tmp_path / "rows.parquet")  # 32 MB of zeros in one row group
    found = outcomes(pq, small)
    assert {k for _, k, _ in found} == {ErrorKind.TOO_LARGE} and len(found) == 4
    assert "Parquet row group 0's column 'image' over the 16 MB decompressed-size limit" in found[0][2]


def test_tar_links_are_error_rows_and_the_real_member_is_read(tmp_path):
    found = {Path(p).name: (k, r) for p, k, r in outcomes(H.tar_with_links(tmp_path / "links.tar"))}
    assert found["links.tar#good"][0] is None
    assert found["links.tar#sym"] == (ErrorKind.OUTSIDE_INPUT, "refers outside the input: tar member 'sym.jpg' is "
                                                             "a symbolic link to '/etc/passwd'; not read")
    assert found["links.tar#hard"][0] == ErrorKind.OUTSIDE_INPUT and "hard link" in found["links.tar#hard"][1]


def test_rasters_claiming_too_many_pixels_are_refused_from_their_headers(tmp_path):
    for path in (H.huge_png(tmp_path / "huge.png"), H.jpeg_claiming(tmp_path / "claims.jpg")):
        ((_, kind, reason),) = outcomes(path)
        assert kind == ErrorKind.TOO_LARGE and "megapixel limit" in reason and "--max-megapixels" in reason


def hostile_folder(folder: Path, good: int) -> dict[str, str]:
    """The issue's hostile files and more, plus ``good`` JPEGs: source file name -> expected reason ('' for ok)."""
    folder.mkdir()
    expected = {p.name: "" for p in H.write_good_jpegs(folder, good)}
    outside = folder.parent / "outside"
    outside.mkdir()
    H.fits_gz_bomb(folder / "bomb.fits.gz")
    expected["bomb.fits.gz"] = "over the 100 megapixel limit"
    H.hdf5_external_storage(folder / "external.h5", H.secret_file(outside / "secret.bin"))
    expected["external.h5"] = "refers outside the input"
    H.hdf5_external_link(folder / "link.h5", H.hdf5_stack(outside / "target.h5"))
    expected["link.h5"] = "refers outside the input"
    H.hdf5_virtual(folder / "virtual.h5", outside / "target.h5")
    expected["virtual.h5"] = "refers outside the input"
    H.tar_with_links(folder / "links.tar")
    expected.update({"links.tar#good": "", "links.tar#sym": "refers outside the input",
                     "links.tar#hard": "refers outside the input"})
    H.npz_lying_header(folder / "lie.npz")
    expected.update({f"lie.npz#{i}": "over the 100 megapixel limit" for i in range(4)})
    H.npz_stack(folder / "deflated.npz", (16, 1024, 1024, 3))
    expected.update({f"deflated.npz#{i}": "" for i in range(16)})
    H.huge_png(folder / "huge.png")
    expected["huge.png"] = "over the 100 megapixel limit"
    H.jpeg_claiming(folder / "claims.jpg")
    expected["claims.jpg"] = "over the 100 megapixel limit"
    H.parquet_big_row_group(folder / "rows.parquet")
    expected.update({f"rows.parquet#{i}": "over the 16 MB decompressed-size limit" for i in range(4)})
    return expected


def test_classify_over_hostile_files_mixed_with_good_ones(tmp_path, tiny_model, local_ray):
    """The real ``classify`` on real local Ray: good cutouts are ok rows, each hostile one its error row;
    the run ends within 60 s and this process with its Ray workers grows by less than 1.5 GB."""
    expected = hostile_folder(tmp_path / "in", good=40)
    config = RunConfig(inputs=[str(tmp_path / "in")], out=str(tmp_path / "cat"), model=str(tiny_model),
                       progress=False, limits=limits.Limits(decompressed_bytes=16 * MB))
    with PeakMemory(os.getpid(), interval=0.1) as memory:
        before = memory._sample()
        started = time.perf_counter()
        summary = classify(config)
        seconds = time.perf_counter() - started
    frame = pd.read_parquet(tmp_path / "cat")
    got = {Path(p).name: ("" if s == "ok" else e) for p, s, e in zip(frame.source_path, frame.status, frame.error)}
    assert summary["rows"] == len(expected) == len(frame)
    assert set(got) == set(expected)
    wrong = {k: (got[k], v) for k, v in expected.items() if not (v in got[k] if v else got[k] == "")}
    assert not wrong
    assert seconds < 60
    assert memory.peak - before < 1536 * MB


def test_a_single_file_over_the_limit_is_refused_before_it_is_read(tmp_path, s3):
    from galaxy_infer import storage
    from tests.test_storage import new_bucket, put

    data = H.good_jpeg(1) + bytes(3 * MB)
    big = tmp_path / "big.jpg"
    big.write_bytes(data)
    bucket = new_bucket(s3)
    put(s3, f"{bucket}/big.jpg", data)
    limits.use(limits.Limits(decompressed_bytes=2 * MB))
    try:
        for where in (str(big), f"s3://{bucket}/big.jpg"):
            with pytest.raises(InputError, match=r"file over the 2 MB decompressed-size limit: it holds (more than )?"
                                                 r"\d+ MB \(raise it with --max-decompressed-mb\)") as caught:
                storage.read_bytes(where)
            assert caught.value.kind == ErrorKind.TOO_LARGE
    finally:
        limits.use(None)


def test_shard_columns_read_while_listing_are_checked_against_the_limit_first(tmp_path):
    import h5py

    path = tmp_path / "ids.h5"
    n = 2_000_000
    with h5py.File(path, "w") as h5:  # compressed chunks of fill values: a small file
        h5.create_dataset("images", shape=(n, 2, 2), dtype="u1", chunks=(n // 8, 2, 2), compression="gzip")
        h5.create_dataset("ra", shape=(n,), dtype="f8", chunks=(n // 8,), compression="gzip")  # 15 MB
    limits.use(limits.Limits(decompressed_bytes=8 * MB))
    try:
        (record,) = shards.shard_records(str(path))
    finally:
        limits.use(None)
    assert "HDF5 column 'ra' over the 8 MB decompressed-size limit: it inflates to 15 MB" in record["error"]
    assert len(shards.shard_records(str(path))) == n
