"""``galaxy-infer summary``: what a catalog holds, read from its columns and file metadata alone.

Works on any catalog folder (a ``classify`` output, an ingest root with ``ingest_date=*/``
partitions, one partition), a Parquet file or a list of files, local or a URI pyarrow reads.
Nothing names a morphology column: flags are the boolean ``*_flag`` columns and vote fractions
the ``*_fraction`` columns, so the summary follows the catalog's tree. Reads one column at a
time, so memory stays small on large catalogs.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from galaxy_infer import storage
from galaxy_infer.catalog import open_parts

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TOP_REASONS = 10
METADATA_PREFIX = "galaxy_infer."
PARTITION_KEY = "ingest_date"
"""The nightly ingest's partition folders (``ingest_date=YYYY-MM-DD/``)."""
HIDDEN = (".", "_")
"""Prefixes of names that are no catalog rows (pyarrow's, pandas' and DuckDB's default)."""
RUN_KEYS = ("run_id", "model_id", "model_sha256", "created_utc", "code_version", "schema_version", "recipe",
            "thresholds", "versions")


def open_catalog(source: str | os.PathLike | list[str]) -> ds.Dataset:
    """The catalog's Parquet files as one dataset (:func:`~galaxy_infer.catalog.open_parts`: files of
    different models or schema versions open together); ``ingest_date=`` folders become a column.

    Names starting with ``.`` or ``_`` (temp files, ``_run_summary.json``, ``.ingest.lock``,
    ``_ingest_runs/``) are skipped, as pandas and DuckDB skip them.
    """
    if isinstance(source, list):
        return open_parts([str(s) for s in source])
    root = str(source).rstrip("/")
    if not storage.is_dir(root):
        return open_parts([root])
    found = {u: u[len(root) + 1:] for u in storage.list_uris(root)}
    files = [u for u, name in found.items() if not any(part.startswith(HIDDEN) for part in name.split("/"))]
    if not files:
        raise FileNotFoundError(f"no catalog files under {source}")
    if not any(found[u].startswith(f"{PARTITION_KEY}=") for u in files):
        return open_parts(files)
    return open_parts(files, ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive"), root)


def file_metadata(dataset: ds.Dataset) -> list[dict[str, str]]:
    """The ``galaxy_infer.*`` key-value metadata of each file (prefix dropped), one dict per distinct value."""
    seen: list[dict[str, str]] = []
    for fragment in dataset.get_fragments():
        raw = fragment.physical_schema.metadata or {}
        meta = {k.decode()[len(METADATA_PREFIX):]: v.decode() for k, v in raw.items()
                if k.decode().startswith(METADATA_PREFIX)}
        if meta and meta not in seen:
            seen.append(meta)
    return seen


def _column(dataset: ds.Dataset, name: str, ok_only: bool = True) -> pa.ChunkedArray:
    where = pc.field("status") == "ok" if ok_only else None
    return dataset.to_table(columns=[name], filter=where).column(name)


def summarize(source: str | os.PathLike | list[str], top_reasons: int = TOP_REASONS) -> dict[str, Any]:
    """Rows, errors by reason, flags, vote-fraction quantiles, Galaxy10 classes, runs and their metadata."""
    dataset = open_catalog(source)
    names = dataset.schema.names
    status = _column(dataset, "status", ok_only=False)
    rows = len(status)
    ok = int(pc.sum(pc.equal(status, "ok")).as_py() or 0)
    reasons = Counter(r for r in _column(dataset, "error", ok_only=False).to_pylist() if r is not None)
    summary: dict[str, Any] = {
        "catalog": source if isinstance(source, list) else str(source),
        "files": len(dataset.files),
        "rows": rows,
        "ok": ok,
        "errors": rows - ok,
        "errors_by_reason": dict(reasons.most_common(top_reasons)),
        "other_error_reasons": sum(reasons.values()) - sum(c for _, c in reasons.most_common(top_reasons)),
    }
    if "error_kind" in names:  # schema version 2 on
        kinds = pc.value_counts(_column(dataset, "error_kind", ok_only=False).drop_null()).to_pylist()
        summary["errors_by_kind"] = {k["values"]: k["counts"] for k in sorted(kinds, key=lambda k: -k["counts"])}
    summary["flags"] = {}
    for name in names:
        if name.endswith("_flag") and pa.types.is_boolean(dataset.schema.field(name).type):
            flagged = int(pc.sum(_column(dataset, name)).as_py() or 0)
            summary["flags"][name] = {"flagged": flagged, "share_of_ok": round(flagged / ok, 4) if ok else None}
    summary["fractions"] = {}
    for name in names:
        if name.endswith("_fraction"):
            values = _column(dataset, name)
            if values.null_count == len(values):
                continue
            q = pc.quantile(values, q=list(QUANTILES), skip_nulls=True).to_pylist()
            summary["fractions"][name] = {"mean": round(pc.mean(values).as_py(), 4),
                                          **{f"q{int(p * 100):02d}": round(v, 4) for p, v in zip(QUANTILES, q)}}
    summary["galaxy10"] = _galaxy10_counts(dataset)
    if PARTITION_KEY in names:
        counts = pc.value_counts(_column(dataset, PARTITION_KEY, ok_only=False).cast(pa.string())).to_pylist()
        summary["partitions"] = {PARTITION_KEY: {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: c["values"])}}
    run_rows = Counter(_column(dataset, "run_id", ok_only=False).to_pylist()) if "run_id" in names else Counter()
    summary["runs"] = []
    for meta in file_metadata(dataset):
        run = {k: meta[k] for k in RUN_KEYS if k in meta}
        for k in ("recipe", "thresholds", "versions"):
            if k in run:
                run[k] = json.loads(run[k])
        run["rows"] = run_rows.get(run.get("run_id"), 0)
        if run not in summary["runs"]:
            summary["runs"].append(run)
    return summary


