"""classify from S3 to S3 through a store that answers a tenth of new connections with a fault
(503 SlowDown, a reset, a response cut part-way): the AWS SDK's retries absorb them and every
object is an ``ok`` row (issue 27; found passing by hand, kept so by this test)."""
from __future__ import annotations

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
