"""Shards built with the real libraries (h5py, pyarrow, tarfile, numpy, astropy) from real cutouts."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from galaxy_infer.pipeline import RunConfig, classify, read_and_preprocess, records_batch
from galaxy_infer.preprocess import Recipe
from galaxy_infer.worklist import RECORD_SCHEMA, discover
from galaxy_infer.shards import (Layout, ShardFields, fits_image_hdus, read_shard_rows, shard_records,
                                 stamp_pixels)
from galaxy_infer.synthetic import galaxy_image
from tests.conftest import SHARED_DATA

N = 8


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """Real gz1_sdss JPEGs when ../shared/data is there, else generated ones."""
    real = sorted((SHARED_DATA / "gz1_sdss" / "images").glob("*.jpg"))[:N]
    if len(real) == N:
        return [p.read_bytes() for p in real]
    rng = np.random.default_rng(3)
    out = []
    for i in range(N):
        buf = io.BytesIO()
        Image.fromarray(galaxy_image(rng, "spiral", 424)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rgb(jpegs: list[bytes], size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((size, size))) for b in jpegs])


def write_galaxy10(path: Path, jpegs: list[bytes]) -> None:
    """Galaxy10 DECaLS's layout: images N x 256 x 256 x 3 uint8, ra, dec, redshift, ans."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", data=rgb(jpegs, 256), chunks=(1, 256, 256, 3), compression="gzip")
        h5["ra"] = np.linspace(150, 151, len(jpegs))
        h5["dec"] = np.linspace(2, 3, len(jpegs))
        h5["redshift"] = np.full(len(jpegs), 0.05, np.float32)
        h5["ans"] = np.arange(len(jpegs), dtype=np.uint8) % 10


def write_hf_parquet(path: Path, jpegs: list[bytes], missing: int | None = None) -> None:
    """The Hugging Face Galaxy Zoo layout: an ``image`` struct of {bytes, path}, ``id_str``, ``ra``, ``dec``."""
    images = [{"bytes": None if i == missing else b, "path": f"{i}.jpg"} for i, b in enumerate(jpegs)]
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "id_str": [f"J{i:04d}" for i in range(len(jpegs))],
                      "ra": np.arange(len(jpegs), dtype=np.float64), "dec": -np.arange(len(jpegs), dtype=np.float64),
                      "smooth-or-featured_smooth_fraction": np.full(len(jpegs), 0.5)})
    pq.write_table(table, path, row_group_size=3)


def write_webdataset(path: Path, members: dict[str, bytes]) -> None:
    opener = gzip.open(path, "wb") if path.name.endswith(".gz") else open(path, "wb")
    with opener as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def decode(records: list[dict], recipe: Recipe = Recipe()) -> dict[str, str]:
    """object_id -> error ('' when the cutout became a model input)."""
    out = read_and_preprocess(records_batch(pa.Table.from_pylist(records, schema=RECORD_SCHEMA)), recipe)
    assert out["pixels"].shape == (len(records), 3, recipe.input_size, recipe.input_size)
    return dict(zip(out["object_id"], out["error"]))


def test_galaxy10_hdf5_gives_one_row_per_cutout_with_positions(tmp_path, jpegs):
    write_galaxy10(tmp_path / "Galaxy10_DECals.h5", jpegs)
    records = discover([str(tmp_path / "Galaxy10_DECals.h5")])
    assert [r["object_id"] for r in records] == [f"Galaxy10_DECals.h5#{i}" for i in range(N)]
    assert records[3]["source_path"] == f"{tmp_path / 'Galaxy10_DECals.h5'}#3"
    assert records[-1]["ra"] == pytest.approx(151) and records[0]["dec"] == pytest.approx(2)
    out = read_and_preprocess(records_batch(pa.Table.from_pylist(records, schema=RECORD_SCHEMA)), Recipe())
    assert set(out["error"]) == {""}
    assert 0 < out["pixels"].mean() < 1


