"""Where the pipeline's Ray tasks run: a fresh local Ray closed to others, or a cluster that grows.

:func:`init_ray` joins a cluster or starts a local Ray on loopback with a per-run token.
:class:`WorkerPlan` says what each prediction task reserves and how much work may be in flight
for the cluster as it is now; :class:`ClusterWatch` re-reads the cluster as nodes join or leave
and fails a run whose prediction tasks no node can ever run.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from galaxy_infer import storage

LOCAL_OBJECT_STORE_BYTES = 1 << 30
GPU_WAIT_SECONDS = 900.0
"""How long prediction tasks may wait for a node that can run them before the run fails: a GPU
node of a cluster that scales from zero takes minutes to boot and pull its image (AWS g5 with
Ray's GPU image, a GPU node pool on Kubernetes); 15 minutes without one means none is coming."""
CLUSTER_POLL_SECONDS = 1.0
GUIDED_MIN_ROWS = 256


def on_cluster(address: str | None) -> bool:
    """Whether the job joins an existing cluster (an address or ``RAY_ADDRESS``) rather than a local Ray."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None, num_cpus: int | None, object_store_mb: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a fresh local Ray sized to this job.

    The local Ray is always a new one (``address="local"``): Ray would otherwise join whatever
    ``/tmp/ray/ray_current_cluster`` names, even a dead head's. It listens on loopback only and
    requires a token (see :func:`local_ray_guard`).
    """
    import ray

    if ray.is_initialized():
        return
    if on_cluster(address):
        env = {k: os.environ[k] for k in storage.FORWARDED_ENV if k in os.environ}
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env} if env else None)
        return
    store = object_store_mb * 1024 * 1024 if object_store_mb else LOCAL_OBJECT_STORE_BYTES
    with local_ray_guard():
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=store,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)


@contextlib.contextmanager
def local_ray_guard() -> Iterator[None]:
    """Around starting a local Ray: loopback only, and a token that only this run holds.

    Ray 2.60 binds its GCS, raylet, object manager, workers and agents to every interface unless
    the node IP is loopback, and ``ray.init`` replaces a loopback ``_node_ip_address`` by the
    host's address; its single-machine switch (the default on macOS and Windows) keeps the node
    IP on 127.0.0.1, so we set it while the node starts (its processes get the IP on their command
    line). Ray turns token authentication on for a new local cluster unless ``RAY_AUTH_MODE`` says
    otherwise (an explicit ``disabled`` is respected); without a token it would write one to
    ``~/.ray/auth_token`` with the default umask, so we hand it a fresh random one in the
    environment, which only this user's processes can read and which ends with the run.
    """
    from ray._private import ray_constants

    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    single_machine = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = single_machine


@dataclass(frozen=True)
class WorkerPlan:
    """What each prediction task reserves, and how the work in flight follows the cluster's size.

    On CPU every core runs whole chunks (read to postprocess) with two chunks per prediction slot
    in flight; on GPU there is one prediction slot per ``gpus_per_task`` of the cluster's GPUs,
    and one more chunk in flight per CPU so that decoding on every CPU feeds the GPUs. Both bounds
    are read from the cluster as it is now, so nodes that join are used and memory stays flat.
    """

    gpus_per_task: float
    fixed_slots: int | None = None
    """``num_workers``: prediction slots fixed by the user instead of read from the cluster."""

    @property
    def task_resources(self) -> dict[str, float]:
        return {"num_cpus": 1, "num_gpus": self.gpus_per_task} if self.gpus_per_task else {"num_cpus": 1}

    def slots(self, resources: dict[str, float]) -> int:
        if self.fixed_slots:
            return self.fixed_slots
        if self.gpus_per_task:
            return int(resources.get("GPU", 0) / self.gpus_per_task)
        return max(1, int(resources.get("CPU", 1)))

    def in_flight(self, resources: dict[str, float]) -> int:
        extra = int(resources.get("CPU", 0)) if self.gpus_per_task else 0
        return max(1, 2 * self.slots(resources) + extra)

    def chunk_rows(self, rows: int, task_rows: int, resources: dict[str, float]) -> int:
        """Rows per chunk: ``task_rows``, or fewer so that a small run still spreads over the decoders."""
        return max(1, min(task_rows, math.ceil(rows / self.decoders(resources))))

    def guided_rows(self, remaining: int, known: int, task_rows: int, resources: dict[str, float]) -> int:
        """Rows of the next chunk when ``task_rows`` is a ceiling: guided self-scheduling, a share of
        the ``remaining`` rows (of ``known`` listed so far) for each decoder twice over, so chunks are
        large through the run (Ray's per-task cost in the driver is paid once per ``task_rows``) and
        shrink towards its end, where a large chunk would leave the other decoders idle. Never under
        :data:`GUIDED_MIN_ROWS`, nor than a small run spread over the decoders. While a listing
        still runs, the caller passes what it has listed as ``remaining``: chunks grow with it
        rather than shrink each time the tasks catch up with the listing."""
        decoders = self.decoders(resources)
        least = min(GUIDED_MIN_ROWS, math.ceil(known / decoders))
        return max(1, min(task_rows, max(least, math.ceil(remaining / (2 * decoders)))))

    def decoders(self, resources: dict[str, float]) -> int:
        return max(1, int(resources.get("CPU", 1)) if self.gpus_per_task else self.slots(resources))

    def runnable_on(self, nodes: list[dict]) -> bool:
        """Whether some alive node can run a prediction task now."""
        need = self.task_resources
        return any(n["Alive"] and n["Resources"].get("CPU", 0) >= need["num_cpus"]
                   and n["Resources"].get("GPU", 0) >= need.get("num_gpus", 0) for n in nodes)


