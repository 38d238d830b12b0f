"""The Ray backend (``backend: ray``): shards as Ray actors on a local Ray (2 CPUs, started once
per session by the ``local_ray`` fixture in conftest.py), the same behaviour as worker processes.

The core calls run on both backends side by side (the ``backend`` fixture); persistence, healing
and timeouts run on Ray. A killed actor is healed like a killed process: the coordinator starts
a new actor and rebuilds the shard from its snapshot and log, losing no acknowledged write.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid

import pytest

pytest.importorskip("ray")
from pydbms_shard import ConfigError, DataBase, ShardError, User, generate_users
from pydbms_shard.routing import shard_of

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a local Ray takes seconds to start: out of the fast loop

HANG = 30.0  # seconds a wait may take before the test fails instead of hanging


def fields(user: User | None):
    if user is None:
        return None
    return (user.ID, user.name, user.age, json.dumps(user.to_dict()["extras"], sort_keys=True))


def contents(db: DataBase) -> list:
    users = list(db)
    assert len(users) == len(db)
    return sorted(map(fields, users), key=lambda f: f[0])


def expected(users) -> list:
    return sorted(map(fields, users), key=lambda f: f[0])


def wait_until_dead(db: DataBase, shard: int) -> None:
    """Until the coordinator can tell the killed actor is dead (Ray reports it asynchronously)."""
    handle = db._shards[shard]
    deadline = time.monotonic() + HANG
    while handle.alive:
        assert time.monotonic() < deadline, "Ray never reported the killed actor dead"
        time.sleep(0.02)


def on_shard(users, shard: int, shards: int) -> list[User]:
    return [u for u in users if shard_of(u.ID.bytes, shards) == shard]


# ------------------------------------------------------------------ the core calls, both backends


@pytest.mark.parametrize("shards", [1, 3])
def test_core_calls_agree_on_both_backends(backend, shards):
    users = generate_users(600, seed=shards)
    with DataBase(shards=shards, iter_chunk_size=50, cache_size=10, **backend) as db:
        assert db.add_users(users) == 600
        assert db.add_users(users[:10]) == 0  # stored IDs are skipped
        assert db.add(User("solo", 33)) is True
        assert len(db) == 601 and db.size == 601
        assert fields(db.get(users[7].ID)) == fields(users[7])
        assert db.get(uuid.uuid4()) is None
        assert [fields(u) for u in db.get_many([users[1].ID, users[2].ID])] == [fields(users[1]), fields(users[2])]
        assert users[9].ID in db and uuid.uuid4() not in db
        assert db.contains_many([users[3].ID, uuid.uuid4()]) == [True, False]
        found = db.search_users([users[4].ID, users[5].name])
        assert users[4] in found and all(u.ID == users[4].ID or u.name == users[5].name for u in found)
        assert db.has_user([users[6].ID, users[8].name]) is True
        assert db.has_user([uuid.uuid4()]) is False
        assert {u.ID for u in db.find_by_name("solo")} == {u.ID for u in db if u.name == "solo"}
        newer = [User(u.name + "-new", u.age + 1, u.ID) for u in users[:100]]
        assert db.upsert_users(newer + [User("fresh", 5)]) == 1  # how many were new
        assert fields(db.get(users[0].ID)) == fields(newer[0])
        assert db.remove_users(users[100:200]) == 100
        assert db.remove(users[300].ID) is True and db.remove(users[300].ID) is False
        assert len(db) == 601 + 1 - 100 - 1
        stored = contents(db)
        assert len(stored) == 501 and fields(newer[5]) in stored and fields(users[150]) not in stored
        stats = db.stats()
        assert stats["users"] == 501 and [s["shard"] for s in stats["shards"]] == list(range(shards))
        for entry in stats["shards"]:
            assert isinstance(entry["pid"], int)
            assert ("node" in entry) == (backend["backend"] == "ray")
        db.clear_database()
        assert len(db) == 0 and list(db) == []


def test_actors_report_where_they_run(local_ray):
    with DataBase(shards=2, backend="ray") as db:
        pids = {s["pid"] for s in db.stats()["shards"]}
        assert len(pids) == 2 and os.getpid() not in pids
        assert {h.pid for h in db._shards} == pids
        for entry in db.stats()["shards"]:
            assert entry["node"] == local_ray.get_runtime_context().get_node_id()
            assert entry["node_ip"] and entry["host"]
    for h in db._shards:
        assert not h.alive and h.events.closed


def test_backend_ray_without_ray_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install pydbms-shard\[ray\]"):
        DataBase(shards=1, backend="ray")


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"ray_address": "http://head:6379"}, "ray_address"),
        ({"ray_resources_per_shard": {"CPU": 1}}, "ray_num_cpus_per_shard"),
        ({"ray_resources_per_shard": {"pydbms": 0}}, "ray_resources_per_shard"),
        ({"ray_num_cpus_per_shard": -1}, "ray_num_cpus_per_shard"),
        ({"ray_placement": "pack"}, "ray_placement"),
        ({"backend": "dask"}, "backend"),
    ],
)
def test_bad_ray_settings_are_config_errors(bad, words):
    with pytest.raises(ConfigError, match=words):
        DataBase(shards=1, **bad)


# ------------------------------------------------------------------ persistence on Ray


def test_save_and_load_also_into_another_shard_count_and_backend(local_ray, tmp_path):
    users = generate_users(3000, seed=11)
    path = tmp_path / "snap.json"
    seen = []
    with DataBase(shards=3, backend="ray") as db:
        db.add_users(users)
        manifest = db.save(path, progress=lambda done, total: seen.append((done, total)))
        assert manifest.shards == 3 and seen and seen[-1] == (3000, 3000)
        db.remove_users(users[:500])
        db.load(path)  # back to the save
        assert contents(db) == expected(users)
    for shards, backend in [(2, "ray"), (4, "ray"), (2, "local")]:
        loaded = []
        with DataBase(shards=shards, backend=backend) as db:
            db.load(path, progress=lambda done, total, loaded=loaded: loaded.append((done, total)))
            assert len(db) == 3000 and contents(db) == expected(users), (shards, backend)
        assert loaded and loaded[-1][0] == loaded[-1][1] >= 3000  # rerouting: each worker reads every file


def test_backup_on_ray(local_ray, tmp_path):
    users = generate_users(500, seed=12)
    with DataBase(shards=2, backend="ray", snapshot_path=str(tmp_path / "db.json")) as db:
        db.add_users(users)
        db.save()
        db.backup(tmp_path / "copy.json")
        db.add_users(generate_users(10, seed=13))  # not in the backup
    with DataBase(shards=3, backend="ray") as db:
        db.load(tmp_path / "copy.json")
        assert contents(db) == expected(users)


def test_autosave_on_ray(local_ray, tmp_path):
    users = generate_users(200, seed=14)
    path = tmp_path / "auto.json"
    with DataBase(shards=2, backend="ray", snapshot_path=str(path), autosave_interval=0.2) as db:
        db.add_users(users)
        deadline = time.monotonic() + HANG
        while db.stats()["autosave"]["saves"] < 1:
            assert time.monotonic() < deadline, "no autosave happened"
            time.sleep(0.05)
    with DataBase(shards=2, backend="local") as db:  # the autosaved snapshot, read by the other backend
        db.load(path)
        assert contents(db) == expected(users)


def test_reopening_a_logged_database_recovers_from_the_log(local_ray, tmp_path):
    """Writes after the last save live only in the actors' logs; reopening (on Ray with another
    shard count, then locally) replays them."""
    path = str(tmp_path / "db.json")
    users = generate_users(1000, seed=15)
    with DataBase(shards=3, backend="ray", snapshot_path=path) as db:
        db.add_users(users[:400])
        db.save()
        db.add_users(users[400:])
        db.remove_users(users[:50])
        db.upsert_users([User("renamed", 1, users[60].ID)])
    want = expected([User("renamed", 1, users[60].ID), *users[50:60], *users[61:]])
    with DataBase(shards=2, backend="ray", snapshot_path=path) as db:
        assert contents(db) == want
        db.add(User("later", 2))
    with DataBase(shards=2, backend="local", snapshot_path=path) as db:
        assert len(db) == len(want) + 1


# ------------------------------------------------------------------ death, healing, timeouts


def test_sigkilled_actor_heals_from_snapshot_and_log_without_losing_writes(local_ray, tmp_path):
    users = generate_users(900, seed=16)
    with DataBase(shards=3, backend="ray", snapshot_path=str(tmp_path / "db.json")) as db:
        db.add_users(users[:300])
        db.save()
        db.add_users(users[300:600])  # acknowledged: in the log only
        db.remove_users(users[:20])
        for round, victim in enumerate([1, 0]):
            old = db.stats()["shards"][victim]["pid"]
            os.kill(old, signal.SIGKILL)
            wait_until_dead(db, victim)
            start = 600 + 150 * round
            assert db.add_users(users[start : start + 150]) == 150  # the next call heals it first
            entry = db.stats()["shards"][victim]
            assert entry["restarts"] == 1 and entry["pid"] != old
        assert contents(db) == expected(users[20:])
        # a read that meets a dead actor (not noticed yet) is retried once the shard is rebuilt
        os.kill(db.stats()["shards"][2]["pid"], signal.SIGKILL)
        assert len(db) == 880
        assert db.stats()["shards"][2]["restarts"] == 1


def test_dead_actor_without_a_log_is_a_shard_error_not_a_hang(local_ray):
    with DataBase(shards=2, backend="ray") as db:
        db.add_users(generate_users(100, seed=17))
        os.kill(db.stats()["shards"][1]["pid"], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(ShardError, match="shard 1"):
            for _ in range(3):
                len(db)
        assert time.monotonic() - started < HANG
        with pytest.raises(ShardError, match="shard 1"):
            db.add_users(generate_users(30, seed=99))  # some go to shard 1


def test_a_stuck_actor_is_killed_at_the_call_timeout(local_ray, tmp_path):
    with DataBase(shards=2, backend="ray", call_timeout=3.0, snapshot_path=str(tmp_path / "db.json")) as db:
        users = generate_users(100, seed=18)
        db.add_users(users)
        pid = db.stats()["shards"][0]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(ShardError, match="timed out"):
                len(db)
            assert 3 <= time.monotonic() - started < 15
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert len(db) == 100  # healed from the log by the next call
        assert db.stats()["shards"][0]["pid"] != pid


def test_random_calls_match_a_dict_model_on_ray(local_ray, tmp_path):
    from hypothesis.stateful import run_state_machine_as_test
    from test_model import DataBaseMachine, _machine_settings

    with DataBase(shards=2, backend="ray", iter_chunk_size=3, cache_size=5) as db:
        run_state_machine_as_test(lambda: DataBaseMachine(db, tmp_path / "snap.json"), settings=_machine_settings(6, 15))


def test_a_shard_no_node_can_take_fails_at_ray_start_timeout(local_ray):
    started = time.monotonic()
    with pytest.raises(ShardError, match="did not start within ray_start_timeout"):
        DataBase(shards=1, backend="ray", ray_resources_per_shard={"no_such_node": 1}, ray_start_timeout=1.0)
    assert time.monotonic() - started < HANG