def test_hdf5_float_stack_nan_stamp_and_wrong_layouts_are_error_rows(tmp_path, jpegs):
    bands = rgb(jpegs, 64).transpose(0, 3, 1, 2).astype(np.float32)
    bands[2] = np.nan
    with h5py.File(tmp_path / "bands.h5", "w") as h5:
        h5["cutouts"] = bands
        h5["object_id"] = np.array([f"obj{i}".encode() for i in range(N)])
    with h5py.File(tmp_path / "five_bands.h5", "w") as h5:
        h5["cutouts"] = np.ones((2, 5, 32, 32), np.float32)
    with h5py.File(tmp_path / "five_d.h5", "w") as h5:
        h5["cutouts"] = np.ones((2, 2, 3, 32, 32), np.float32)
    outcome = decode(discover([str(tmp_path / "bands.h5"), str(tmp_path / "five_bands.h5"),
                               str(tmp_path / "five_d.h5")]))
    assert outcome.pop("obj2") == "stamp is all NaN/inf"
    assert "5 bands; the model takes 3" in outcome.pop("five_bands.h5#0")
    assert "stamp is 4-D" in outcome.pop("five_d.h5#1")
    assert {k: v for k, v in outcome.items() if k.startswith("obj")} == {f"obj{i}": "" for i in range(N) if i != 2}


def test_ambiguous_hdf5_is_an_error_row_saying_what_it_found_and_a_named_field_resolves_it(tmp_path):
    with h5py.File(tmp_path / "two.h5", "w") as h5:
        h5["g_band"] = np.ones((3, 32, 32), np.float32)
        h5["r_band"] = np.ones((3, 32, 32), np.float32)
        h5["name"] = np.array([b"a", b"b", b"c"])
    [record] = discover([str(tmp_path / "two.h5")])
    assert record["object_id"] == "two.h5"
    assert record["error"] == "several possible image fields (g_band, r_band); name one with --image-field"
    records = discover([str(tmp_path / "two.h5")], ShardFields(image="r_band", id="name"))
    assert [r["object_id"] for r in records] == ["a", "b", "c"]
    [record] = discover([str(tmp_path / "two.h5")], ShardFields(image="r_band", id="objid"))
    assert record["error"] == "no id field 'objid'; the shard has g_band, name, r_band"


def test_hugging_face_parquet_reads_only_its_row_groups_and_a_missing_bytes_value_is_one_error(tmp_path, jpegs):
    write_hf_parquet(tmp_path / "train-00000-of-00001.parquet", jpegs, missing=4)
    records = discover([str(tmp_path)])
    assert [r["object_id"] for r in records] == [f"J{i:04d}" for i in range(N)]
    assert records[5]["ra"] == 5 and records[5]["dec"] == -5
    outcome = decode(records[4:7])
    assert outcome == {"J0004": "no image bytes (null) in column 'image'", "J0005": "", "J0006": ""}


def test_webdataset_tar_plain_and_gzip_with_a_truncated_member_and_a_key_without_image(tmp_path, jpegs):
    members = {}
    for i, data in enumerate(jpegs[:4]):
        members[f"shard/k{i}.jpg"] = data[:2500] if i == 1 else data
        members[f"shard/k{i}.json"] = json.dumps({"ra": 10.0 + i, "dec": -1.0, "iauname": f"J{i}"}).encode()
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpegs[5])).save(buf, "PNG")
    members["shard/k5.png"] = buf.getvalue()
    members["shard/k6.json"] = b"{}"
    write_webdataset(tmp_path / "a.tar", members)
    write_webdataset(tmp_path / "b.tar.gz", {k.replace("k", "z"): v for k, v in members.items()})
    records = discover([str(tmp_path / "a.tar")]) + discover([str(tmp_path / "b.tar.gz")])
    # In one run the two tars give J0-J3 twice: object id collisions, error rows naming each other.
    together = {r["source_path"]: r for r in discover([str(tmp_path)])}
    assert f"is also the id of {tmp_path / 'b.tar.gz'}#shard/z0" in together[f"{tmp_path / 'a.tar'}#shard/k0"]["error"]
    by_id = {r["object_id"]: r for r in records if r["shard"].endswith("a.tar")}
    assert by_id["J2"]["source_path"] == f"{tmp_path / 'a.tar'}#shard/k2" and by_id["J2"]["ra"] == 12.0
    assert by_id["shard/k5"]["ra"] is None
    assert "has no image member" in by_id["shard/k6"]["error"]
    outcome = decode([r for r in records if r["shard"].endswith("a.tar")])
    assert outcome == {"J0": "", "J1": "truncated JPEG", "J2": "", "J3": "", "shard/k5": "",
                       "shard/k6": "tar key 'shard/k6' has no image member (.jpg, .jpeg, .png, .fits, .fit, .fits.gz)"}
    gz = [r for r in records if r["shard"].endswith("b.tar.gz")]
    assert decode(gz[2:4]) == {"J2": "", "J3": ""}


