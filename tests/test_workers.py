"""The tally of what ran each chunk: prediction node kinds, devices, and where decoding ran."""
import json

import pyarrow as pa

from galaxy_infer.workers import WORKER_KEY, WorkerTally


def chunk(rows: int, kind: str, device: str, node: str, decoded_on: str) -> pa.Table:
    record = {"kind": kind, "device": device, "provider": f"{device.upper()}ExecutionProvider",
              "accelerator": "A10G" if device == "cuda" else "", "node": node, "decoded_on": decoded_on}
    return pa.table({"object_id": [str(i) for i in range(rows)]}).replace_schema_metadata({WORKER_KEY: json.dumps(record)})


def test_tally_reports_devices_per_node_kind_and_the_decode_split():
    tally = WorkerTally()
    for table in (chunk(4, "gpu_worker", "cuda", "a", "head"), chunk(4, "gpu_worker", "cuda", "b", "gpu_worker"),
                  chunk(2, "cpu_worker", "cpu", "c", "head"), pa.table({"object_id": ["x"]})):
        tally.add(table)
    summary = tally.summary()
    assert summary["prediction_workers"] == {
        "cpu_worker": {"device": "cpu", "execution_provider": "CPUExecutionProvider", "accelerator_type": None,
                       "nodes": 1, "chunks": 1, "rows": 2},
        "gpu_worker": {"device": "cuda", "execution_provider": "CUDAExecutionProvider", "accelerator_type": "A10G",
                       "nodes": 2, "chunks": 2, "rows": 8}}
    assert summary["decode_split"] == {"head": {"rows": 6, "share": 0.6}, "gpu_worker": {"rows": 4, "share": 0.4}}
    assert tally.devices() == "cpu+cuda" and WorkerTally().devices() == ""
