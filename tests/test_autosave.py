"""Autosave scheduled by the coordinator: only when something changed, failures counted and
retried, a prompt stop that still waits for a save in flight, and save-on-close."""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
from pathlib import Path

import psutil
import pytest

import pydbms_shard.snapshot as snapshot_mod
from pydbms_shard import ConfigError, DataBase, SnapshotError, User
from pydbms_shard.snapshot import read_manifest

TICK = 0.2
HANG = 30.0  # seconds: waits that only detect a hang; no test asserts that a call is fast


def wait_until(predicate, timeout: float = HANG, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def autosave_stats(db: DataBase) -> dict:
    stats = db.stats()["autosave"]
    assert stats is not None
    return stats


def users(n: int, tag: str) -> list[User]:
    return [User(f"{tag}-{i}", i % 100) for i in range(n)]


def snapshot_users(path: Path) -> int:
    return read_manifest(path).users


def test_autosave_runs_only_when_something_changed(tmp_path):
    path = tmp_path / "auto.json"
    with DataBase(shards=2, snapshot_path=str(path)) as db:
        db.start_autosave(TICK)
        assert db.autosave_running
        time.sleep(3 * TICK)
        assert autosave_stats(db)["saves"] == 0, "saved with nothing changed"
        assert snapshot_users(path) == 0  # the empty snapshot written when the path was opened

        batch = users(30, "a")
        db.add_users(batch)
        wait_until(lambda: autosave_stats(db)["saves"] >= 1, what="the first autosave")
        assert snapshot_users(path) == 30
        assert db.stats()["changes_since_save"] == 0
        saves = autosave_stats(db)["saves"]
        generation = read_manifest(path).generation

        time.sleep(3 * TICK)  # nothing changed: no new save
        assert autosave_stats(db)["saves"] == saves
        db.add_users(batch)  # all already stored: nothing changes
        assert db.remove_users(["nobody"]) == 0
        time.sleep(3 * TICK)
        assert autosave_stats(db)["saves"] == saves
        assert read_manifest(path).generation == generation

        assert db.remove_users([batch[0].ID]) == 1  # a real change
        wait_until(lambda: autosave_stats(db)["saves"] > saves, what="an autosave after a removal")
        assert snapshot_users(path) == 29
        stats = autosave_stats(db)
        assert stats["failures"] == 0 and stats["last_error"] is None
        assert stats["last_save_at"] is not None
        assert stats["interval"] == TICK and stats["path"] == str(path)


def test_stop_autosave_does_not_wait_for_the_next_tick_of_a_long_interval(tmp_path):
    """With an hour between saves, stop_autosave() and close() return long before the next tick
    (each runs in a thread; a join that gives up after HANG seconds can only mean a hang)."""
    db = DataBase(shards=2, snapshot_path=str(tmp_path / "x.json"))
    try:
        db.start_autosave(3600)
        assert db.autosave_running
        time.sleep(0.1)  # let the schedule settle into its hour-long wait
        stopper = threading.Thread(target=db.stop_autosave)
        stopper.start()
        stopper.join(HANG)
        assert not stopper.is_alive(), "stop_autosave() waited for the next tick"
        assert not db.autosave_running
        assert autosave_stats(db)["running"] is False
        # close() with a long-interval schedule does not wait for the next tick either
        db.start_autosave(3600)
        closer = threading.Thread(target=db.close)
        closer.start()
        closer.join(HANG)
        assert not closer.is_alive(), "close() waited for the next autosave tick"
        assert db.closed
    finally:
        db.close()


def test_stop_autosave_waits_for_a_save_in_flight(tmp_path, monkeypatch):
    path = tmp_path / "slow.json"
    started_flag = tmp_path / "write-started"
    real = snapshot_mod.write_shard_file

    def slow_write(file_path, records, shard, shards, level, mode, progress=None):
        started_flag.touch()
        time.sleep(0.6)  # a big shard: the write takes a while
        return real(file_path, records, shard, shards, level, mode, progress)

    monkeypatch.setattr(snapshot_mod, "write_shard_file", slow_write)
    with DataBase(shards=2, snapshot_path=str(path), start_method="fork") as db:
        started_flag.unlink()  # opening the new path wrote its first, empty snapshot
        db.add_users(users(40, "s"))
        db.start_autosave(0.05)
        wait_until(started_flag.exists, what="the autosave to start writing")
        assert snapshot_users(path) == 0
        db.stop_autosave()
        # stop returned only once the save in flight had committed
        assert path.exists(), "stop_autosave() returned while a save was still being written"
        assert snapshot_users(path) == 40
        assert autosave_stats(db)["saves"] == 1
        assert not db.autosave_running
        generation = read_manifest(path).generation
        db.add_users(users(5, "later"))
        time.sleep(0.3)  # stopped means stopped
        assert read_manifest(path).generation == generation


def test_failed_autosave_is_counted_and_the_schedule_goes_on(tmp_path, caplog):
    directory = tmp_path / "snap"
    directory.mkdir()
    path = directory / "db.json"
    caplog.set_level(logging.WARNING)
    with DataBase(shards=2, snapshot_path=str(path)) as db:
        db.start_autosave(TICK / 2)
        db.add_users(users(10, "first"))
        wait_until(lambda: autosave_stats(db)["saves"] >= 1, what="the first autosave")
        saves = autosave_stats(db)["saves"]

        shutil.rmtree(directory)
        db.add_users(users(10, "second"))
        wait_until(lambda: autosave_stats(db)["failures"] >= 2, what="failed autosaves to be counted")
        stats = autosave_stats(db)
        assert stats["saves"] == saves
        assert stats["running"] is True and db.autosave_running
        assert stats["last_error"] and "SnapshotError" in stats["last_error"]
        assert str(directory) in stats["last_error"]
        assert any(str(directory) in r.getMessage() for r in caplog.records), "a failed autosave is not logged"

        directory.mkdir()  # the disk is back
        wait_until(lambda: autosave_stats(db)["saves"] > saves, what="an autosave after recovery")
        stats = autosave_stats(db)
        assert stats["failures"] >= 2
        assert snapshot_users(path) == 20
    with DataBase(shards=2) as fresh:
        fresh.load(path)
        assert len(fresh) == 20


def test_save_on_close(tmp_path):
    path = tmp_path / "close.json"
    batch = users(25, "c")
    with DataBase(shards=2, snapshot_path=str(path), save_on_close=True) as db:
        db.add_users(batch)
        assert snapshot_users(path) == 0
    assert db.closed
    assert snapshot_users(path) == 25
    with DataBase(shards=3) as fresh:
        fresh.load(path)
        assert sorted(u.name for u in fresh) == sorted(u.name for u in batch)


def test_close_stops_the_workers_even_when_the_last_save_fails(tmp_path):
    directory = tmp_path / "gone"
    directory.mkdir()
    db = DataBase(shards=2, snapshot_path=str(directory / "db.json"), save_on_close=True)
    pids = [s["pid"] for s in db.stats()["shards"]]
    db.add_users(users(3, "x"))
    shutil.rmtree(directory)
    with pytest.raises(SnapshotError):
        db.close()
    assert db.closed
    for pid in pids:
        try:
            psutil.Process(pid).wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
    db.close()  # a second close is a no-op


def test_no_save_on_close_by_default(tmp_path):
    path = tmp_path / "noclose.json"
    with DataBase(shards=2, snapshot_path=str(path)) as db:
        db.add_users(users(5, "n"))
    assert snapshot_users(path) == 0  # not saved, but logged:
    with DataBase(shards=2, snapshot_path=str(path)) as db:
        assert len(db) == 5


def test_save_on_close_or_autosave_need_a_path():
    with pytest.raises(ConfigError):
        DataBase(shards=1, save_on_close=True)
    with pytest.raises(ConfigError):
        DataBase(shards=1, autosave_interval=1)


def test_autosave_interval_in_config_starts_it(tmp_path):
    path = tmp_path / "cfg.json"
    with DataBase(shards=2, snapshot_path=str(path), autosave_interval=TICK) as db:
        assert db.autosave_running
        db.add_users(users(7, "k"))
        wait_until(lambda: autosave_stats(db)["saves"] >= 1, what="the configured autosave")
        assert snapshot_users(path) == 7
    assert not db.autosave_running


def test_autosave_interval_from_yaml_config(tmp_path):
    path = tmp_path / "yaml.json"
    config = tmp_path / "settings.yaml"
    config.write_text(f"shards: 2\nsnapshot_path: {str(path)!r}\nautosave_interval: {TICK}\nsave_on_close: true\n")
    with DataBase(config=str(config)) as db:
        assert db.autosave_running
        db.add_users(users(3, "y"))
        wait_until(lambda: path.exists() and snapshot_users(path) == 3, what="the YAML-configured autosave")
        db.add_users(users(2, "z"))
    assert snapshot_users(path) == 5  # saved on close


def test_autosave_after_loading_another_snapshot(tmp_path):
    target, other = tmp_path / "target.json", tmp_path / "other.json"
    with DataBase(shards=2) as writer:
        writer.add_users(users(12, "other"))
        writer.save(other)
    with DataBase(shards=2, snapshot_path=str(target)) as db:
        db.add_users(users(3, "mine"))
        db.save()
        db.start_autosave(TICK)
        db.load(other)  # the database now differs from what the autosave path holds
        time.sleep(4 * TICK)
        assert snapshot_users(target) == 12


def test_database_with_autosave_is_garbage_collected(tmp_path):
    existing = set(threading.enumerate())
    db = DataBase(shards=2, snapshot_path=str(tmp_path / "gc.json"), autosave_interval=0.1)
    pids = [s["pid"] for s in db.stats()["shards"]]
    before = {t for t in threading.enumerate() if t.name == "pydbms-autosave"} - existing
    assert before
    del db
    gc.collect()
    for pid in pids:
        try:
            psutil.Process(pid).wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
    wait_until(lambda: not any(t.is_alive() for t in before), timeout=5, what="the autosave thread to end")
