"""Process hygiene with real worker processes: close, garbage collection, a SIGKILLed parent,
a killed worker, many threads at once, and every start method."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from pydbms_shard import ClosedError, DataBase, ShardError, User
from pydbms_shard.routing import shard_of

HANG = 30.0  # seconds: only detects a hang; nothing here asserts that a call is fast


def fields(user):
    return None if user is None else (user.ID, user.name, user.age, json.dumps(user.to_dict()["extras"], sort_keys=True))


def worker_pids(db: DataBase) -> list[int]:
    pids = [s["pid"] for s in db.stats()["shards"]]
    assert len(pids) == db.shard_count and len(set(pids)) == len(pids)
    return pids


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids, timeout: float = HANG) -> list[int]:
    """The pids still running after ``timeout`` seconds (empty when all are gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if not is_gone(pid)]
        if alive:
            time.sleep(0.05)
    return [pid for pid in alive if not is_gone(pid)]


def users_on_shard(shard: int, shards: int, n: int, prefix: str = "u") -> list[User]:
    out = []
    while len(out) < n:
        user = User(f"{prefix}{len(out)}", 20)
        if shard_of(user.ID.bytes, shards) == shard:
            out.append(user)
    return out


# ------------------------------------------------------------------ start methods, close


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_start_method_works_and_close_stops_every_worker(start_method):
    db = DataBase(shards=2, start_method=start_method)
    try:
        pids = worker_pids(db)
        assert all(not is_gone(pid) for pid in pids)
        assert os.getpid() not in pids
        users = [User(f"n{k % 5}", k % 100, extras={"k": k}) for k in range(200)]
        assert db.add_users(users) == 200
        assert fields(db.get(users[7].ID)) == fields(users[7])
        assert len(db.find_by_name("n3")) == 40
        assert len(db) == 200 and len(list(db)) == 200
        assert all(s["users"] > 0 for s in db.stats()["shards"])
    finally:
        db.close()
    assert wait_gone(pids) == []
    with pytest.raises(ClosedError):
        db.get(users[0].ID)
    db.close()  # idempotent


def test_context_manager_stops_workers():
    with DataBase(shards=2) as db:
        pids = worker_pids(db)
        db.add(User("a", 1))
    assert db.closed
    assert wait_gone(pids) == []


def test_garbage_collection_stops_workers():
    db = DataBase(shards=2)
    pids = worker_pids(db)
    db.add_users([User("a", 1), User("b", 2)])
    ref = weakref.ref(db)
    del db
    gc.collect()
    assert ref() is None, "the DataBase should be collectable once unreferenced"
    assert wait_gone(pids) == []


def test_garbage_collection_after_iterating_stops_workers():
    db = DataBase(shards=2, iter_chunk_size=3)
    pids = worker_pids(db)
    db.add_users([User(f"u{k}", 1) for k in range(20)])
    it = iter(db)
    next(it)
    del it, db
    gc.collect()
    assert wait_gone(pids) == []


# ------------------------------------------------------------------ parent killed with SIGKILL

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pydbms_shard import DataBase, User
    db = DataBase(shards=2, start_method=sys.argv[1])
    db.add_users([User("a", 1), User("b", 2)])
    print(json.dumps([s["pid"] for s in db.stats()["shards"]]), flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_workers_exit_when_the_parent_is_sigkilled(start_method):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, start_method], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line_holder: list[str] = []
    reader = threading.Thread(target=lambda: line_holder.append(child.stdout.readline()), daemon=True)
    reader.start()
    try:
        reader.join(2 * HANG)
        assert line_holder and line_holder[0].strip(), f"child printed nothing: {child.stderr.read() if child.poll() is not None else ''}"
        pids = json.loads(line_holder[0])
        assert len(pids) == 2
        assert all(not is_gone(pid) for pid in pids)
        descendants = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        assert set(pids) <= set(descendants)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(HANG)
        assert wait_gone(pids) == [], "workers outlived their SIGKILLed parent"
        assert wait_gone(descendants) == [], "a helper process outlived its SIGKILLed parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        reader.join(HANG)  # the pipe is closed only once nothing reads it any more
        if not reader.is_alive():
            child.stdout.close()
        child.stderr.close()


# ------------------------------------------------------------------ a killed worker


def test_killed_worker_makes_calls_raise_shard_error_naming_it():
    db = DataBase(shards=3)
    try:
        pids = worker_pids(db)
        victims = users_on_shard(1, 3, 3)
        others = users_on_shard(0, 3, 3, "o")
        db.add_users(victims + others)
        os.kill(pids[1], signal.SIGKILL)
        wait_gone([pids[1]])
        calls = [
            lambda: len(db),
            lambda: db.add_users([User("new", 1) for _ in range(30)]),
            lambda: db.search_users(["u0"]),
            lambda: db.get(users_on_shard(1, 3, 1, "fresh")[0].ID),
            lambda: db.get_many([u.ID for u in victims]),
            lambda: db.remove_users([victims[0]]),
            lambda: db.has_user([victims[1]]),
            lambda: list(db),
            lambda: db.clear_database(),
        ]
        for call in calls:
            with pytest.raises(ShardError) as info:
                call()
            assert info.value.shard == 1
            assert "shard 1" in str(info.value)
        failed = db.stats()["shards"][1]  # stats() reports the failed shard instead of raising
        assert "lost" in failed["failed"] and failed["users"] == 0
    finally:
        db.close()
    assert wait_gone(pids) == []
    with pytest.raises(ClosedError):
        len(db)


