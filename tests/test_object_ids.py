"""Object ids: unique within a run or loudly colliding; stable for held objects across nightly runs."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galaxy_infer import ids
from galaxy_infer.ingest import IngestConfig, pending_records
from galaxy_infer.ledger import LEDGER_SCHEMA, Ledger
from galaxy_infer.worklist import Listing, check_inputs, discover, scratch_folder


def touch(root: Path, *names: str, age: float = 0.0) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"0")
        if age:
            os.utime(path, (time.time() - age, time.time() - age))


def write_fits(path: Path, **header) -> None:
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.ones((8, 8), np.float32))
    hdu.header.update(header)
    hdu.writeto(path)


def test_a_stem_is_the_file_name_without_its_extensions():
    paths = ["/d/J1234+5678.fits.gz", "x/587722952767439450.jpg", "s3://b/p/A.FITS", "a.b.png", "noext", "x/.hidden"]
    assert ids.stems(pa.array(paths)).to_pylist() == ["J1234+5678", "587722952767439450", "A", "a.b", "noext", ".hidden"]


def test_unique_stems_stay_the_id_and_shared_stems_take_the_relative_path(tmp_path):
    touch(tmp_path, "a/cutout.fits", "b/cutout.fits", "b/J1.jpg", "c/x.jpg", "c/x.fits")
    found = {r["source_path"]: r for r in discover([str(tmp_path)])}
    assert {os.path.relpath(p, tmp_path): r["object_id"] for p, r in found.items()} == {
        "a/cutout.fits": "a/cutout.fits", "b/cutout.fits": "b/cutout.fits", "b/J1.jpg": "J1",
        "c/x.jpg": "c/x.jpg", "c/x.fits": "c/x.fits"}
    assert not any("error" in r for r in found.values())


def test_a_glob_and_a_single_file_take_paths_below_their_own_folder(tmp_path):
    touch(tmp_path, "a/x.jpg", "b/x.jpg", "b/sub/y.jpg", "c/y.jpg")
    records = discover([str(tmp_path / "a" / "*.jpg"), str(tmp_path / "b" / "**" / "*.jpg"),
                        str(tmp_path / "c" / "y.jpg")])
    # x.jpg is the relative path in two roots: the paths as given tell them apart.
    assert sorted(r["object_id"] for r in records) == sorted([str(tmp_path / "a" / "x.jpg"), "sub/y.jpg",
                                                              str(tmp_path / "b" / "x.jpg"), "y.jpg"])
    assert not any("error" in r for r in records)


def test_folders_named_relatively_give_ids_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path, "night1/J1.jpg", "night2/J1.jpg", "night2/J2.jpg")
    assert [r["object_id"] for r in discover(["night1", "night2/"])] == ["night1/J1.jpg", "night2/J1.jpg", "J2"]


def test_a_manifest_giving_one_id_to_two_files_makes_both_error_rows_naming_each_other(tmp_path):
    (tmp_path / "m.csv").write_text("path,object_id\np.jpg,J1\nq.jpg,J1\nr.jpg,J2\n")
    p, q, r = discover([str(tmp_path / "m.csv")])
    assert str(tmp_path / "q.jpg") in p["error"] and str(tmp_path / "p.jpg") in q["error"]
    assert "error" not in r


def test_a_file_stem_equal_to_a_manifest_id_takes_its_relative_path(tmp_path):
    touch(tmp_path, "dir/J1.jpg")
    (tmp_path / "m.csv").write_text("path,object_id\nelse.jpg,J1\n")
    records = discover([str(tmp_path / "m.csv"), str(tmp_path / "dir")])
    assert [r["object_id"] for r in records] == ["J1", "J1.jpg"]
    assert not any("error" in r for r in records)


def test_one_file_reached_twice_is_one_input(tmp_path):
    touch(tmp_path, "a/x.jpg", "a/y.jpg")
    records = discover([str(tmp_path / "a"), str(tmp_path / "a" / "*.jpg"), str(tmp_path / "a" / "x.jpg")])
    assert sorted(r["object_id"] for r in records) == ["x", "y"]


def test_id_keyword_reads_the_fits_header_and_other_files_keep_the_file_rule(tmp_path):
    write_fits(tmp_path / "a.fits", OBJID="SDSS J1")
    write_fits(tmp_path / "b.fits")
    touch(tmp_path, "c.jpg")
    records = discover([str(tmp_path)], id_keyword="OBJID")
    assert [r["object_id"] for r in records] == ["SDSS J1", "b", "c"]
    assert [r["object_id"] for r in discover([str(tmp_path)])] == ["a", "b", "c"]


def test_missing_input_arguments_raise_before_any_work(tmp_path):
    touch(tmp_path, "x.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        discover([str(tmp_path / "x.jpg"), str(tmp_path / "nope.jpg")])
    with pytest.raises(FileNotFoundError, match="no cutout matches"):
        discover([str(tmp_path / "*.png")])
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    with pytest.raises(FileNotFoundError, match="broken symbolic link"):
        discover([str(tmp_path / "link.jpg")])
    (tmp_path / "m.csv").write_text("path\nmissing.jpg\n")
    assert discover([str(tmp_path / "m.csv")])[0]["object_id"] == "missing"  # a manifest entry: a row


def test_a_file_name_that_is_not_utf8_becomes_a_record_with_a_reason(tmp_path):
    folder = os.fsencode(tmp_path)
    with open(os.path.join(folder, b"caf\xe9.jpg"), "wb") as f:
        f.write(b"0")
    touch(tmp_path, "good.jpg")
    bad, good = sorted(discover([str(tmp_path)]), key=lambda r: r["object_id"])
    assert bad["object_id"] == "caf\\xe9" and bad["source_path"].endswith("caf\\xe9.jpg")
    assert "not valid UTF-8" in bad["error"] and "error" not in good
    bad["source_path"].encode("utf-8")


# The nightly ingest: held files keep their ids; a new colliding file is classified under a new id.

def config(inbox: Path, **kw) -> IngestConfig:
    return IngestConfig(inbox=str(inbox), catalog=str(inbox.parent / "catalog"), **{"settle_seconds": 0, **kw})


def pending_table(inbox: Path, held: dict[str, str], **kw) -> tuple[pa.Table, dict]:
    with scratch_folder() as scratch:
        ledger = os.path.join(scratch, "ledger.parquet")
        pq.write_table(pa.table({"object_id": list(held), "source_path": list(held.values()),
                                 "model_id": ["m"] * len(held), "error": [None] * len(held)},
                                schema=LEDGER_SCHEMA), ledger)
        work, counts = pending_records(config(inbox, **kw), Ledger((ledger,), "m"), scratch)
        return pq.read_table(work.path), counts


def pending(inbox: Path, held: dict[str, str], **kw) -> tuple[dict[str, str], dict]:
    table, counts = pending_table(inbox, held, **kw)
    return {os.path.relpath(p, inbox): i for p, i in zip(table.column("source_path").to_pylist(),
                                                          table.column("object_id").to_pylist())}, counts


def test_a_new_file_sharing_a_held_stem_gets_its_relative_path_and_the_held_one_keeps_its_id(tmp_path):
    inbox = tmp_path / "inbox"
    touch(inbox, "a/J1.jpg")
    night1, _ = pending(inbox, {})
    assert night1 == {"a/J1.jpg": "J1"}
    touch(inbox, "b/J1.jpg")
    night2, counts = pending(inbox, {"J1": str(inbox / "a" / "J1.jpg")})
    assert night2 == {"b/J1.jpg": "b/J1.jpg"} and counts["already_held"] == 1 and counts["id_collisions"] == 0
    (inbox / "a" / "J1.jpg").unlink()  # the inbox is cleaned after ingest: still a new object, not a repeat
    night3, _ = pending(inbox, {"J1": str(inbox / "a" / "J1.jpg")})
    assert night3 == {"b/J1.jpg": "b/J1.jpg"}


def test_a_settling_file_does_not_lose_its_object_to_a_file_sharing_its_stem(tmp_path):
    inbox = tmp_path / "inbox"
    touch(inbox, "a/J1.jpg")
    touch(inbox, "b/J1.jpg", age=3600)
    night1, counts = pending(inbox, {}, settle_seconds=60)
    assert night1 == {"b/J1.jpg": "b/J1.jpg"} and counts["unsettled"] == 1
    night2, _ = pending(inbox, {"b/J1.jpg": str(inbox / "b" / "J1.jpg")})
    assert night2 == {"a/J1.jpg": "a/J1.jpg"}


def test_two_new_files_arriving_together_both_get_distinct_ids(tmp_path):
    inbox = tmp_path / "inbox"
    touch(inbox, "a/cutout.fits", "b/cutout.fits", "c/J2.jpg")
    night, counts = pending(inbox, {})
    assert night == {"a/cutout.fits": "a/cutout.fits", "b/cutout.fits": "b/cutout.fits", "c/J2.jpg": "J2"}
    assert counts["inbox"] == 3


def test_header_ids_that_collide_are_reported_every_run_and_never_classified(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_fits(inbox / "p.fits", OBJID="X1")
    write_fits(inbox / "q.fits", OBJID="X1")
    write_fits(inbox / "r.fits", OBJID="X2")
    night, counts = pending(inbox, {}, id_keyword="OBJID")
    assert night == {"r.fits": "X2"} and counts["id_collisions"] == 2
    assert any(str(inbox / "q.fits") in e for e in counts["id_collision_examples"])
    write_fits(inbox / "s.fits", OBJID="X2")
    night, counts = pending(inbox, {"X2": str(inbox / "r.fits")}, id_keyword="OBJID")
    assert night == {} and counts["id_collisions"] == 3 and counts["already_held"] == 1
    assert any(f"{inbox / 'r.fits'} (already in the catalog)" in e for e in counts["id_collision_examples"])


def test_the_ingest_records_a_file_name_that_is_not_utf8_as_an_error_row_once(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with open(os.path.join(os.fsencode(inbox), b"J\xff.jpg"), "wb") as f:
        f.write(b"0")
    table, _ = pending_table(inbox, {})
    [record] = table.to_pylist()
    assert "not valid UTF-8" in record["error"] and record["object_id"] == "J\\xff"
    table, counts = pending_table(inbox, {record["object_id"]: record["source_path"]})
    assert table.num_rows == 0 and counts["already_held"] == 1


def test_a_manifest_path_that_is_not_utf8_is_a_record_with_a_reason_and_a_bad_id_column_names_the_manifest(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"path\ncaf\xe9.jpg\nok.jpg\n")
    bad, ok = discover([str(tmp_path / "m.csv")])
    assert "not valid UTF-8" in bad["error"] and bad["source_path"].endswith("caf\\xe9.jpg")
    assert ok["object_id"] == "ok" and "error" not in ok
    (tmp_path / "ids.csv").write_bytes(b"path,object_id\na.jpg,caf\xe9\n")
    with pytest.raises(ValueError, match="ids.csv"):
        discover([str(tmp_path / "ids.csv")])


def test_dated_inbox_folders_list_only_tonight_and_still_avoid_held_ids(tmp_path):
    # The layout under which a night lists only what is new: one inbox folder per night, each given as --inbox.
    touch(tmp_path / "inbox" / "2026-12-01", "J1.jpg", "J2.jpg")
    night1, _ = pending(tmp_path / "inbox" / "2026-12-01", {})
    assert night1 == {"J1.jpg": "J1", "J2.jpg": "J2"}
    night = tmp_path / "inbox" / "2026-12-01"
    held = {"J1": str(night / "J1.jpg"), "J2": str(night / "J2.jpg")}
    touch(tmp_path / "inbox" / "2026-12-02", "J1.jpg", "J3.jpg")
    night2, counts = pending(tmp_path / "inbox" / "2026-12-02", held)
    assert night2 == {"J1.jpg": "J1.jpg", "J3.jpg": "J3"} and counts["inbox"] == 2 and counts["already_held"] == 0


def test_a_listing_hands_out_its_first_chunk_long_before_it_has_listed_everything(tmp_path):
    """Work starts on the first listed batch, whatever the input's size; ids are provisional until the end."""
    rows = 1_000_000
    manifest = tmp_path / "m.csv"
    with open(manifest, "w") as f:
        f.write("path,object_id\n")
        f.writelines(f"a/g{i}.jpg,{'' if i % 2 else f'o{i}'}\n" for i in range(rows))
    with scratch_folder() as scratch:
        listing = Listing([str(manifest)], os.path.join(scratch, "listed"))
        first = next(listing.chunks(1024))
        assert not listing.finished and listing.num_rows is None
        assert first.num_rows == 1024 and first.column("object_id").to_pylist()[:2] == ["o0", "g1"]
        assert listing.wait() == rows


