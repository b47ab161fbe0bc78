"""What ran each chunk: prediction workers by node kind, the device they really used, and where decoding ran.

Every chunk's table carries a record of its prediction worker in its schema metadata
(``galaxy_infer.worker``: node kind, device, execution provider, accelerator, node, where it was
decoded), and the record a worker returns for the part it wrote carries the same; the run summary
and the catalog's file metadata report the tally.
"""
from __future__ import annotations

import collections
import json
from typing import Any

import pyarrow as pa

WORKER_KEY = b"galaxy_infer.worker"
DEVICES_METADATA_KEY = "galaxy_infer.devices"


class WorkerTally:
    """Chunks and rows per prediction node kind (device, provider, nodes) and per decoding node kind."""

    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, Any]] = {}
        self.decoded: collections.Counter[str] = collections.Counter()

    def add(self, table: pa.Table) -> None:
        raw = (table.schema.metadata or {}).get(WORKER_KEY)
        if raw:
            self.add_record(json.loads(raw), table.num_rows)

    def add_record(self, record: dict[str, str], rows: int) -> None:
        """Count a chunk of ``rows`` that the worker described by ``record`` ran."""
        kind = self.kinds.setdefault(record["kind"], {"devices": set(), "providers": set(), "accelerators": set(),
                                                      "nodes": set(), "chunks": 0, "rows": 0})
        kind["devices"].add(record["device"])
        kind["providers"].add(record["provider"])
        if record.get("accelerator"):
            kind["accelerators"].add(record["accelerator"])
        kind["nodes"].add(record["node"])
        kind["chunks"] += 1
        kind["rows"] += rows
        self.decoded[record["decoded_on"]] += rows

    def devices(self) -> str:
        """The devices prediction really ran on, e.g. ``cuda``, ``cpu`` or ``cpu+cuda``."""
        return "+".join(sorted(set().union(*(k["devices"] for k in self.kinds.values())))) if self.kinds else ""

    def summary(self) -> dict[str, Any]:
        rows = sum(self.decoded.values())
        return {
            "prediction_workers": {
                name: {"device": "+".join(sorted(k["devices"])), "execution_provider": "+".join(sorted(k["providers"])),
                       "accelerator_type": "+".join(sorted(k["accelerators"])) or None, "nodes": len(k["nodes"]),
                       "chunks": k["chunks"], "rows": k["rows"]}
                for name, k in sorted(self.kinds.items())},
            "decode_split": {name: {"rows": n, "share": round(n / rows, 3) if rows else None}
                             for name, n in self.decoded.most_common()},
        }
