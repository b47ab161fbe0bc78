"""classify from S3 to S3 through a store that answers a tenth of new connections with a fault
(503 SlowDown, a reset, a response cut part-way): the AWS SDK's retries absorb them and every
object is an ``ok`` row (issue 27; found passing by hand, kept so by this test)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from galaxy_infer.catalog import read_catalog
from tests.fault_proxy import FaultProxy
from tests.hostile_files import good_jpeg
from tests.test_storage import new_bucket, put

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_classify_s3_to_s3_through_a_faulty_store_gives_every_row_ok(s3, tmp_path, tiny_model):
    bucket = new_bucket(s3)
    n = 60
    for i in range(n):
        put(s3, f"{bucket}/in/g{i:03d}.jpg", good_jpeg(i))
    with FaultProxy(urlparse(s3.endpoint).port, share=0.1, seed=27) as proxy:
        env = s3.env(AWS_ENDPOINT_URL=proxy.endpoint, RAY_USAGE_STATS_ENABLED="0")
        done = subprocess.run([sys.executable, "-m", "galaxy_infer", "classify", f"s3://{bucket}/in/", "--out",
                               f"s3://{bucket}/cat", "--model", str(tiny_model), "--num-cpus", "2", "--no-progress",
                               "--batch-size", "16"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        faults = sum(v for k, v in proxy.counts.items() if k != "passed")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert faults >= 3, proxy.counts  # the store really misbehaved
    table = read_catalog(f"s3://{bucket}/cat")
    assert table.num_rows == n
    assert table.column("status").to_pylist() == ["ok"] * n


SPLIT_ENDPOINTS = """
import os, sys
from galaxy_infer import ingest, worklist
from galaxy_infer.cli import main
from galaxy_infer.cluster import init_ray
init_ray(None, 2, 256)  # a local Ray's workers keep the environment it started with: the fault proxy
os.environ["AWS_ENDPOINT_URL"] = sys.argv[1]  # the driver (listing, discovery, commits) reaches the store directly
if sys.argv[2] == "driver":  # shards opened by the driver: listed fine, read on workers
    ingest.ray_opener = lambda config: worklist.open_here
sys.exit(main(sys.argv[3:]))
"""
"""``galaxy-infer ingest`` whose Ray workers reach the store through the fault proxy and whose driver does not;
with ``driver``, the shards are opened by the driver, as when a store fails between a night's listing and
its reads."""


@pytest.mark.ray
@pytest.mark.parametrize("opened_by", ["driver", "workers"])
def test_a_shard_whose_reads_fail_now_is_classified_the_next_night_not_held_as_errors(s3, tmp_path, tiny_model,
                                                                                      opened_by):
    """Listed fine and then unreadable (``driver``), or unreadable when a worker opens it (``workers``:
    one row for the shard): nothing is held, and the next night classifies its four cutouts."""
    from galaxy_infer.ingest import read_ingest_catalog
    from tests.test_shards import write_galaxy10

    bucket = new_bucket(s3)
    write_galaxy10(tmp_path / "night.h5", [good_jpeg(i) for i in range(4)])
    put(s3, f"{bucket}/inbox/night.h5", (tmp_path / "night.h5").read_bytes())
    catalog = f"s3://{bucket}/catalog"

    def night(date: str) -> tuple[int, dict]:
        done = subprocess.run([sys.executable, "-c", SPLIT_ENDPOINTS, s3.endpoint, opened_by, "ingest", "--inbox",
                               f"s3://{bucket}/inbox", "--catalog", catalog, "--model", str(tiny_model), "--date", date,
                               "--settle-seconds", "0", "--no-progress", "--json"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.stdout, done.stderr[-3000:]
        return done.returncode, json.loads(done.stdout)

    with FaultProxy(urlparse(s3.endpoint).port, share=1.0, faults=("slowdown",)) as proxy:
        env = s3.env(AWS_ENDPOINT_URL=proxy.endpoint, RAY_USAGE_STATS_ENABLED="0")
        code, first = night("2026-11-20")
        assert proxy.counts["slowdown"] >= 2, proxy.counts  # the workers' reads of the shard met 503 SlowDown
        proxy.share = 0.0
        assert code == 3, first  # nothing classified: cron hears of it
        units = 4 if opened_by == "driver" else 1
        assert first["pending"] == units and first["rows"] == 0 and first["retry_next_run"] == units
        assert first["errors_by_kind"] == {"unreadable-now": units}
        assert read_ingest_catalog(catalog).num_rows == 0, "a shard that could not be read now was held as errors"
        code, second = night("2026-11-21")
    assert code == 0 and second["already_held"] == 0 and second["rows"] == 4
    table = read_ingest_catalog(catalog)
    assert sorted(table.column("object_id").to_pylist()) == [f"night.h5#{i}" for i in range(4)]
    assert table.column("status").to_pylist() == ["ok"] * 4