def test_numpy_stacks_npy_and_npz(tmp_path, jpegs):
    np.save(tmp_path / "stamps.npy", rgb(jpegs, 64)[:, :, :, 1].astype(np.float32))
    np.savez_compressed(tmp_path / "stamps.npz", images=rgb(jpegs, 64).transpose(0, 3, 1, 2),
                        dr8_id=np.arange(100, 100 + N), ra=np.full(N, 3.5), dec=np.full(N, -2.5))
    records = discover([str(tmp_path / "stamps.npy"), str(tmp_path / "stamps.npz")])
    assert records[0]["object_id"] == "stamps.npy#0" and records[N]["object_id"] == "100"
    assert records[N + 1]["ra"] == 3.5
    assert set(decode(records).values()) == {""}


def test_npy_listing_reads_the_header_only(tmp_path):
    """A stack cut short after its header still lists all rows; only the rows past the cut fail."""
    np.save(tmp_path / "cut.npy", np.ones((6, 32, 32), np.float32))
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 2 * 32 * 32 * 4])
    outcome = decode(discover([str(tmp_path / "cut.npy")]))
    cut = "stack is truncated before this row"
    assert outcome == {**{f"cut.npy#{i}": "" for i in range(4)}, "cut.npy#4": cut, "cut.npy#5": cut}


def test_multi_extension_fits_one_cutout_per_image_hdu(tmp_path, shared_data):
    from astropy.io import fits

    hst = shared_data / "fits" / "hst_AEGIS_F606w_images_01.fits"
    records = discover([str(hst)])
    assert [r["source_path"] for r in records] == [f"{hst}#{i}" for i in range(3)]
    assert set(decode(records).values()) == {""}
    named = fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(np.full((40, 40), float(i), np.float32) + np.eye(40),
                                                               name=f"OBJ{i}") for i in range(3)])
    named.append(fits.BinTableHDU.from_columns([fits.Column(name="ra", format="D", array=np.ones(3))]))
    named.writeto(tmp_path / "field.fits")
    with open(tmp_path / "field.fits", "rb") as f:
        assert fits_image_hdus(f) == [(1, "OBJ0"), (2, "OBJ1"), (3, "OBJ2")]
    assert [r["object_id"] for r in discover([str(tmp_path / "field.fits")])] == ["OBJ0", "OBJ1", "OBJ2"]
    single = shared_data / "fits" / "decals_dr5_example_a.fits"
    assert discover([str(single)])[0]["source_path"] == str(single)


def test_readers_take_an_open_pyarrow_file_or_bytes_as_for_object_stores(tmp_path, jpegs):
    """What an object store hands over (a pyarrow NativeFile, or bytes) reads as the local file does."""
    write_galaxy10(tmp_path / "g.h5", jpegs[:3])
    write_hf_parquet(tmp_path / "hf.parquet", jpegs[:3])
    write_webdataset(tmp_path / "w.tar.gz", {"a.jpg": jpegs[0], "b.jpg": jpegs[1]})
    np.savez(tmp_path / "s.npz", images=rgb(jpegs[:3], 32))
    np.save(tmp_path / "s.npy", rgb(jpegs[:3], 32))
    for name in ["g.h5", "hf.parquet", "w.tar.gz", "s.npz", "s.npy"]:
        local = shard_records(str(tmp_path / name))
        data = (tmp_path / name).read_bytes()
        for source in (pa.BufferReader(data), pa.OSFile(str(tmp_path / name)), data):
            remote = shard_records(f"s3://bucket/{name}", source=source)
            assert [r["object_id"].replace("s3://bucket/", "") for r in remote] == \
                   [r["object_id"] for r in local], name
            layout = Layout.from_json(remote[-1]["shard_layout"])
            pos = remote[-1]["shard_pos"]
            [(got, value)] = list(read_shard_rows(f"s3://bucket/{name}", layout, [pos], source=source))
            assert got == pos and not isinstance(value, Exception), (name, value)