def test_worker_killed_while_calls_are_in_flight():
    db = DataBase(shards=2, start_method="fork")
    try:
        pids = worker_pids(db)
        db.add_users([User(f"u{k}", 1) for k in range(2000)])
        killer = threading.Timer(0.2, os.kill, (pids[0], signal.SIGKILL))
        killer.start()
        deadline = time.monotonic() + HANG
        error = None
        while time.monotonic() < deadline:
            try:
                db.search_users([f"u{k}" for k in range(0, 2000, 3)])
            except ShardError as exc:
                error = exc
                break
        killer.join()
        assert error is not None, "a call after the kill should raise ShardError"
        assert error.shard == 0 and "shard 0" in str(error)
    finally:
        db.close()
    assert wait_gone(pids) == []


def test_iteration_streams_in_chunks():
    """Fault injection: kill the worker after the first chunk arrived. If all users had come in
    one message the rest would still arrive; streamed in chunks, the next chunk cannot."""
    db = DataBase(shards=1, iter_chunk_size=5, start_method="fork")
    try:
        (pid,) = worker_pids(db)
        db.add_users([User(f"u{k}", 1) for k in range(50)])
        it = iter(db)
        received = [next(it)]
        os.kill(pid, signal.SIGKILL)
        wait_gone([pid])
        with pytest.raises(ShardError):
            for user in it:
                received.append(user)
        assert len(received) == 5
    finally:
        db.close()


# ------------------------------------------------------------------ many threads


def test_many_threads_share_one_database():
    n_threads, per_thread, rounds = 8, 60, 5
    size = per_thread // rounds
    with DataBase(shards=3, cache_size=50) as db:
        stop = threading.Event()
        reader_errors: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set():
                    assert len(db) >= 0
                    sum(1 for _ in db)
                    db.stats()
            except BaseException as exc:
                reader_errors.append(exc)

        def worker(t: int) -> dict:
            mine = [User(f"t{t}-{k}", k % 100, extras={"t": t}) for k in range(per_thread)]
            model: dict[uuid.UUID, User] = {}
            for r in range(rounds):
                batch = mine[r * size : (r + 1) * size]
                assert db.add_users(batch) == size
                model.update((u.ID, u) for u in batch)
                for user in batch:
                    assert fields(db.get(user.ID)) == fields(user)
                    assert user.ID in db
                assert [fields(u) for u in db.get_many([u.ID for u in batch])] == [fields(u) for u in batch]
                replaced = [User(u.name + "-r", u.age, u.ID) for u in batch[: size // 2]]
                assert db.upsert_users(replaced) == 0
                model.update((u.ID, u) for u in replaced)
                assert fields(db.get(replaced[0].ID)) == fields(replaced[0])
                gone = [batch[-1].ID, batch[-2], replaced[1].name]
                assert db.remove_users(gone) == 3
                for item in (batch[-1].ID, batch[-2].ID, replaced[1].ID):
                    del model[item]
                assert db.contains_many([batch[-1].ID, batch[0].ID]) == [False, True]
                assert [fields(u) for u in db.search_users([replaced[0].name, batch[-3]])] == [
                    fields(replaced[0]),
                    fields(batch[-3]),
                ]
            return model

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for thread in readers:
            thread.start()
        try:
            with ThreadPoolExecutor(n_threads) as pool:
                models = list(pool.map(worker, range(n_threads)))
        finally:
            stop.set()
            for thread in readers:
                thread.join(30)
        assert reader_errors == []
        expected = {}
        for model in models:
            expected.update(model)
        assert len(db) == len(expected) == n_threads * rounds * (size - 3)
        assert sorted(map(fields, db)) == sorted(map(fields, expected.values()))


def test_each_batch_call_is_atomic_across_shards():
    """A writer adds and removes whole batches; readers must never see part of one."""
    batch_size = 30
    with DataBase(shards=3) as db:
        stop = threading.Event()
        seen_sizes: set[int] = set()
        seen_groups: set[int] = set()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                while not stop.is_set():
                    batch = [User("batch", k) for k in range(batch_size)]
                    db.add_users(batch)
                    db.remove_users(["batch"])
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                while not stop.is_set():
                    seen_sizes.add(len(db))
                    seen_groups.add(len(db.find_by_name("batch")))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert seen_sizes <= {0, batch_size}, seen_sizes
        assert seen_groups <= {0, batch_size}, seen_groups
        assert seen_sizes and seen_groups