def plan_workers(device: str, num_gpus_per_worker: float | None = None, num_workers: int | None = None) -> WorkerPlan:
    """What prediction tasks ask for, whether or not nodes that offer it exist yet (the autoscaler
    starts them when tasks ask). ``cuda`` reserves one GPU per task unless ``num_gpus_per_worker``
    says otherwise; ``auto`` reserves GPUs when the cluster has some now or ``num_gpus_per_worker``
    asks for them; ``num_workers`` fixes the prediction slots instead of reading the cluster."""
    import ray

    gpus = num_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0)) else 0.0
    return WorkerPlan(gpus, num_workers)


class ClusterWatch:
    """The cluster as the run sees it, read at most once per :data:`CLUSTER_POLL_SECONDS`.

    Fails the run when no alive node could run a prediction task for ``wait_seconds`` in a row
    (a cluster that never gets such a node; a local Ray, which never grows, fails at once).
    """

    def __init__(self, plan: WorkerPlan, wait_seconds: float, can_grow: bool) -> None:
        self.plan = plan
        self.wait_seconds = wait_seconds if can_grow else 0.0
        self.can_grow = can_grow
        self.missing_since: float | None = None
        self._read_at = -math.inf
        self._resources: dict[str, float] = {}
        self.check()

    def resources(self) -> dict[str, float]:
        import ray

        if time.monotonic() - self._read_at >= CLUSTER_POLL_SECONDS:
            self._resources, self._read_at = ray.cluster_resources(), time.monotonic()
        return self._resources

    def in_flight(self) -> int:
        return self.plan.in_flight(self.resources())

    def check(self) -> None:
        import ray

        if self.plan.runnable_on(ray.nodes()):
            self.missing_since = None
            return
        now = time.monotonic()
        self.missing_since = self.missing_since or now
        if now - self.missing_since >= self.wait_seconds:
            need = ", ".join(f"{v:g} {k.removeprefix('num_')[:-1].upper()}" for k, v in self.plan.task_resources.items())
            where = (f"for {self.wait_seconds:.0f} s no node of the Ray cluster could run one; check that the "
                     "autoscaler has a worker type offering it (cluster.yaml: gpu_worker, k8s: the gpu group) "
                     "and room to start it (max_workers, quotas), or raise --gpu-wait-seconds"
                     if self.can_grow else "this local Ray has no such resources")
            raise RuntimeError(f"prediction tasks need {need} each, but {where}")


def wait_for_one(pending: list, watch: ClusterWatch) -> tuple[Any, list]:
    """The next finished task, checking while it waits that prediction can still run somewhere."""
    import ray

    while True:
        ready, pending = ray.wait(pending, num_returns=1, timeout=CLUSTER_POLL_SECONDS)
        if ready:
            return ready[0], pending
        watch.check()


@functools.cache
def node_kind() -> str:
    """The kind of node this worker process runs on: its autoscaler node type (Ray's
    ``ray.io/node-group`` label, set by the cluster launcher and KubeRay), else its hardware."""
    import ray

    context = ray.get_runtime_context()
    group = context.get_node_labels().get("ray.io/node-group")
    if group:
        return group
    node = next((n for n in ray.nodes() if n["NodeID"] == context.get_node_id()), {})
    gpus = node.get("Resources", {}).get("GPU", 0)
    return f"{gpus:g}-GPU node" if gpus else "CPU node"