def test_stamp_band_axis_and_scaling_follow_the_array():
    assert stamp_pixels(np.zeros((64, 64, 3), np.uint8)).pixels.shape == (64, 64, 3)
    assert stamp_pixels(np.zeros((3, 64, 64), np.uint8)).pixels.shape == (64, 64, 3)
    assert stamp_pixels(np.ones((64, 64, 4), np.float32)).pixels.shape == (4, 64, 64)
    assert stamp_pixels(np.ones((64, 64), np.int32)).pixels.dtype == np.float32
    with pytest.raises(Exception, match="cannot tell the band axis"):
        stamp_pixels(np.ones((32, 64, 32), np.float32))


def test_a_manifest_row_naming_a_shard_stands_for_its_cutouts(tmp_path, jpegs):
    write_galaxy10(tmp_path / "g10.h5", jpegs[:3])
    (tmp_path / "one.jpg").write_bytes(jpegs[3])
    (tmp_path / "m.csv").write_text("path,object_id\ng10.h5,ignored\none.jpg,first\nmissing.h5,\n")
    records = discover([str(tmp_path / "m.csv")])
    assert [r["object_id"] for r in records] == ["g10.h5#0", "g10.h5#1", "g10.h5#2", "first", "missing.h5"]
    assert "cannot open HDF5 shard" in records[-1]["error"]


def test_an_unopenable_shard_is_one_error_row_naming_it(tmp_path):
    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all" * 100)
    (tmp_path / "broken.tar").write_bytes(b"")
    records = discover([str(tmp_path)])
    assert [r["object_id"] for r in records] == ["broken.h5", "broken.tar"]
    assert "cannot open HDF5 shard" in records[0]["error"]
    assert decode(records)["broken.tar"] == "cannot open tar shard: ReadError: empty file"


def test_a_shard_gone_after_listing_is_not_found_as_a_file_is_not_corrupt(tmp_path, jpegs):
    write_galaxy10(tmp_path / "g.h5", jpegs[:2])
    records = discover([str(tmp_path / "g.h5")])
    (tmp_path / "g.h5").unlink()  # storage splits the failed open: missing for good, not bad bytes
    out = read_and_preprocess(records_batch(pa.Table.from_pylist(records, schema=RECORD_SCHEMA)), Recipe())
    assert list(out["error"]) == ["file not found"] * 2 and list(out["error_kind"]) == ["not-found"] * 2


@pytest.mark.ray
def test_classify_a_folder_mixing_shards_and_files_split_into_chunks(tmp_path, jpegs, tiny_model, local_ray):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_galaxy10(inputs / "Galaxy10_DECals.h5", jpegs)
    write_hf_parquet(inputs / "hf.parquet", jpegs, missing=1)
    (inputs / "J0003.jpg").write_bytes(jpegs[3])
    pq.write_table(pa.table({"object_id": ["x"], "status": ["ok"]}), inputs / "old_catalog.parquet")
    summary = classify(RunConfig(inputs=[str(inputs)], out=str(tmp_path / "cat"), model=str(tiny_model),
                                 batch_size=4, task_rows=3, num_workers=2, progress=False))
    frame = pd.read_parquet(tmp_path / "cat")
    assert summary["rows"] == len(frame) == 2 * N + 1
    assert summary["errors"] == 1 and summary["id_collisions"] == 0
    # J0003.jpg's stem is an id the Parquet shard gives, so the file takes its path below the folder.
    jpeg = frame[frame.source_path.str.endswith("J0003.jpg")]
    assert frame.object_id.is_unique and jpeg.object_id.item() == "J0003.jpg"
    errors = frame[frame.status == "error"]
    assert list(errors.object_id) == ["J0001"] and "no image bytes" in errors.error.iloc[0]
    g10 = frame[frame.source_path.str.contains("Galaxy10_DECals.h5#")].sort_values("source_path")
    assert (g10.status == "ok").all() and g10.ra.iloc[0] == pytest.approx(150)


