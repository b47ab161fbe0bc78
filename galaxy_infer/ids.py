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
so a run does not wait for it: tasks start on each unit's *provisional* id (rule 1, else rule 3's
stem, :func:`provisional_records`), and once the listing has ended :func:`overrides` names the
few units whose id or status the whole rule changes (a shared stem, a collision, a second listing
of one input), which are amended before anything is committed.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

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
``stem`` the rule-3 name (the file name's stem, :func:`stems`, or a shard's fallback); ``mtime`` the modification
time of the file (the shard, for a shard row) where the listing gave one."""

OVERRIDES_SCHEMA = pa.schema([("seq", pa.int64()), ("source_path", pa.string()), ("object_id", pa.string()),
                              ("collision", pa.string()), ("dropped", pa.bool_())])
"""What :func:`overrides` yields."""

RECORD_COLUMNS = ("object_id", "source_path", "ra", "dec", "shard", "shard_layout", "shard_pos", "error", "error_kind")

_KNOWN_SUFFIX = "(?i)(" + "|".join(s.replace(".", "\\.") for s in FITS_SUFFIXES + RASTER_SUFFIXES) + ")$"


def stems(paths: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Rule 3's name of each path, the file name without its extension(s) (``a/b/J1234.fits.gz`` ->
    ``J1234``): a known cutout suffix, else ``Path.suffix``, comes off. Arrow compute, not Python per
    path: discovery names every input with it."""
    name = pc.replace_substring_regex(paths, r"^.*/", "")
    return pc.if_else(pc.match_substring_regex(name, _KNOWN_SUFFIX), pc.replace_substring_regex(name, _KNOWN_SUFFIX, ""),
                      pc.replace_substring_regex(name, r"^(.+)\.[^.]+$", r"\1"))


def provisional_records(listed: pa.RecordBatch) -> pa.RecordBatch:
    """Work list rows as pipeline records (:data:`RECORD_COLUMNS`) with the id each has unless the
    rule, once the whole listing is known, says otherwise: the given id, else the stem."""
    return pa.RecordBatch.from_pydict({"object_id": pc.coalesce(listed.column("given_id"), listed.column("stem")),
                                       **{name: listed.column(name) for name in RECORD_COLUMNS[1:]}})


def normalised_path(path: str) -> str:
    """A path's comparable form: absolute and normalised (URIs are left as they are)."""
    return path if "://" in path else os.path.normpath(os.path.abspath(path))


SMALL_RUN = 10_000_000
"""Listed inputs up to which the rule's DuckDB is held to :data:`SMALL_RUN_MEMORY`."""
SMALL_RUN_MEMORY = "128MB"


