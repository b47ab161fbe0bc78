"""Survey-scale discovery, ids and the nightly ledger, without classifying (issue 25's benchmarks).

Each case runs in a fresh Python process (``python -m benchmarks.scale --case ...``) so its peak
memory is its own: ``VmHWM`` of that process (the driver of a real run), CPU seconds of all its
threads (DuckDB's included), wall time to the first chunk of records ready to submit and to the
end (every chunk read as the driver submits them, the id rule, the rows it amends).

- ``manifest``: a Parquet manifest of N rows (real cutout paths repeated, unique ``object_id``s),
  discovered into a work list and given ids. Run at 1e5 and 1e6 to compare memory and CPU per row.
- ``stems``: as ``manifest`` but with no ``object_id`` column and unique file names, so every id
  goes through the stem count (rule 3).
- ``tree``: a folder tree of N empty ``.jpg`` files (1,000 per folder), listed and given ids.
- ``night``: 1,000 new files in an inbox against a catalog already holding N objects: the ledger
  anti-join and the id rule with every held id taken (``pending_records``), each night bringing the
  ledger's index (in ``WORKDIR/cache``) up to date first. Measured twice: ``cold_*`` with no index
  (the first night after an upgrade builds it from every file), then a night with the index.

    python -m benchmarks.scale --workdir /tmp/scale --rows 100000 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SOURCE = Path("/work/shared/data/gzdecals_rings/images")
WRITE_ROWS = 1_000_000
CHUNK_ROWS = 5_000
"""Rows per committed ingest file when the figures were measured; files now hold one task's rows (at most
``IngestConfig.chunk_rows``, 1,024 for the bundled models)."""


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_manifest(path: Path, rows: int, with_ids: bool) -> None:
    real = sorted(str(p) for p in SOURCE.glob("*.jpg"))[:1000] or [f"/data/cutout{i}.jpg" for i in range(1000)]
    with pq.ParquetWriter(path, pa.schema([("path", pa.string())] + ([("object_id", pa.string())] if with_ids else []))) as w:
        for start in range(0, rows, WRITE_ROWS):
            n = min(WRITE_ROWS, rows - start)
            if with_ids:
                columns = {"path": pa.array([real[i % len(real)] for i in range(start, start + n)]),
                           "object_id": pa.array([f"obj{i:010d}" for i in range(start, start + n)])}
            else:
                columns = {"path": pa.array([f"cutouts/{i // 1000:06d}/G{i:010d}.jpg" for i in range(start, start + n)])}
            w.write_table(pa.table(columns), row_group_size=128 * 1024)


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"{i // 1000:05d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"G{i:09d}.jpg").touch()


def make_catalog(catalog: Path, held: int, inbox: Path) -> None:
    """A ledger of ``held`` objects shaped as the ingest writes it (files of ``CHUNK_ROWS`` rows, only
    the columns the ledger reads) and an inbox of 1,000 new files."""
    part = catalog / "ingest_date=2026-01-01"
    part.mkdir(parents=True, exist_ok=True)
    for start in range(0, held, CHUNK_ROWS):
        n = min(CHUNK_ROWS, held - start)
        pq.write_table(pa.table({
            "object_id": [f"H{i:010d}" for i in range(start, start + n)],
            "source_path": [f"{inbox}-old/{i // 1000:05d}/H{i:010d}.jpg" for i in range(start, start + n)],
            "model_id": pa.array(["m"] * n), "error": pa.nulls(n, pa.string())}),
            part / f"part-{start // CHUNK_ROWS:06d}.parquet", compression="zstd")
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        (inbox / f"N{i:05d}.jpg").touch()


def run_case(case: str, path: str, extra: str) -> dict:
    """Inside the measured process: the driver's share of a run without Ray (discovery, the chunks it
    would submit, the id rule and its overrides), or the nightly ledger join up to the first chunk."""
    import os

    from galaxy_infer.worklist import Listing, scratch_folder

    started = time.perf_counter()
    cpu = _cpu_seconds()
    with scratch_folder(extra or None) as scratch:
        if case == "night":
            from galaxy_infer.ingest import IngestConfig, held_objects, pending_records

            config = IngestConfig(inbox=path, catalog=str(Path(path).parent / "catalog"), settle_seconds=0)
            work, counts = pending_records(config, held_objects(config.catalog, "m"), scratch)
            first = next(work.chunks(1024))
            ready = time.perf_counter() - started
            rows, collisions, amended = work.num_rows, counts["id_collisions"], 0
        else:
            from galaxy_infer.pipeline import settle_ids

            listing = Listing([path], os.path.join(scratch, "listed"))
            chunks = listing.chunks(1024)
            first = next(chunks)
            ready = time.perf_counter() - started
            for _ in chunks:
                pass
            rows, collisions, fixes = settle_ids(listing, scratch)
            amended = pq.ParquetFile(fixes).metadata.num_rows
        return {"case": case, "rows": rows, "collisions": collisions, "amended_rows": amended,
                "first_chunk_rows": first.num_rows, "seconds_to_first_chunk": round(ready, 2),
                "seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(_cpu_seconds() - cpu, 2),
                "vmhwm_mb": round(_vmhwm_mb(), 1)}


def measure(case: str, path: Path, scratch: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--case", case, "--path", str(path),
                          "--scratch", str(scratch)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu_us_per_row"] = round(result["cpu_seconds"] / max(result["rows"], 1) * 1e6, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/scale")
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000], help="manifest sizes")
    parser.add_argument("--stems", type=int, nargs="*", default=[], help="manifest sizes without ids")
    parser.add_argument("--tree", type=int, nargs="*", default=[], help="folder tree sizes (files)")
    parser.add_argument("--held", type=int, nargs="*", default=[], help="catalog sizes for a night of 1,000")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.path, args.scratch)))
        return
    work = Path(args.workdir)
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["GALAXY_INFER_CACHE"] = str(work / "cache")
    results = []
    for kind, sizes in (("manifest", args.rows), ("stems", args.stems), ("tree", args.tree), ("night", args.held)):
        for n in sizes:
            if kind in ("manifest", "stems"):
                path = work / f"{kind}-{n}.parquet"
                if not path.exists():
                    make_manifest(path, n, with_ids=kind == "manifest")
            elif kind == "tree":
                path = work / f"tree-{n}"
                if not path.exists():
                    make_tree(path, n)
            else:
                path = work / f"night-{n}" / "inbox"
                if not path.exists():
                    make_catalog(path.parent / "catalog", n, path)
            result = {"size": n}
            if kind == "night":
                shutil.rmtree(work / "cache", ignore_errors=True)
                cold = measure(kind, path, scratch)
                result.update(cold_seconds_to_first_chunk=cold["seconds_to_first_chunk"],
                              cold_vmhwm_mb=cold["vmhwm_mb"])
            result.update(measure(kind, path, scratch))
            results.append(result)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