@pytest.mark.ray
def test_classify_opens_shards_and_fits_headers_on_the_workers_never_in_the_driver(tmp_path, jpegs, tiny_model,
                                                                                   local_ray, monkeypatch):
    """Discovery names files; a shard's cutouts, a FITS file's images and its header id are read by Ray
    tasks. The driver's own readers are made to fail: the run still finds every cutout, with the ids
    the rule gives when everything is read in one process (:func:`discover`)."""
    from astropy.io import fits

    from galaxy_infer import ids, shards

    inputs = tmp_path / "in"
    inputs.mkdir()
    write_galaxy10(inputs / "Galaxy10_DECals.h5", jpegs)
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(np.eye(40, dtype=np.float32) + i, name=f"OBJ{i}")
                                        for i in range(3)]).writeto(inputs / "field.fits")
    single = fits.PrimaryHDU(np.eye(40, dtype=np.float32))
    single.header["OBJID"] = "SDSS J9"
    single.writeto(inputs / "single.fits")
    (inputs / "J0003.jpg").write_bytes(jpegs[3])
    pq.write_table(pa.table({"object_id": ["x"], "status": ["ok"]}), inputs / "old_catalog.parquet")
    expected = {(r["object_id"], r["source_path"]) for r in discover([str(inputs)], id_keyword="OBJID")}

    def not_here(*args, **kwargs):
        raise AssertionError("the driver opened an input")

    for module, name in ((shards, "shard_records"), (shards, "is_parquet_shard"), (ids, "header_value")):
        monkeypatch.setattr(module, name, not_here)
    summary = classify(RunConfig(inputs=[str(inputs)], out=str(tmp_path / "cat"), model=str(tiny_model),
                                 id_keyword="OBJID", batch_size=4, task_rows=3, progress=False))
    frame = pd.read_parquet(tmp_path / "cat")
    assert summary["rows"] == len(frame) == len(expected) == N + 3 + 1 + 1 and summary["errors"] == 0
    assert set(zip(frame.object_id, frame.source_path)) == expected
    assert {"SDSS J9", "OBJ0", "OBJ1", "OBJ2", "J0003"} <= set(frame.object_id)


@pytest.mark.ray
def test_nightly_ingest_takes_each_shard_object_once_and_waits_for_a_fresh_shard(tmp_path, jpegs, tiny_model,
                                                                                 local_ray, monkeypatch):
    """Shards are opened by Ray tasks here too: the driver's own shard reader is made to fail."""
    from galaxy_infer import shards
    from galaxy_infer.ingest import IngestConfig, ingest

    def not_here(*args, **kwargs):
        raise AssertionError("the driver opened an input")

    monkeypatch.setattr(shards, "shard_records", not_here)
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    inbox.mkdir()
    write_galaxy10(inbox / "night1.h5", jpegs[:4])
    old = time.time() - 3600
    os.utime(inbox / "night1.h5", (old, old))

    def run(date: str) -> dict:
        return ingest(IngestConfig(inbox=str(inbox), catalog=str(catalog), date=date, model=str(tiny_model),
                                   batch_size=4, task_rows=2, settle_seconds=60, progress=False))

    first = run("2026-11-20")
    assert first["rows"] == 4 and first["unsettled"] == 0
    write_hf_parquet(inbox / "night2.parquet", jpegs)
    second = run("2026-11-21")
    assert second["rows"] == 0 and second["already_held"] == 4 and second["unsettled"] == N
    os.utime(inbox / "night2.parquet", (old, old))
    third = run("2026-11-22")
    assert third["rows"] == N and third["already_held"] == 4
    shutil.copy(inbox / "night1.h5", inbox / "again.h5")
    os.utime(inbox / "again.h5", (old, old))
    assert run("2026-11-23")["rows"] == 4
    assert run("2026-11-24")["rows"] == 0
