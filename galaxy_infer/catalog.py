"""The Parquet catalog: its Arrow schema, file metadata and an atomic writer.

The column contract is ``shared/docs/catalog-schema.md`` (version :data:`~galaxy_infer.schema.SCHEMA_VERSION`).
A catalog is written into a hidden temporary folder and renamed into place only when complete,
so a crash never leaves a half-written catalog that looks finished.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galaxy_infer import __version__
from galaxy_infer.model import ModelInfo
from galaxy_infer.schema import GZ2, ODD_FEATURES, SCHEMA_VERSION, Schema

SUMMARY_NAME = "_run_summary.json"
"""Leading underscore: pyarrow, pandas and DuckDB globs skip it when reading the folder."""
PARTS_GLOB = "part-*.parquet"
STAGE_TIMING_KEY = b"galaxy_infer.stage_seconds"
ERROR_EXAMPLES = 3


def prediction_fields(schema: Schema = GZ2) -> list[pa.Field]:
    fields = [pa.field(c, pa.float32()) for c in schema.answer_columns]
    fields += [pa.field(c, pa.float32()) for c in schema.asked_columns]
    fields += [pa.field(f"odd_{f}_prob", pa.float32()) for f in ODD_FEATURES]
    fields += [pa.field(f"odd_{f}_flag", pa.bool_()) for f in ODD_FEATURES]
    return fields


def arrow_schema(metadata: dict[str, str] | None = None, schema: Schema = GZ2) -> pa.Schema:
    """Every catalog column, in contract order."""
    fields = [
        pa.field("object_id", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("ra", pa.float64()),
        pa.field("dec", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        *prediction_fields(schema),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
    return pa.schema(fields, metadata=metadata)


def file_metadata(model: ModelInfo, run_id: str) -> dict[str, str]:
    """Key-value metadata written into every Parquet file of a run."""
    return {
        "galaxy_infer.schema_version": SCHEMA_VERSION,
        "galaxy_infer.model_id": model.model_id,
        "galaxy_infer.model_sha256": model.sha256,
        "galaxy_infer.recipe": model.recipe.to_json(),
        "galaxy_infer.thresholds": json.dumps(model.thresholds, sort_keys=True),
        "galaxy_infer.code_version": __version__,
        "galaxy_infer.run_id": run_id,
        "galaxy_infer.created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def catalog_table(ids: dict[str, Any], errors: list[str | None], predictions: dict[str, np.ndarray] | None,
                  model_id: str, run_id: str) -> pa.Table:
    """One batch of catalog rows; prediction columns are null where ``errors`` has a reason.

    ``ids`` holds ``object_id``, ``source_path``, ``ra`` and ``dec`` sequences; ``predictions``
    holds one value per row for every prediction column (ignored on error rows).
    """
    n = len(errors)
    failed = np.array([e is not None for e in errors], dtype=bool)
    columns: dict[str, pa.Array] = {
        "object_id": pa.array(ids["object_id"], pa.string()),
        "source_path": pa.array(ids["source_path"], pa.string()),
        "ra": pa.array(ids["ra"], pa.float64(), from_pandas=True),
        "dec": pa.array(ids["dec"], pa.float64(), from_pandas=True),
        "status": pa.array(np.where(failed, "error", "ok"), pa.string()),
        "error": pa.array(errors, pa.string()),
    }
    for f in prediction_fields():
        if predictions is None:
            columns[f.name] = pa.nulls(n, f.type)
        else:
            columns[f.name] = pa.array(np.asarray(predictions[f.name]), f.type, mask=failed)
    columns["model_id"] = pa.array([model_id] * n, pa.string())
    columns["run_id"] = pa.array([run_id] * n, pa.string())
    return pa.Table.from_pydict(columns, schema=arrow_schema())


def error_kind(reason: str) -> str:
    """A reason without its particulars (what follows the first ':'), so the summary groups like with like."""
    return reason.split(":", 1)[0].strip()


class RunStats:
    """Counts rows by status, and errors by kind with a few example paths each (bounded, whatever the input)."""

    def __init__(self) -> None:
        self.rows = 0
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
        self.started = time.perf_counter()
        self.stage_seconds: collections.Counter[str] = collections.Counter()

    def add(self, table: pa.Table) -> None:
        """Count a batch's rows; worker-side stage timings travel in its schema metadata."""
        timing = (table.schema.metadata or {}).get(STAGE_TIMING_KEY)
        if timing:
            self.stage_seconds.update(json.loads(timing))
        self.rows += table.num_rows
        errors = table.column("error").to_pylist()
        paths = table.column("source_path").to_pylist()
        for path, reason in zip(paths, errors):
            if reason is None:
                continue
            kind = error_kind(reason)
            self.errors[kind] += 1
            if len(self.examples[kind]) < ERROR_EXAMPLES:
                self.examples[kind].append({"source_path": path, "error": reason})
        self.ok += table.num_rows - sum(e is not None for e in errors)

    def summary(self, **extra: Any) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        return {
            "rows": self.rows,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "errors_by_reason": dict(self.errors.most_common()),
            "error_examples": {kind: self.examples[kind] for kind, _ in self.errors.most_common()},
            "seconds": round(seconds, 3),
            "rows_per_second": round(self.rows / seconds, 1) if seconds > 0 else None,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            **extra,
        }


