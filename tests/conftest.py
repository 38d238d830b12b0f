"""Shared fixtures: every behaviour test runs against real worker processes."""

from __future__ import annotations

import os

import pytest

# the workers' fault-injection hook (tests/test_durability.py) answers only with this set;
# set before any DataBase starts, so the forkserver and every worker inherit it
os.environ["PYDBMS_FAULT_INJECTION"] = "1"

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
