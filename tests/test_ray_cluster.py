"""The Ray backend on a two-node cluster, simulated on this machine: a head node (``node_a``) and
a second node (``node_b``), both offering one unit of the shared custom resource
``pydbms_shard``. Each shard asks for a quarter of it and Ray's SPREAD strategy puts shards on
both nodes; when node B's raylet is SIGKILLed, its shards die with it and the coordinator
rebuilds them from the snapshot and log (the same directory: the "shared file system") on
node A, where the resource that every node offers still has room. A resource only node B
offered could not be placed anywhere once it died.

Every process of the cluster is found from the temporary directory given to ``ray start`` and
killed at the end, even on failure (never ``ray stop``: it would stop every Ray on the machine).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pydbms_shard import DataBase, generate_users

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = [pytest.mark.slow, pytest.mark.crash, pytest.mark.ray]

RAY = str(Path(sys.executable).with_name("ray"))
HANG = 60.0
# node death is noticed within ~1 s instead of ~15 s (the GCS's health checks of each raylet)
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "300",
    "RAY_health_check_timeout_ms": "300",
    "RAY_health_check_failure_threshold": "3",
}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """Ray nodes started with ``ray start`` under one temporary directory."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="pdray", dir="/tmp")  # short: socket paths have a length limit
        # token authentication as the driver has it (tests/conftest.py turns it off for every test Ray:
        # one process must not meet Rays of both kinds, its first Ray's setting sticks)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH_CHECKS}
        self.gcs_port = 0
        self.raylets: dict[str, int] = {}  # node name -> node manager port

    def start(self, name: str, head: bool) -> None:
        node_port, object_port, *_ = ports = free_ports(3)
        args = [
            RAY,
            "start",
            "--num-cpus=1",
            "--object-store-memory=80000000",
            f"--resources={json.dumps({name: 1, 'pydbms_shard': 1})}",
            f"--node-manager-port={node_port}",
            f"--object-manager-port={object_port}",
            "--disable-usage-stats",
        ]
        if head:
            self.gcs_port = ports[2]
            args += ["--head", f"--port={self.gcs_port}", f"--temp-dir={self.temp}", "--include-dashboard=false"]
        else:
            args += [f"--address=127.0.0.1:{self.gcs_port}"]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        self.raylets[name] = node_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def raylet(self, name: str) -> psutil.Process:
        flag = f"--node_manager_port={self.raylets[name]}"
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "raylet" and flag in cmdline:
                return proc
        raise AssertionError(f"no raylet of node {name}")

    def processes(self) -> set[psutil.Process]:
        """Every process of this cluster: those naming its directory, and their descendants
        (workers rename themselves, so they are found as children of their raylet)."""
        found: set[psutil.Process] = set()
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(self.temp in part for part in proc.info["cmdline"] or []):
                    found.add(proc)
                    found.update(proc.children(recursive=True))
            except psutil.Error:
                pass
        return found

    def stop(self) -> None:
        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(list(procs), timeout=5)
        if not os.environ.get("PYDBMS_KEEP_RAY_LOGS"):
            subprocess.run(["rm", "-rf", self.temp], check=False)


@pytest.fixture
def cluster():
    gc.collect()  # no handle of the local Ray's actors may outlive it (an ID repeats in the next session)
    if ray.is_initialized():
        ray.shutdown()  # the session's local Ray (tests/conftest.py starts it again when needed)
    nodes = Cluster()
    try:
        nodes.start("node_a", head=True)
        nodes.start("node_b", head=False)
        yield nodes
    finally:
        gc.collect()
        if ray.is_initialized():
            ray.shutdown()
        nodes.stop()


def node_names() -> dict[str, str]:
    """Ray node id -> our node name (from its custom resource)."""
    return {n["NodeID"]: next(r for r in ("node_a", "node_b") if r in n["Resources"]) for n in ray.nodes() if n["Alive"]}


def test_shards_spread_over_two_nodes_heal_on_the_survivor_when_a_node_dies(cluster, tmp_path):
    users = generate_users(4000, seed=21)
    settings = {
        "backend": "ray",
        "ray_address": cluster.address,
        "ray_resources_per_shard": {"pydbms_shard": 0.25},  # each node takes up to 4 shards
        "snapshot_path": str(tmp_path / "db.json"),  # on the file system both nodes share
        "log_fsync": "no",
    }
    with DataBase(shards=4, **settings) as db:
        names = node_names()
        placed = [names[s["node"]] for s in db.stats()["shards"]]
        assert set(placed) == {"node_a", "node_b"}, placed
        db.add_users(users[:2000])
        db.save()
        db.add_users(users[2000:3000])  # acknowledged: in the logs only
        db.remove_users(users[:100])

        cluster.raylet("node_b").send_signal(signal.SIGKILL)  # node B dies with its workers
        on_b = [s for s, where in enumerate(placed) if where == "node_b"]
        deadline = time.monotonic() + HANG
        while any(db._shards[s].alive for s in on_b):
            assert time.monotonic() < deadline, "Ray never reported node B's actors dead"
            time.sleep(0.1)

        assert db.add_users(users[3000:]) == 1000  # heals node B's shards first, on node A
        stats = db.stats()
        assert all(names.get(s["node"]) == "node_a" for s in stats["shards"])
        assert [s["restarts"] for s in stats["shards"]] == [1 if s in on_b else 0 for s in range(4)]
        assert len(db) == 3900
        assert {u.ID for u in db} == {u.ID for u in users[100:]}