def format_errors(summary: dict[str, Any]) -> list[str]:
    """Summary lines: count and kind of error, then its example paths."""
    lines = []
    for kind, count in summary.get("errors_by_reason", {}).items():
        lines.append(f"  {count:>8}  {kind}")
        lines += [f"            e.g. {e['source_path']}: {e['error']}" for e in summary["error_examples"][kind]]
    return lines


class CatalogWriter:
    """Write a catalog folder atomically: part files go to a hidden temporary folder first.

    :meth:`commit` adds ``run_summary.json`` and renames the folder to ``out_dir``; an existing
    catalog there is replaced only with ``overwrite``. Use as a context manager so a failure
    removes the temporary folder.
    """

    def __init__(self, out_dir: str | os.PathLike, metadata: dict[str, str], run_id: str,
                 rows_per_file: int = 500_000, overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} already exists; choose another --out or pass --overwrite")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{run_id}"
        self.tmp_dir.mkdir()
        self.schema = arrow_schema(metadata)
        self.rows_per_file = rows_per_file
        self.stats = RunStats()
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0
        self._files = 0

    def write(self, table: pa.Table) -> None:
        started = time.perf_counter()
        self.stats.add(table)
        table = table.replace_schema_metadata(self.schema.metadata)
        while table.num_rows:
            if self._writer is None:
                path = self.tmp_dir / f"part-{self._files:05d}.parquet"
                self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
                self._files += 1
            take = min(table.num_rows, self.rows_per_file - self._rows_in_file)
            self._writer.write_table(table.slice(0, take))
            self._rows_in_file += take
            table = table.slice(take)
            if self._rows_in_file >= self.rows_per_file:
                self._close_file()
        self.stats.stage_seconds["write"] += time.perf_counter() - started

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._rows_in_file = 0

    def commit(self, summary: dict[str, Any]) -> Path:
        self._close_file()
        if self._files == 0:
            pq.write_table(self.schema.empty_table(), self.tmp_dir / "part-00000.parquet")
        (self.tmp_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        fsync_dir(self.tmp_dir)
        if self.out_dir.exists():
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{summary.get('run_id', 'previous')}"
            os.rename(self.out_dir, old)
            os.rename(self.tmp_dir, self.out_dir)
            shutil.rmtree(old)
        else:
            os.rename(self.tmp_dir, self.out_dir)
        fsync_dir(self.out_dir.parent)
        return self.out_dir

    def abort(self) -> None:
        self._close_file()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_catalog(path: str | os.PathLike) -> pa.Table:
    """All rows of a catalog folder (or one Parquet file), as one table."""
    path = Path(path)
    files = sorted(path.glob(PARTS_GLOB)) if path.is_dir() else [path]
    return pa.concat_tables([pq.read_table(f) for f in files])
