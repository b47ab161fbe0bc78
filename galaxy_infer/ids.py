"""Object ids: one rule, unique within a run, stable across nightly runs, collisions loud.

The rule, first match wins:

1. a manifest's ``object_id`` column, as given;
2. with ``--id-keyword KEY``, the value of FITS header keyword ``KEY`` (primary header, else the
   first image extension); other files fall through to 3;
3. the file name without its extension(s) (``a/J1234.fits.gz`` -> ``J1234``), when no other input
   of the run shares that stem and no id already taken (a manifest id of the run, an id the
   ingest catalog holds) equals it;
4. otherwise the file's path relative to its input root, extension kept, ``/``-separated
   (``a/cutout.fits``, ``b/cutout.fits``). The root is the folder given, a glob's fixed leading
   folder, a manifest's folder, or a single file's folder;
5. where that too is shared (two input folders holding the same relative path), the path as
   given (``night1/J1.jpg``, ``night2/J1.jpg``).

Cutouts inside a shard (see :mod:`galaxy_infer.shards`) follow the same rule, the shard standing
for the file: an id the shard holds (its id column, a WebDataset JSON id) counts as given, like a
manifest's (rule 1); otherwise the shard's own fallback (``<shard file name>#<row>``, the tar key,
the HDU's EXTNAME) plays the file name's part (rule 3), and when another input shares it the id is
``<shard path below the input root>#<row>`` (rule 4), else ``<shard path as given>#<row>`` (rule 5).
Listing in an object store gives paths below the prefix as for a folder (``s3://b/in/a/x.jpg``
under ``s3://b/in`` is ``a/x.jpg``).

Ids that still coincide (a manifest, header or shard giving one id to two cutouts) are
*collisions*: each such input gets a reason naming the other path, so it becomes an ``error`` row
(``classify``) or is reported and left for a later run (ingest), never silently a second row with
that id. The same file listed twice with the same id is one input.

The rule runs out of core: it is SQL over a Parquet *work list* (see :data:`WORK_SCHEMA`, written
by :mod:`galaxy_infer.worklist`) in DuckDB, which spills to disk past its memory limit, so the
driver's memory does not grow with the number of inputs. Counting stems needs the whole listing,
so ids are known only once the listing has ended.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator

import duckdb
import pyarrow as pa

from galaxy_infer import ledger, storage
from galaxy_infer.errors import ErrorKind
from galaxy_infer.ledger import Ledger
from galaxy_infer.readers import FITS_SUFFIXES, RASTER_SUFFIXES

COLLISION = "object id collision"
EXAMPLES = 3

WORK_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("source_path", pa.string()), ("norm_path", pa.string()), ("given_id", pa.string()),
    ("stem", pa.string()), ("relative_path", pa.string()), ("ra", pa.float64()), ("dec", pa.float64()),
    ("shard", pa.string()), ("shard_layout", pa.string()), ("shard_pos", pa.int64()), ("error", pa.string()),
    ("error_kind", pa.string()), ("mtime", pa.float64())])
"""One discovered input. ``seq`` is its place in the listing; ``norm_path`` the comparable path
(:func:`normalised_path`); ``given_id`` an id from a manifest, a shard or a FITS header (rules 1-2);
``stem`` the rule-3 name where it is not the file name's (shard rows); ``mtime`` the modification
time of the file (the shard, for a shard row) where the listing gave one."""

RECORD_COLUMNS = ("object_id", "source_path", "ra", "dec", "shard", "shard_layout", "shard_pos", "error", "error_kind")

_KNOWN_SUFFIX = "(?i)(" + "|".join(s.replace(".", "\\.") for s in FITS_SUFFIXES + RASTER_SUFFIXES) + ")$"
_STEM_SQL = f"""CASE WHEN regexp_matches(name, '{_KNOWN_SUFFIX}') THEN regexp_replace(name, '{_KNOWN_SUFFIX}', '')
                ELSE regexp_replace(name, '^(.+)\\.[^.]+$', '\\1') END"""
""":func:`galaxy_infer.readers.object_id_from_path` in SQL: a known cutout suffix, else ``Path.suffix``."""


def normalised_path(path: str) -> str:
    """A path's comparable form: absolute and normalised (URIs are left as they are)."""
    return path if "://" in path else os.path.normpath(os.path.abspath(path))