def _galaxy10_counts(dataset: ds.Dataset) -> dict[str, int]:
    """Rows per Galaxy10 class (ok rows), when the catalog has the columns the rule reads."""
    from galaxy_infer.galaxy10 import CLASSES, galaxy10, rule_columns

    columns = rule_columns()
    if not set(columns) <= set(dataset.schema.names):
        return {}
    labels = galaxy10(dataset.to_table(columns=columns, filter=pc.field("status") == "ok").to_pandas())
    counts = labels.galaxy10_class.value_counts()
    return {name: int(counts.get(name, 0)) for name in CLASSES}


def format_summary(s: dict[str, Any]) -> str:
    """The summary as text, for people and logs."""
    share = f" ({s['errors'] / s['rows']:.1%})" if s["rows"] else ""
    lines = [f"catalog: {s['catalog']}  ({s['files']} file{'s' if s['files'] != 1 else ''})",
             f"rows: {s['rows']:,}  ok: {s['ok']:,}  errors: {s['errors']:,}{share}"]
    for key, counts in s.get("partitions", {}).items():
        lines.append(f"{key}: " + "  ".join(f"{v} ({n:,})" for v, n in counts.items()))
    for run in s["runs"]:
        lines.append(f"run: {run.get('run_id')}  rows: {run['rows']:,}  model: {run.get('model_id')}  "
                     f"sha256: {run.get('model_sha256', '')[:12]}  created: {run.get('created_utc')}  "
                     f"schema: {run.get('schema_version')}  code: {run.get('code_version')}")
        if "recipe" in run:
            lines.append("  recipe: " + ", ".join(f"{k}={v}" for k, v in run["recipe"].items()))
        if "thresholds" in run:
            lines.append("  flag thresholds: " + ", ".join(f"{k} {v:.3g}" for k, v in run["thresholds"].items()))
    if s.get("errors_by_kind"):
        lines.append("errors by kind: " + "  ".join(f"{kind} ({n:,})" for kind, n in s["errors_by_kind"].items()))
    if s["errors"]:
        lines.append("most frequent errors:")
        lines += [f"  {count:>8,}  {reason}" for reason, count in s["errors_by_reason"].items()]
        if s["other_error_reasons"]:
            lines.append(f"  {s['other_error_reasons']:>8,}  (other reasons)")
    if s["flags"]:
        width = max(map(len, s["flags"]))
        lines.append("flagged (of ok rows):")
        lines += [f"  {name:<{width}}  {f['flagged']:>8,}  {f['share_of_ok'] or 0:6.1%}" for name, f in s["flags"].items()]
    shown = s["fractions"]
    if shown:
        width = max(map(len, shown))
        keys = ["mean", *(f"q{int(p * 100):02d}" for p in QUANTILES)]
        lines.append(f"vote fractions (ok rows){' ' * max(0, width - 22)}  " + "  ".join(f"{k:>5}" for k in keys))
        lines += [f"  {name:<{width}}  " + "  ".join(f"{q[k]:5.2f}" for k in keys) for name, q in shown.items()]
    if any(s["galaxy10"].values()):
        lines.append("Galaxy10 class (ok rows; rule in galaxy_infer.galaxy10):")
        lines += [f"  {name:<24} {n:>8,}  {n / s['ok']:6.1%}" for name, n in s["galaxy10"].items()]
    return "\n".join(lines)

