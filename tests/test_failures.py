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

HANG = 30.0  # seconds: a wait that only detects a hang; no test asserts that a call is fast


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


@pytest.mark.crash
def test_a_write_that_fails_on_one_shard_is_rolled_back_on_the_others():
    """No log here, so the dead shard stays failed; the healthy shard undoes its part, and
    the cache and the change count agree with it."""
    users = generate_users(40, seed=2)
    a, b = on_shard(users, 0, 2)[0], on_shard(users, 1, 2)[0]
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users)
        assert db.get(a.ID) == a  # now cached
        before = db.stats()["changes_since_save"]
        os.kill(db.stats()["shards"][1]["pid"], signal.SIGKILL)
        with pytest.raises(ShardError, match="shard 1"):
            db.remove_users([a.ID, b.ID])
        assert db.get(a.ID) == a  # rolled back on shard 0
        assert db.get_many([a.ID]) == [a]  # asked of the shard itself, not the cache
        assert db._dirty == before


def test_saving_elsewhere_does_not_make_autosave_skip_its_own_file(tmp_path):
    users = generate_users(30, seed=3)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users)
        db.start_autosave(0.2, tmp_path / "auto.json")
        deadline = time.monotonic() + HANG
        while db.stats()["autosave"]["saves"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        db.add(User("late", 9))
        db.save(tmp_path / "other.json")
        deadline = time.monotonic() + HANG
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
    """Callers wait for the cut only, not for files being written: the shard writers are held
    until the gets are done, so the gets can only finish while the save is still writing."""
    import threading

    import pydbms_shard.snapshot as snapshot_mod

    real = snapshot_mod.write_shard_file
    started_flag, release_flag = tmp_path / "write-started", tmp_path / "write-release"

    def held(*args, **kwargs):  # runs in the (forked) worker's writer thread
        started_flag.touch()
        deadline = time.monotonic() + HANG
        while not release_flag.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot_mod, "write_shard_file", held)
    users = generate_users(100, seed=6)
    with DataBase(shards=2, start_method="fork", cache_size=0) as db:
        db.add_users(users)
        saver = threading.Thread(target=db.save, args=(tmp_path / "slow.json",))
        saver.start()
        try:
            deadline = time.monotonic() + HANG
            while not started_flag.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert started_flag.exists(), "the save never started writing"
            got = []
            getter = threading.Thread(target=lambda: got.extend(db.get(user.ID) for user in users[:20]))
            getter.start()
            getter.join(HANG)
            assert not getter.is_alive(), "the gets waited for the files being written"
            assert got == users[:20]
            assert saver.is_alive(), "the save should still be writing"
        finally:
            release_flag.touch()
            saver.join(HANG)
        assert not saver.is_alive()


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


def test_ctrl_c_while_replies_are_awaited_takes_effect_after_the_call(monkeypatch):
    """Ctrl-C (fault-injected as SIGINT raised while replies are awaited) must not leave the
    shards changed behind the cache and the change count: it is raised once the call is done."""
    from pydbms_shard.shards import ShardHandle

    users = generate_users(500, seed=8)
    newer = [User(u.name + "-new", u.age, u.ID) for u in users]
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users)
        assert db.get(users[5].ID).name == users[5].name  # cached
        before = db.stats()["changes_since_save"]
        real = ShardHandle.recv

        def recv_with_ctrl_c(self, deadline=None):
            signal.raise_signal(signal.SIGINT)
            return real(self, deadline)

        monkeypatch.setattr(ShardHandle, "recv", recv_with_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            db.upsert_users(newer)
        monkeypatch.undo()
        assert db.get(users[5].ID).name == users[5].name + "-new"
        assert db.stats()["changes_since_save"] == before + 500
        assert len(db) == 500


def test_manifest_must_agree_with_the_file_headers_on_the_shard_count(tmp_path):
    import json

    from pydbms_shard import SnapshotError

    with DataBase(shards=3, start_method="fork") as db:
        db.add_users(generate_users(300, seed=9))
        db.save(tmp_path / "three.json")
    manifest = json.loads((tmp_path / "three.json").read_text())
    manifest["files"] = manifest["files"][:2]
    manifest["shards"] = 2
    manifest["users"] = sum(f["users"] for f in manifest["files"])
    (tmp_path / "two.json").write_text(json.dumps(manifest))
    with DataBase(shards=2, start_method="fork") as db:
        with pytest.raises(SnapshotError, match="3-shard save"):
            db.load(tmp_path / "two.json")
        assert len(db) == 0


def test_a_symlinked_manifest_is_followed_for_load_and_save(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(real / "db.json")
    users = generate_users(50, seed=10)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users[:40])
        db.save(real / "db.json")
        db.load(link)
        assert len(db) == 40
        db.add_users(users[40:])
        db.save(link)
    assert link.is_symlink()
    with DataBase(shards=1, start_method="fork") as db:
        db.load(real / "db.json")
        assert len(db) == 50


@pytest.mark.parametrize("interval", [float("inf"), 1e12])
def test_an_autosave_interval_too_long_to_wait_is_refused(tmp_path, interval):
    from pydbms_shard import Config, ConfigError

    with DataBase(shards=1, start_method="fork") as db:
        with pytest.raises(ConfigError, match="autosave_interval"):
            db.start_autosave(interval, tmp_path / "a.json")
    with pytest.raises(ConfigError, match="autosave_interval"):
        Config.from_mapping({"autosave_interval": interval, "snapshot_path": str(tmp_path / "a.json")})


def test_a_config_file_that_is_not_text_names_the_file(tmp_path):
    from pydbms_shard import Config, ConfigError

    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\xff\xfe\x00shards")
    with pytest.raises(ConfigError, match="binary.yaml"):
        Config.from_yaml(bad)


def test_autosave_without_a_path_in_a_file_names_the_file(tmp_path):
    from pydbms_shard import Config, ConfigError

    cfg = tmp_path / "auto.yaml"
    cfg.write_text("autosave_interval: 5\n")
    with pytest.raises(ConfigError, match="auto.yaml.*snapshot_path"):
        Config.from_yaml(cfg)