def test_a_listing_cuts_each_chunk_to_the_size_asked_for_it_then(tmp_path):
    """Chunk sizes may change as the run goes (guided scheduling): rows stay in order, none lost or repeated."""
    touch(tmp_path / "in", *(f"g{i:03d}.jpg" for i in range(300)))
    wanted = {0: 64, 64: 64, 128: 10, 138: 100}  # by rows taken before; then 3
    with scratch_folder() as scratch:
        listing = Listing([str(tmp_path / "in")], os.path.join(scratch, "listed"))
        listing.wait()
        chunks = list(listing.chunks(64, lambda taken: wanted.get(taken, 3)))
    assert [c.num_rows for c in chunks] == [64, 64, 10, 100] + [3] * 20 + [2]
    assert [p for c in chunks for p in c.column("source_path").to_pylist()] == \
        [str(tmp_path / "in" / f"g{i:03d}.jpg") for i in range(300)]


def test_a_missing_input_argument_is_found_before_the_listing_starts(tmp_path):
    touch(tmp_path / "in", "a.jpg")
    with pytest.raises(FileNotFoundError, match="typo does not exist"):
        check_inputs([str(tmp_path / "in"), str(tmp_path / "typo")])
    check_inputs([str(tmp_path / "in"), str(tmp_path / "in" / "*.jpg")])