def connect(scratch: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB database in ``scratch`` (a local folder) with bounded memory."""
    return ledger.connect(os.path.join(scratch, "ids.duckdb"), os.path.join(scratch, "spill"))


def assign(con: duckdb.DuckDBPyConnection, worklist: str, id_keyword: str | None = None,
           held: Ledger | None = None, new_only: bool = False) -> int:
    """Run the rule over the Parquet work list at ``worklist``; leaves view ``records`` in ``con``
    and returns how many inputs it has (one file reached twice counts once).

    ``records`` has :data:`WORK_SCHEMA`'s columns plus ``object_id``, ``held`` (the nightly ingest:
    the catalog already has this file) and ``collision`` (the reason when another input, or a held
    object, has the same id). The ``held`` objects' ids are taken (rule 3) and their paths are
    not new. The ledger is streamed twice, as probes against the listing, so only the held rows
    that matter are kept; with an index, only the files that may hold them are read
    (:meth:`~galaxy_infer.ledger.Ledger.holding`). With ``new_only`` header ids are read, and
    collisions found, among new files only.
    """
    con.execute(f"""CREATE OR REPLACE TABLE listed AS SELECT seq, source_path, norm_path, given_id, stem, relative_path,
        error IS NOT NULL AS has_error FROM read_parquet('{worklist}')""")
    con.execute(f"""DELETE FROM listed WHERE seq IN (SELECT seq FROM (
        SELECT seq, row_number() OVER (PARTITION BY norm_path, given_id ORDER BY seq) AS rn
        FROM listed WHERE {_maybe_shared("listed", "norm_path, given_id")}) WHERE rn > 1)""")
    inputs = con.execute("SELECT count(*) FROM listed").fetchall()[0][0]
    held = held if held is not None else Ledger((), "")
    cwd = os.getcwd().replace("'", "''")
    paths = f"""SELECT norm_path FROM listed UNION ALL
        SELECT substr(norm_path, length('{cwd}/') + 1) FROM listed WHERE starts_with(norm_path, '{cwd}/')"""
    with held.holding(con, "source_path", paths).scan(con, "held_source"):
        con.execute(f"""CREATE OR REPLACE TABLE held_paths AS SELECT DISTINCT norm_path FROM (
            SELECT CASE WHEN contains(source_path, '://') OR starts_with(source_path, '/') THEN source_path
                        ELSE '{cwd}/' || source_path END AS norm_path FROM held_source)
            WHERE norm_path IN (SELECT norm_path FROM listed)""")
    con.execute("""CREATE OR REPLACE TABLE flagged AS SELECT l.*, h.norm_path IS NOT NULL AS held
        FROM listed l LEFT JOIN held_paths h USING (norm_path)""")
    if id_keyword:
        _header_ids(con, id_keyword, "NOT held" if new_only else "true")
    con.execute(f"""CREATE OR REPLACE TABLE derived AS
        SELECT seq, relative_path, source_path, coalesce(stem, {_STEM_SQL}) AS c0
        FROM (SELECT *, regexp_extract(source_path, '[^/]*$') AS name FROM flagged WHERE given_id IS NULL)""")
    candidates = """SELECT given_id FROM flagged UNION ALL SELECT c0 FROM derived
        UNION ALL SELECT relative_path FROM derived UNION ALL SELECT source_path FROM derived"""
    with held.holding(con, "object_id", candidates).scan(con, "held_source"):  # the ledger is probed, not loaded
        con.execute(f"""CREATE OR REPLACE TABLE held_ids AS
            SELECT object_id, min(source_path) AS held_path FROM held_source
            WHERE object_id IN ({candidates}) GROUP BY object_id""")
    con.execute("""CREATE OR REPLACE TABLE taken AS
        SELECT DISTINCT given_id AS id FROM flagged WHERE given_id IS NOT NULL
        UNION SELECT object_id FROM held_ids""")
    for before, after, fallback in (("c0", "c1", "relative_path"), ("c1", "c2", "source_path")):
        con.execute(f"""CREATE OR REPLACE TABLE derived AS
            WITH shared AS (SELECT seq FROM (
                SELECT seq, count(*) OVER (PARTITION BY {before}) AS n FROM derived
                WHERE {_maybe_shared("derived", before)}) WHERE n > 1)
            SELECT d.*, CASE WHEN s.seq IS NULL AND t.id IS NULL THEN d.{before} ELSE d.{fallback} END AS {after}
            FROM derived d LEFT JOIN shared s USING (seq) LEFT JOIN taken t ON t.id = d.{before}""")
    con.execute("""CREATE OR REPLACE TABLE named AS
        SELECT f.seq, f.source_path, f.held, coalesce(f.given_id, d.c2) AS object_id
        FROM flagged f LEFT JOIN derived d USING (seq)""")
    _collisions(con, "NOT held" if new_only else "true")
    con.execute(f"""CREATE OR REPLACE VIEW records AS
        SELECT w.*, i.object_id, i.held, i.collision FROM read_parquet('{worklist}') w JOIN named_ids i USING (seq)""")
    con.execute("DROP TABLE listed; DROP TABLE flagged; DROP TABLE derived; DROP TABLE named; DROP TABLE taken")
    return inputs


def _maybe_shared(table: str, columns: str) -> str:
    """A condition true for the rows of ``table`` whose ``columns`` another row may share.

    Own SQL, for speed: grouping 64-bit hashes first (a group-by on integers, measured several
    times cheaper than on the strings) leaves the exact count to the few candidates.
    """
    return f"""hash({columns}) IN (SELECT hash({columns}) AS k FROM {table} GROUP BY k HAVING count(*) > 1)"""


def _collisions(con: duckdb.DuckDBPyConnection, among: str) -> None:
    """Table ``records``: ``named`` with ``collision`` set where another input (or a held object) shares the id."""
    con.execute(f"""CREATE OR REPLACE TABLE clash AS
        WITH c AS (SELECT seq, object_id, source_path FROM named WHERE {among}
                   AND ({_maybe_shared(f"(SELECT object_id FROM named WHERE {among})", "object_id")}
                        OR object_id IN (SELECT object_id FROM held_ids))),
        groups AS (SELECT object_id, count(*) AS n, arg_min(source_path, seq) AS p1 FROM c GROUP BY object_id),
        hit AS (SELECT g.*, h.held_path FROM groups g LEFT JOIN held_ids h USING (object_id)
                WHERE g.n > 1 OR h.held_path IS NOT NULL),
        second AS (SELECT hit.object_id, arg_min(c.source_path, c.seq) FILTER (WHERE c.source_path <> hit.p1) AS p2
                   FROM hit JOIN c USING (object_id) GROUP BY hit.object_id)
        SELECT c.seq, c.object_id,
               CASE WHEN hit.held_path IS NOT NULL THEN hit.held_path || ' (already in the catalog)'
                    WHEN c.source_path <> hit.p1 THEN hit.p1 ELSE second.p2 END AS other,
               hit.n - count(*) OVER (PARTITION BY c.object_id, c.source_path)
                 + (hit.held_path IS NOT NULL)::INT AS others
        FROM c JOIN hit USING (object_id) JOIN second USING (object_id)""")
    reasons = con.cursor().sql("SELECT seq, object_id, other, others FROM clash WHERE others > 0"
                                   ).to_arrow_reader()
    con.execute("""CREATE OR REPLACE TABLE reasons (seq BIGINT, collision VARCHAR)""")
    for batch in reasons:
        seq, oid, other, others = (batch.column(i).to_pylist() for i in range(4))
        text = [collision_reason(o, p, n) for o, p, n in zip(oid, other, others)]
        con.register("batch_reasons", pa.table({"seq": seq, "collision": text}))
        con.execute("INSERT INTO reasons SELECT * FROM batch_reasons")
        con.unregister("batch_reasons")
    con.execute("""CREATE OR REPLACE TABLE named_ids AS
        SELECT n.seq, n.object_id, n.held, r.collision FROM named n LEFT JOIN reasons r USING (seq)""")
    con.execute("DROP TABLE clash; DROP TABLE reasons")


def collision_reason(object_id: str, other: str, others: int) -> str:
    more = f" and {others - 1} more" if others > 1 else ""
    return (f"{COLLISION}: {object_id!r} is also the id of {other}{more}; "
            "give each file its own id (manifest object_id or FITS header keyword)")


def _header_ids(con: duckdb.DuckDBPyConnection, keyword: str, among: str) -> None:
    """Rule 2: ``given_id`` from FITS header ``keyword``, read a batch of files at a time."""
    suffixes = " OR ".join(f"ends_with(lower(source_path), '{s}')" for s in FITS_SUFFIXES)
    batches = con.cursor().sql(f"""SELECT seq, source_path FROM flagged
        WHERE given_id IS NULL AND NOT has_error AND ({suffixes}) AND {among}""").to_arrow_reader(10_000)
    con.execute("CREATE OR REPLACE TABLE header_ids (seq BIGINT, id VARCHAR)")
    for batch in batches:
        found = [(s, v) for s, v in zip(batch.column(0).to_pylist(),
                                        map(lambda p: header_value(p, keyword), batch.column(1).to_pylist()))
                 if v is not None]
        if found:
            con.register("batch_ids", pa.table({"seq": [s for s, _ in found], "id": [v for _, v in found]}))
            con.execute("INSERT INTO header_ids SELECT * FROM batch_ids")
            con.unregister("batch_ids")
    con.execute("""UPDATE flagged SET given_id = h.id FROM header_ids h WHERE flagged.seq = h.seq;
                   DROP TABLE header_ids""")


def header_value(path: str, keyword: str) -> str | None:
    """FITS header ``keyword`` of the file at ``path`` (primary header, else the first image's), or None."""
    from astropy.io import fits

    try:
        source = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(source, memmap=False, lazy_load_hdus=True) as hdul:
                value = None
                for hdu in hdul:
                    if keyword in hdu.header:
                        value = hdu.header[keyword]
                        break
                    if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
                        break  # the image's own header lacks it
    except Exception:  # noqa: BLE001 - an unreadable file keeps the file-name rule; decoding says why
        return None
    return str(value).strip() if value is not None and str(value).strip() else None


def record_batches(con: duckdb.DuckDBPyConnection, where: str = "true", order: str = "seq",
                   rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """``records`` as catalog input records (:data:`RECORD_COLUMNS`), collisions as error rows, in ``order``."""
    return con.sql(f"""SELECT object_id, source_path, ra, dec, shard, shard_layout, shard_pos,
        coalesce(error, collision) AS error,
        CASE WHEN error IS NOT NULL THEN error_kind WHEN collision IS NOT NULL THEN '{ErrorKind.ID_COLLISION.value}'
        END AS error_kind
        FROM records WHERE {where} ORDER BY {order}""").to_arrow_reader(rows)
