"""Interrupted calls, shards failing part-way through a batch, and other calls racing a save
or a load: the database's answers stay right."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pydbms_shard import DataBase, ShardError, User, generate_users
from pydbms_shard.codec import encode
from pydbms_shard.routing import shard_of


def on_shard(users: list[User], shard: int, shards: int) -> list[User]:
    return [u for u in users if shard_of(u.ID.bytes, shards) == shard]


def test_a_call_interrupted_between_send_and_reply_does_not_shift_later_replies():
    users = generate_users(50, seed=1)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users)
        for handle in db._shards:  # what an interrupted call leaves behind: a reply nobody read
            handle.send(encode(["find", encode([]), encode([users[0].name])]))
        assert len(db) == 50
        assert db.search_users([users[3].name]) == [users[3]]
        assert db.has_user([u.ID for u in users])


def test_writes_applied_by_healthy_shards_reach_the_cache_and_the_change_count():
    users = generate_users(40, seed=2)
    a, b = on_shard(users, 0, 2)[0], on_shard(users, 1, 2)[0]
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users)
        assert db.get(a.ID) == a  # now cached
        before = db.stats()["changes_since_save"]
        os.kill(db.stats()["shards"][1]["pid"], signal.SIGKILL)
        with pytest.raises(ShardError, match="shard 1"):
            db.remove_users([a.ID, b.ID])
        assert db.get(a.ID) is None  # shard 0 removed it: the cache must not say otherwise
        assert a.ID not in db
        assert db._dirty == before + 1


def test_saving_elsewhere_does_not_make_autosave_skip_its_own_file(tmp_path):
    users = generate_users(30, seed=3)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users)
        db.start_autosave(0.2, tmp_path / "auto.json")
        deadline = time.monotonic() + 5
        while db.stats()["autosave"]["saves"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        db.add(User("late", 9))
        db.save(tmp_path / "other.json")
        deadline = time.monotonic() + 5
        while db.stats()["autosave"]["saves"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        db.stop_autosave()
    with DataBase(shards=1, start_method="fork") as check:
        check.load(tmp_path / "auto.json")
        assert len(check) == 31


def test_iteration_keeps_its_cut_across_a_load(tmp_path):
    users = generate_users(200, seed=4)
    with DataBase(shards=2, iter_chunk_size=10, start_method="fork") as db:
        db.add_users(users)
        db.save(tmp_path / "s.json")
        it = iter(db)
        first = [next(it) for _ in range(5)]
        db.clear_database()
        db.load(tmp_path / "s.json")
        rest = list(it)
        assert sorted(u.ID for u in first + rest) == sorted(u.ID for u in users)


def test_a_dropped_iterator_releases_its_cut_at_the_next_call():
    with DataBase(shards=2, iter_chunk_size=5, start_method="fork") as db:
        db.add_users(generate_users(30, seed=5))
        it = iter(db)
        next(it)
        del it
        assert len(db) == 30  # this call releases the cut
        assert all(s["open_scans"] == 0 for s in db.stats()["shards"])


def test_calls_go_on_while_a_save_writes(tmp_path, monkeypatch):
    """Callers wait for the cut only, not for files being written (a slow disk is injected)."""
    import pydbms_shard.snapshot as snapshot_mod

    real = snapshot_mod.write_shard_file

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot_mod, "write_shard_file", slow)
    users = generate_users(100, seed=6)
    with DataBase(shards=2, start_method="fork", cache_size=0) as db:
        db.add_users(users)
        import threading

        saver = threading.Thread(target=db.save, args=(tmp_path / "slow.json",))
        saver.start()
        time.sleep(0.2)
        started = time.monotonic()
        for user in users[:20]:
            assert db.get(user.ID) == user
        took = time.monotonic() - started
        assert saver.is_alive(), "the save should still be writing"
        saver.join()
        assert took < 0.5, f"20 gets took {took:.2f} s during a save"


def test_each_thread_reads_its_own_writes_through_the_cache():
    """Threads replace their own users over and over; right after each upsert returns, a get
    (served by the cache when it can be) must show the new version."""
    import threading

    errors = []
    with DataBase(shards=2, start_method="fork", cache_size=50) as db:
        def work(t: int) -> None:
            mine = generate_users(20, seed=100 + t)
            db.add_users(mine)
            for round_ in range(30):
                for user in mine[round_ % 20 : round_ % 20 + 3]:
                    newer = User(f"{user.name}-{round_}", (user.age + round_) % 150, user.ID)
                    db.get(user.ID)  # fill the cache with the old version
                    db.upsert_users([newer])
                    got = db.get(user.ID)
                    if got is None or got.name != newer.name:
                        errors.append((t, round_, got))
                if round_ % 10 == 0:
                    db.remove_users([mine[0].name])
                    if db.get(mine[0].ID) is not None and db.get(mine[0].ID).name == mine[0].name:
                        errors.append((t, round_, "removed user still served"))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