def connect(scratch: str, inputs: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database with bounded memory that spills to ``scratch`` (a local folder),
    for the rule over ``inputs`` listed inputs.

    In memory rather than a file in ``scratch``: the rule's tables are scratch, and writing them to
    a database file (compressed, checkpointed) took about a quarter of its CPU (measured at 10^6 rows).
    One thread: the rule runs beside the run's last tasks, and DuckDB's per-thread hash tables set
    the driver's peak (measured at 10^6 inputs: +117 MB with two threads, +97 MB with one). Up to
    :data:`SMALL_RUN` inputs DuckDB keeps to 128 MB and spills the rest (10^7 inputs: +172 MB
    instead of +472 MB, as fast); past it, 512 MB, as 10^8 inputs could not spill within 128 MB.
    """
    con = ledger.connect(":memory:", os.path.join(scratch, "spill"))
    con.execute("SET threads = 1")
    if inputs is not None and inputs <= SMALL_RUN:
        con.execute(f"SET memory_limit = '{SMALL_RUN_MEMORY}'")
    return con


HeaderReader = Callable[[list[str], str], list["str | None"]]
"""Reads one header keyword of many FITS files: :func:`header_values`, or Ray tasks in a run."""


def assign(con: duckdb.DuckDBPyConnection, worklist: str, id_keyword: str | None = None,
           held: Ledger | None = None, new_only: bool = False, read_headers: HeaderReader | None = None) -> int:
    """Run the rule over the Parquet work list ``worklist`` (a file or a glob); leaves views
    ``records`` and ``named`` in ``con`` and returns how many inputs it has (one file reached twice
    counts once).

    ``records`` has :data:`WORK_SCHEMA`'s columns plus ``object_id``, ``held`` (the nightly ingest:
    the catalog already has this file) and ``collision`` (the reason when another input, or a held
    object, has the same id). The ``held`` objects' ids are taken (rule 3) and their paths are
    not new. The ledger is streamed twice, as probes against the listing, so only the held rows
    that matter are kept; with an index, only the files that may hold them are read
    (:meth:`~galaxy_infer.ledger.Ledger.holding`). With ``new_only`` header ids are read (by
    ``read_headers``, :func:`header_values` by default), and collisions found, among new files only.

    Only what differs from an input's provisional id (:func:`provisional_records`) is stored:
    second listings (``dropped``), header ids, the rule-4/5 fallbacks and collisions. Whether a
    value is shared is asked of 64-bit hashes first (:func:`_maybe_shared`) and confirmed on the
    few candidates, so the common run (unique ids or stems) makes no table that grows with its inputs.
    """
    work = f"read_parquet('{worklist}')"
    con.execute(f"""CREATE OR REPLACE TABLE dropped AS SELECT seq FROM (
        SELECT seq, row_number() OVER (PARTITION BY norm_path, given_id ORDER BY seq) AS rn
        FROM {work} WHERE {_maybe_shared(work, "norm_path, given_id")}) WHERE rn > 1""")
    con.execute(f"CREATE OR REPLACE VIEW listed AS SELECT * FROM {work} ANTI JOIN dropped USING (seq)")
    listed, given = con.execute(f"SELECT count(*), count(given_id) FROM {work}").fetchall()[0]
    inputs = listed - con.execute("SELECT count(*) FROM dropped").fetchall()[0][0]
    held = held if held is not None else Ledger((), "")
    con.execute("CREATE OR REPLACE TABLE held_seq (seq BIGINT); CREATE OR REPLACE TABLE header_ids (seq BIGINT, id VARCHAR)")
    con.execute("CREATE OR REPLACE TABLE held_ids (object_id VARCHAR, held_path VARCHAR)")
    if held.files:
        cwd = os.getcwd().replace("'", "''")
        paths = f"""SELECT norm_path FROM listed UNION ALL
            SELECT substr(norm_path, length('{cwd}/') + 1) FROM listed WHERE starts_with(norm_path, '{cwd}/')"""
        with held.holding(con, "source_path", paths).scan(con, "held_source"):
            con.execute(f"""INSERT INTO held_seq SELECT seq FROM listed WHERE norm_path IN (
                SELECT CASE WHEN contains(source_path, '://') OR starts_with(source_path, '/') THEN source_path
                            ELSE '{cwd}/' || source_path END FROM held_source)""")
    con.execute("""CREATE OR REPLACE VIEW names AS
        SELECT l.* REPLACE (coalesce(h.id, l.given_id) AS given_id), s.seq IS NOT NULL AS held
        FROM listed l LEFT JOIN header_ids h USING (seq) LEFT JOIN held_seq s USING (seq)""")
    if id_keyword:
        _header_ids(con, id_keyword, "NOT held" if new_only else "true", read_headers or header_values)
        given = con.execute("SELECT count(given_id) FROM names").fetchall()[0][0]
    if held.files:
        candidates = """SELECT given_id FROM names UNION ALL SELECT stem FROM names WHERE given_id IS NULL
            UNION ALL SELECT relative_path FROM names WHERE given_id IS NULL
            UNION ALL SELECT source_path FROM names WHERE given_id IS NULL"""
        with held.holding(con, "object_id", candidates).scan(con, "held_source"):  # probed, not loaded
            con.execute(f"""INSERT INTO held_ids SELECT object_id, min(source_path) FROM held_source
                WHERE object_id IN ({candidates}) GROUP BY object_id""")
    _fallbacks(con, derived=listed > given, mixed=0 < given < listed)
    con.execute("""CREATE OR REPLACE VIEW named AS
        SELECT n.*, coalesce(n.given_id, f.object_id, n.stem) AS object_id
        FROM names n LEFT JOIN fallback f USING (seq)""")
    _collisions(con, "NOT held" if new_only else "true")
    con.execute("CREATE OR REPLACE VIEW records AS SELECT n.*, r.collision FROM named n LEFT JOIN reasons r USING (seq)")
    return inputs


def _fallbacks(con: duckdb.DuckDBPyConnection, derived: bool, mixed: bool) -> None:
    """Table ``fallback`` (``seq``, ``object_id``): the units without a given id that do not keep their stem.

    Rule 3 fails for a stem another unit shares, or one taken (a given or held id): set ``s0``;
    those units try their relative path (rule 4), which fails when it equals another unit's
    relative path or a stem that kept (``t1`` holds both sides) or is taken; those take the path as
    given (rule 5). ``derived``: some unit has no given id; ``mixed``: some have one too.
    """
    con.execute("CREATE OR REPLACE TABLE fallback (seq BIGINT, object_id VARCHAR)")
    if not derived:
        return
    con.execute("CREATE OR REPLACE VIEW derived AS SELECT seq, stem, relative_path, source_path FROM names "
                "WHERE given_id IS NULL")
    con.execute("""CREATE OR REPLACE VIEW taken AS
        SELECT given_id AS id FROM names WHERE given_id IS NOT NULL UNION ALL SELECT object_id FROM held_ids""")
    by_given = "OR hash(stem) IN (SELECT hash(id) FROM taken)" if mixed else "OR stem IN (SELECT object_id FROM held_ids)"
    con.execute(f"""CREATE OR REPLACE TABLE candidates AS SELECT * FROM derived
        WHERE {_maybe_shared("derived", "stem")} {by_given}""")
    con.execute("""CREATE OR REPLACE TABLE s0 AS SELECT seq, stem, relative_path, source_path FROM (
        SELECT *, count(*) OVER (PARTITION BY stem) AS n FROM candidates)
        WHERE n > 1 OR stem IN (SELECT id FROM taken WHERE id IN (SELECT stem FROM candidates))""")
    if not con.execute("SELECT count(*) FROM s0").fetchall()[0][0]:
        return
    con.execute("""CREATE OR REPLACE TABLE t1 AS
        SELECT seq, relative_path AS c1, source_path FROM s0
        UNION ALL SELECT seq, stem, source_path FROM derived
        WHERE stem IN (SELECT relative_path FROM s0) AND seq NOT IN (SELECT seq FROM s0)""")
    con.execute("""INSERT INTO fallback SELECT seq, CASE WHEN n > 1 OR c1 IN (SELECT id FROM taken
                                                     WHERE id IN (SELECT c1 FROM t1)) THEN source_path ELSE c1 END
        FROM (SELECT *, count(*) OVER (PARTITION BY c1) AS n FROM t1)""")


def _maybe_shared(table: str, columns: str) -> str:
    """A condition true for the rows of ``table`` whose ``columns`` another row may share.

    Own SQL, for speed: grouping 64-bit hashes first (a group-by on integers, measured several
    times cheaper than on the strings) leaves the exact count to the few candidates.
    """
    return f"""hash({columns}) IN (SELECT hash({columns}) AS k FROM {table} GROUP BY k HAVING count(*) > 1)"""


def _collisions(con: duckdb.DuckDBPyConnection, among: str) -> None:
    """Table ``reasons`` (``seq``, ``collision``): the units of ``named`` whose id another input (or a held object) has."""
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
    con.execute("DROP TABLE clash")


def collision_reason(object_id: str, other: str, others: int) -> str:
    more = f" and {others - 1} more" if others > 1 else ""
    return (f"{COLLISION}: {object_id!r} is also the id of {other}{more}; "
            "give each file its own id (manifest object_id or FITS header keyword)")


def _header_ids(con: duckdb.DuckDBPyConnection, keyword: str, among: str, read: HeaderReader) -> None:
    """Rule 2: ``given_id`` from FITS header ``keyword``, read a batch of files at a time."""
    suffixes = " OR ".join(f"ends_with(lower(source_path), '{s}')" for s in FITS_SUFFIXES)
    con.execute(f"""CREATE OR REPLACE TABLE header_todo AS SELECT seq, source_path FROM names
        WHERE given_id IS NULL AND error IS NULL AND ({suffixes}) AND {among}""")
    for batch in con.cursor().sql("SELECT * FROM header_todo").to_arrow_reader(10_000):
        found = [(s, v) for s, v in zip(batch.column(0).to_pylist(),
                                        read(batch.column(1).to_pylist(), keyword))
                 if v is not None]
        if found:
            con.register("batch_ids", pa.table({"seq": [s for s, _ in found], "id": [v for _, v in found]}))
            con.execute("INSERT INTO header_ids SELECT * FROM batch_ids")
            con.unregister("batch_ids")
    con.execute("DROP TABLE header_todo")


def header_values(paths: list[str], keyword: str) -> list[str | None]:
    """:func:`header_value` of each path, 32 at a time from an object store (one GET each)."""
    return storage.map_reads(lambda path: header_value(path, keyword), paths, paths[0] if paths else "")


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


def overrides(con: duckdb.DuckDBPyConnection, worklist: str, rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """After :func:`assign`: the units whose final record differs from its provisional one
    (:func:`provisional_records`), in listing order: ``seq``, ``source_path``, the final ``object_id``,
    the ``collision`` reason (only where discovery found no error first) and ``dropped`` (a second
    listing of one input). Few, unless many stems collide; only they are looked up."""
    return con.sql(f"""WITH changed AS (SELECT seq FROM dropped UNION SELECT seq FROM header_ids
                                      UNION SELECT seq FROM fallback UNION SELECT seq FROM reasons)
        SELECT w.seq, w.source_path, n.object_id, CASE WHEN w.error IS NULL THEN r.collision END AS collision,
               n.seq IS NULL AS dropped
        FROM (SELECT * FROM read_parquet('{worklist}') WHERE seq IN (SELECT seq FROM changed)) w
        LEFT JOIN (SELECT * FROM named WHERE seq IN (SELECT seq FROM changed)) n USING (seq)
        LEFT JOIN reasons r USING (seq)
        WHERE n.seq IS NULL OR (w.error IS NULL AND r.collision IS NOT NULL)
           OR n.object_id IS DISTINCT FROM coalesce(w.given_id, w.stem)
        ORDER BY w.seq""").to_arrow_reader(rows)


def record_batches(con: duckdb.DuckDBPyConnection, where: str = "true", order: str = "seq",
                   rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """``records`` as catalog input records (:data:`RECORD_COLUMNS`), collisions as error rows, in ``order``."""
    return con.sql(f"""SELECT object_id, source_path, ra, dec, shard, shard_layout, shard_pos,
        coalesce(error, collision) AS error,
        CASE WHEN error IS NOT NULL THEN error_kind WHEN collision IS NOT NULL THEN '{ErrorKind.ID_COLLISION.value}'
        END AS error_kind
        FROM records WHERE {where} ORDER BY {order}""").to_arrow_reader(rows)
