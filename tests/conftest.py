"""Shared fixtures: every behaviour test runs against real worker processes."""

from __future__ import annotations

import os
import sys

import pytest

# the workers' fault-injection hook (tests/test_durability.py) answers only with this set;
# set before any DataBase starts, so the forkserver and every worker inherit it
os.environ["PYDBMS_FAULT_INJECTION"] = "1"
# the Rays of the tests run on this machine only: no token authentication (nor token files in
# ~/.ray); set before any Ray starts, as a process keeps the setting of its first Ray
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from pydbms_shard import DataBase


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}shards")
def db(request):
    """A fresh DataBase with 1, 2 and 3 shards: the same behaviour on every layout."""
    with DataBase(shards=request.param, start_method="forkserver") as database:
        yield database


@pytest.fixture
def db2():
    with DataBase(shards=2) as database:
        yield database


# ------------------------------------------------------------------ backends

RAY_TEST_CPUS = 2
RAY_TEST_OBJECT_STORE = 200 << 20


def ensure_local_ray():
    """A local Ray for the Ray backend tests: started once (2 CPUs, a small object store, no
    dashboard) and shut down at the end of the session; skipped when Ray is not installed. A
    test that joined another Ray (tests/test_ray_cluster.py) shuts it down; the next one starts this again."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            num_cpus=RAY_TEST_CPUS,
            object_store_memory=RAY_TEST_OBJECT_STORE,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return ray


@pytest.fixture(scope="session")
def _ray_session():
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def local_ray(_ray_session):
    return ensure_local_ray()


@pytest.fixture(params=["local", "ray"])
def backend(request):
    """The settings of each backend, e.g. ``DataBase(shards=2, **backend)``: the same test on
    worker processes (multiprocess) and on Ray actors (a local Ray, see ``ensure_local_ray``)."""
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    return {"backend": request.param}
