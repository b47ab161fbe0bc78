"""Shared fixtures: a tiny ONNX model, the real data folder, and a real local Ray."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.onnx_models import build_tiny_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session", autouse=True)
def cache_folder(tmp_path_factory) -> Path:
    """Ledger indexes and fetched models of this session go to a folder of its own, not the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["GALAXY_INFER_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray for the session, sized for this 2-core machine; loopback and token as the program's own."""
    import ray

    from galaxy_infer.cluster import local_ray_guard

    with local_ray_guard():
        ray.init(address="local", num_cpus=2, object_store_memory=512 * 1024 * 1024, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 for the session, stopped after."""
    from tests import s3_server as server

    running = server.start(tmp_path_factory.mktemp("seaweedfs"))
    yield running
    server.stop(running)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """This process talks to the test server with admin credentials; yields a helper to make buckets."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in s3_server.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return s3_server
