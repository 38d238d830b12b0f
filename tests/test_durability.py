"""Durability: the write-ahead log, recovery on open, atomic calls, self-healing shards,
timeouts, disk faults and odd manifest sources. Every test uses real worker processes and
real files; faults are injected only where the disk cannot be made to fail for real."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from pydbms_shard import DataBase, User, generate_users
from pydbms_shard.codec import encode
from pydbms_shard.errors import (
    LogDamagedError,
    LogWriteError,
    PydbmsError,
    ReadOnlyError,
    ShardError,
    SnapshotError,
)
from pydbms_shard.shards import exchange
from pydbms_shard.workers import log as wal


def _state(db: DataBase) -> dict[uuid.UUID, tuple[str, int]]:
    return {u.ID: (u.name, u.age) for u in db}


def _inject(db: DataBase, shard: int, call: str, error: int, after: int = 0) -> None:
    messages: list[bytes | None] = [None] * db.shard_count
    messages[shard] = encode(["inject_fault", call, error, after])
    exchange(db._shards, messages)


def _pid(db: DataBase, shard: int) -> int:
    return db.stats()["shards"][shard]["pid"]


def _segments(path: Path) -> list[Path]:
    return [p for p, _ in wal.list_segments(path)]


# ---------------------------------------------------------------- recovery on open


@pytest.mark.crash
def test_acknowledged_writes_survive_sigkill_of_the_whole_program(tmp_path):
    """Save 1,000 users, add 5,000 more, SIGKILL the program and its workers: all 6,000 come back."""
    path = tmp_path / "db.json"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pydbms_shard import DataBase, generate_users
        users = generate_users(6000, seed=7)
        db = DataBase(shards=2, snapshot_path={str(path)!r})
        db.add_users(users[:1000])
        db.save()
        for k in range(1000, 6000, 500):
            db.add_users(users[k:k + 500])
        db.remove_users([users[0].name])
        print("acked", flush=True)
        os.killpg(os.getpgid(0), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, start_new_session=True, timeout=120)
    assert result.stdout.strip() == "acked", result.stderr
    users = generate_users(6000, seed=7)
    expected = {u.ID: (u.name, u.age) for u in users if u.name != users[0].name}
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


def test_open_loads_the_snapshot_so_save_on_close_never_writes_an_empty_one(tmp_path):
    path = tmp_path / "db.json"
    users = generate_users(300, seed=1)
    for cycle in range(3):
        with DataBase(shards=2, snapshot_path=path, save_on_close=True) as db:
            assert len(db) == 300 * cycle
            db.add_users(users[cycle * 100 : cycle * 100 + 100] + generate_users(200, seed=100 + cycle))
    with DataBase(shards=2, snapshot_path=path) as db:
        assert len(db) == 900


@pytest.mark.parametrize("log_on", [True, False])
def test_reopening_with_another_shard_count_reroutes(tmp_path, log_on):
    path = tmp_path / "db.json"
    users = generate_users(2000, seed=3)
    with DataBase(shards=3, snapshot_path=path) as db:
        db.add_users(users[:1000])
        db.save()
        db.add_users(users[1000:])  # only in the log
        db.remove_users(users[:5])
        before = _state(db)
    for shards in (1, 2, 4):
        with DataBase(shards=shards, snapshot_path=path, log=log_on) as db:
            assert _state(db) == before
            assert db.search_users([u.ID for u in users[10:20]]) == users[10:20]  # each user on its own shard


def test_a_second_database_on_the_same_path_is_refused(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path):
        with pytest.raises(SnapshotError, match="already open"):
            DataBase(shards=1, snapshot_path=path)
    with DataBase(shards=1, snapshot_path=path):
        pass  # released on close


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SnapshotError, match="does not exist"):
        DataBase(shards=1, snapshot_path=tmp_path / "nowhere" / "db.json")


def test_every_write_kind_is_replayed(tmp_path):
    path = tmp_path / "db.json"
    users = generate_users(500, seed=5)
    with DataBase(shards=2, snapshot_path=path) as db:
        db.add_users(users)
        db.upsert_users([User("Renamed", 40, ID=users[0].ID), User("New", 3)])
        db.remove_users([users[1].ID, users[2].name])
        db.clear_database()
        db.add_users(users[:50])
        db.upsert_users([User("Again", 41, ID=users[3].ID)])
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


# ---------------------------------------------------------------- the log's files


def test_torn_tail_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "db.json"
    users = generate_users(100, seed=2)
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add_users(users)
    segment = max(_segments(path), key=lambda p: p.stat().st_size)
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00partial record")
    with caplog.at_level(logging.WARNING, logger="pydbms_shard"):
        with DataBase(shards=1, snapshot_path=path) as db:
            assert len(db) == 100
    assert any("torn" in r.getMessage() for r in caplog.records)
    with DataBase(shards=1, snapshot_path=path) as db:  # truncated: no second warning needed
        assert len(db) == 100


def test_damage_refuses_to_open_changes_nothing_and_repair_recovers_the_prefix(tmp_path):
    path = tmp_path / "db.json"
    users = generate_users(300, seed=4)
    with DataBase(shards=1, snapshot_path=path) as db:
        for k in range(0, 300, 100):
            db.add_users(users[k : k + 100])
    segment = max(_segments(path), key=lambda p: p.stat().st_size)
    scan = wal.scan_segment(segment)
    assert len(scan.records) == 3
    data = bytearray(segment.read_bytes())
    middle = scan.records[1]
    data[middle.start + 30] ^= 0xFF
    segment.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(LogDamagedError) as exc:
        DataBase(shards=1, snapshot_path=path)
    assert str(segment) in str(exc.value) and str(middle.start) in str(exc.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    verify = subprocess.run([sys.executable, "-m", "pydbms_shard", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 1 and "damaged log" in verify.stderr
    opened = subprocess.run(
        [sys.executable, "-m", "pydbms_shard", "get", str(path), str(users[0].ID)], capture_output=True, text=True, timeout=60
    )
    assert opened.returncode == 4 and "repair" in opened.stderr and len(opened.stderr.strip().splitlines()) == 1
    result = subprocess.run([sys.executable, "-m", "pydbms_shard", "repair", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert any(p.name.startswith(segment.name + ".damaged-") for p in tmp_path.iterdir())
    with DataBase(shards=1, snapshot_path=path) as db:
        assert _state(db) == {u.ID: (u.name, u.age) for u in users[:100]}


def test_checkpoints_bound_the_log(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path, log_checkpoint_bytes=1 << 20) as db:
        for k in range(12):
            db.add_users(generate_users(5000, seed=k))
        if db._checkpointer is not None:
            db._checkpointer.join()
        total = sum(p.stat().st_size for p in _segments(path))
        assert total < 3 << 20, f"{total} bytes of log after checkpoints"
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


def test_save_is_a_checkpoint_and_removes_covered_segments(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path, keep_generations=1) as db:
        db.add_users(generate_users(100, seed=1))
        first = set(_segments(path))
        db.save()
        db.add_users(generate_users(100, seed=2))
        db.save()
        assert not first & set(_segments(path)), "segments covered by the snapshot were kept"
        assert db.stats()["log"]["bytes_since_checkpoint"] == 0


def test_load_other_and_save_other_keep_the_own_log_consistent(tmp_path):
    own, other = tmp_path / "db.json", tmp_path / "other.json"
    a, b = generate_users(200, seed=1), generate_users(300, seed=2)
    with DataBase(shards=2) as db:
        db.add_users(b)
        db.save(other)
    with DataBase(shards=2, snapshot_path=own) as db:
        db.add_users(a)
        db.load(other)
        assert len(db) == 300
        db.add_users(a[:10])
        db.save(tmp_path / "copy.json")  # a copy: the own snapshot and log stay where they are
        db.add_users(a[10:20])
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=own) as db:
        assert _state(db) == expected
    with DataBase(shards=2, snapshot_path=tmp_path / "copy.json") as db:
        assert len(db) == 310


@pytest.mark.parametrize("fsync", ["always", "everysec", "no"])
def test_every_fsync_setting_recovers_after_a_clean_close(tmp_path, fsync):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path, log_fsync=fsync) as db:
        for k in range(20):
            db.add(User(f"user{k}", k))
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


def test_always_fsyncs_once_per_call_not_per_user(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add_users(generate_users(10_000, seed=1))
        db.add_users(generate_users(10_000, seed=2))
        assert db.stats()["shards"][0]["log"]["fsyncs"] == 2


# ---------------------------------------------------------------- self-healing


@pytest.mark.crash
def test_killed_worker_is_rebuilt_and_the_next_call_succeeds(tmp_path):
    path = tmp_path / "db.json"
    users = generate_users(1000, seed=9)
    with DataBase(shards=2, snapshot_path=path) as db:
        db.add_users(users[:500])
        db.save()
        db.add_users(users[500:])
        expected = _state(db)
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV):
            os.kill(_pid(db, 1), sig)
            assert _state(db) == expected
        stats = db.stats()
        assert [s["restarts"] for s in stats["shards"]] == [0, 3]
        db.add(User("after", 1))
        assert len(db) == 1001


def test_worker_killed_mid_call_rolls_the_call_back_everywhere(tmp_path):
    """A write whose worker dies half-way changes nothing on any shard."""
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path) as db:
        db.add_users(generate_users(200, seed=1))
        expected = _state(db)
        _inject(db, 1, "write", errno.EIO)  # shard 1 fails to log: shard 0 must undo its part
        with pytest.raises(LogWriteError):
            db.add_users(generate_users(100, seed=2))
        assert _state(db) == expected
        with pytest.raises(ReadOnlyError):
            db.add(User("refused", 1))
        assert db.get(next(iter(expected))) is not None  # reads keep working
        db.save()  # the user acts: a checkpoint onto fresh segments makes it writable again
        db.add_users(generate_users(100, seed=3))
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


@pytest.mark.parametrize("call", ["write", "fsync"])
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_disk_faults_raise_and_make_the_database_read_only(tmp_path, call, error):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path) as db:
        db.add_users(generate_users(100, seed=1))
        expected = _state(db)
        _inject(db, 0, call, error)
        with pytest.raises(LogWriteError, match="read-only"):
            db.add_users(generate_users(100, seed=2))
        assert _state(db) == expected
        assert db.stats()["read_only"]
        with pytest.raises(ReadOnlyError):
            db.remove_users([u for u in list(expected)[:3]])
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


def test_failed_fsync_is_not_retried(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path) as db:
        _inject(db, 0, "fsync", errno.EIO)
        with pytest.raises(LogWriteError):
            db.add(User("a", 1))
        with pytest.raises(ReadOnlyError):
            db.add(User("b", 2))
        assert db.stats()["shards"][0]["log"]["failed"]


@pytest.mark.slow
@pytest.mark.crash
def test_sigstopped_worker_times_out_is_rebuilt_and_close_does_not_hang(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path, call_timeout=1.5) as db:
        db.add_users(generate_users(400, seed=1))
        expected = _state(db)
        os.kill(_pid(db, 0), signal.SIGSTOP)
        with pytest.raises(ShardError, match="timed out"):
            db.add_users(generate_users(400, seed=2))
        assert _state(db) == expected  # rolled back, the shard rebuilt
        assert db.stats()["shards"][0]["restarts"] == 1
        os.kill(_pid(db, 1), signal.SIGSTOP)
    # leaving the with block closed the DataBase despite a stopped worker


@pytest.mark.timeout(30)
@pytest.mark.crash
def test_close_returns_while_another_thread_waits_on_a_stopped_worker(tmp_path):
    db = DataBase(shards=2, call_timeout=600)
    users = generate_users(100, seed=1)
    db.add_users(users)
    os.kill(_pid(db, 1), signal.SIGSTOP)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            len(db)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(0.5)
    db.close()
    thread.join(10)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], PydbmsError)


@pytest.mark.crash
def test_restarts_are_capped(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path, max_restarts=2, restart_window=600) as db:
        db.add_users(generate_users(100, seed=1))
        for _ in range(2):
            os.kill(_pid(db, 0), signal.SIGKILL)
            assert len(db) == 100
        os.kill(_pid(db, 0), signal.SIGKILL)
        with pytest.raises(ShardError, match="stays failed"):
            len(db)
        with pytest.raises(ShardError, match="stays failed"):
            db.add_users(generate_users(10, seed=2))
    with DataBase(shards=2, snapshot_path=path) as db:  # reopening recovers it
        assert len(db) == 100


@pytest.mark.crash
def test_without_a_log_a_dead_shard_stays_failed_and_says_its_users_are_lost():
    with DataBase(shards=2) as db:
        users = generate_users(200, seed=1)
        db.add_users(users)
        victim = _pid(db, 1)
        os.kill(victim, signal.SIGKILL)
        for _ in range(2):
            with pytest.raises(ShardError, match="lost"):
                len(db)


def test_memory_error_in_a_worker_is_healed(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path) as db:
        db.add_users(generate_users(100, seed=1))
        expected = _state(db)
        messages: list[bytes | None] = [encode(["inject_fault", "write", errno.EIO, 0]), None]
        exchange(db._shards, messages)
        with pytest.raises(LogWriteError):
            db.add_users(generate_users(100, seed=2))
        assert _state(db) == expected


# ---------------------------------------------------------------- odd manifest sources


@pytest.mark.timeout(30)
def test_load_refuses_devices_and_pipes(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with DataBase(shards=1) as db:
        for source in ("/dev/zero", str(fifo), "/dev/null"):
            with pytest.raises(SnapshotError, match="not a regular file"):
                db.load(source)


def test_load_caps_what_it_reads_of_a_manifest(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    with DataBase(shards=1) as db:
        with pytest.raises(SnapshotError, match="too large"):
            db.load(big)


@pytest.mark.crash
def test_a_path_open_in_another_process_is_refused_until_that_process_dies(tmp_path):
    path = tmp_path / "db.json"
    script = (
        f"from pydbms_shard import DataBase\ndb = DataBase(shards=1, snapshot_path={str(path)!r})\nprint('open', flush=True)\ninput()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as child:
        try:
            assert child.stdout.readline().strip() == "open"
            with pytest.raises(SnapshotError, match="another process"):
                DataBase(shards=1, snapshot_path=path)
            with DataBase(shards=1) as other:
                with pytest.raises(SnapshotError, match="another process"):
                    other.save(path)  # a copy must not land on a path another DataBase logs beside
        finally:
            os.killpg(child.pid, signal.SIGKILL)
    with DataBase(shards=1, snapshot_path=path) as db:
        assert len(db) == 0


def test_forked_workers_do_not_keep_another_database_path_locked(tmp_path):
    a = DataBase(shards=1, snapshot_path=tmp_path / "a.json", start_method="fork")
    with DataBase(shards=1, snapshot_path=tmp_path / "b.json", start_method="fork"):
        a.close()  # b's workers were forked while a held its path
        with DataBase(shards=1, snapshot_path=tmp_path / "a.json", start_method="fork") as again:
            assert len(again) == 0


# ---------------------------------------------------------------- rebuilding against bad files


def _damage_middle_record(segment: Path) -> None:
    scan = wal.scan_segment(segment)
    data = bytearray(segment.read_bytes())
    data[scan.records[len(scan.records) // 2].start + 30] ^= 0xFF
    segment.write_bytes(bytes(data))


def _newest_segment(path: Path, shard: int) -> Path:
    return max(
        (p for p, name in wal.list_segments(path) if name.shard == shard), key=lambda p: wal.parse_segment_name(path.name, p.name).base
    )


@pytest.mark.crash
def test_a_shard_whose_log_is_damaged_stays_failed_instead_of_coming_back_empty(tmp_path):
    path = tmp_path / "db.json"
    users = generate_users(600, seed=11)
    with DataBase(shards=2, snapshot_path=path) as db:
        for k in range(0, 600, 100):
            db.add_users(users[k : k + 100])
        _damage_middle_record(_newest_segment(path, 0))
        os.kill(_pid(db, 0), signal.SIGKILL)
        with pytest.raises(ShardError, match="could not be rebuilt"):
            len(db)
        with pytest.raises((ShardError, ReadOnlyError)):  # its log cannot be cut back: no more writes
            db.add_users(generate_users(50, seed=12))
        on_one = [u for u in users if _routes_to(u, 1, 2)]
        assert db.get_many(on_one) == on_one  # the healthy shard still answers
        assert db.stats()["read_only"]


def _routes_to(user: User, shard: int, shards: int) -> bool:
    from pydbms_shard.routing import shard_of

    return shard_of(user.ID.bytes, shards) == shard


@pytest.mark.crash
def test_calls_after_a_shard_was_lost_survive_reopening(tmp_path):
    """A lost shard's log is cut back, so the call numbers reused by later calls on the
    healthy shards are not mistaken for the failed call's leftovers."""
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path, max_restarts=0) as db:
        db.add_users(generate_users(100, seed=1))
        _inject(db, 1, "fsync", errno.EIO)  # shard 1 writes the record, then fails: the call fails
        with pytest.raises(LogWriteError):
            db.add_users(generate_users(100, seed=2))
        db.save()  # the user acts; writable again
        os.kill(_pid(db, 1), signal.SIGKILL)
        with pytest.raises(ShardError, match="stays failed"):
            len(db)
        later = [u for u in generate_users(400, seed=3) if _routes_to(u, 0, 2)][:50]
        assert db.add_users(later) == 50
    with DataBase(shards=2, snapshot_path=path) as db:
        assert len(db) == 150
        assert db.has_user(later)


def test_a_segment_whose_creation_was_cut_short_is_ignored_and_removed(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add_users(generate_users(100, seed=1))
        chain = db._chain
    stub = path.parent / wal.segment_name(path.name, chain, 10_000, 0, 1)
    stub.write_bytes(b"")  # killed between creating the file and writing its header
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add_users(generate_users(40, seed=2))
    assert not stub.exists()
    with DataBase(shards=1, snapshot_path=path) as db:
        assert len(db) == 140


def test_one_path_spelled_two_ways_is_still_one_owner(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "db.json"
    other_spelling = tmp_path / "sub" / ".." / "db.json"
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add(User("a", 1))
        for spelling in (other_spelling, tmp_path / "link" / "db.json"):
            with pytest.raises(SnapshotError, match="already open"):
                DataBase(shards=1, snapshot_path=spelling)
            with DataBase(shards=1) as other:
                with pytest.raises(SnapshotError, match="already open"):
                    other.save(spelling)
        with pytest.raises(SnapshotError):
            db.backup(path)
        db.add(User("b", 2))  # still logging, still the owner
    with DataBase(shards=1, snapshot_path=other_spelling) as db:
        assert len(db) == 2


def test_repair_refuses_while_the_path_is_open(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add(User("a", 1))
        result = subprocess.run([sys.executable, "-m", "pydbms_shard", "repair", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 4 and "already open" in result.stderr


def test_cli_readers_change_no_file_and_see_the_log(tmp_path):
    path = tmp_path / "db.json"
    users = generate_users(50, seed=1)
    with DataBase(shards=3, snapshot_path=path) as db:
        db.add_users(users)  # only in the log
    segment = max(_segments(path), key=lambda p: p.stat().st_size)
    with open(segment, "ab") as f:
        f.write(b"\x99torn")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith(".owner")}
    result = subprocess.run(
        [sys.executable, "-m", "pydbms_shard", "find", str(path), users[7].name], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert users[7].to_json().decode() in result.stdout
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.endswith(".owner")}
    assert after == before


def test_log_off_over_an_existing_log_still_replays_it_and_writes_none(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path) as db:
        db.add_users(generate_users(80, seed=1))
    before = set(_segments(path))
    with DataBase(shards=2, snapshot_path=path, log=False) as db:
        assert len(db) == 80
        db.add_users(generate_users(5, seed=2))
        assert db.stats()["log"]["enabled"] is False
    assert set(_segments(path)) == before


def test_a_failed_checkpoint_loses_nothing(tmp_path, monkeypatch):
    import pydbms_shard.snapshot as snapshot_mod

    path = tmp_path / "db.json"
    real = snapshot_mod.write_shard_file
    failing = tmp_path / "fail"

    def write_shard_file(file_path, records, shard, shards, level, mode, progress=None):
        if failing.exists() and shard == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file_path, records, shard, shards, level, mode, progress)

    monkeypatch.setattr(snapshot_mod, "write_shard_file", write_shard_file)
    with DataBase(shards=2, snapshot_path=path, start_method="fork") as db:
        db.add_users(generate_users(100, seed=1))
        failing.touch()
        with pytest.raises(SnapshotError, match="disk is full"):
            db.save()  # every shard has moved on to a new segment; the snapshot did not commit
        db.add_users(generate_users(100, seed=2))
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


def test_a_database_that_cannot_open_says_so_in_one_line(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add(User("a", 1))
    path.write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "pydbms_shard", "get", str(path), str(uuid.uuid4())], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1 and "damaged manifest" in result.stderr


# ---------------------------------------------------------------- failures between logging and replying


def test_a_call_that_raised_after_its_worker_logged_it_is_not_replayed(tmp_path):
    """The worker logs the call, then runs out of memory half-way through applying it and
    exits: the call raises, and closing at once (before any rebuild) must not leave it in
    the log for the next open to replay."""
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add_users(generate_users(5, seed=1))
        expected = _state(db)
        _inject(db, 0, "apply", 0)
        with pytest.raises(ShardError, match="MemoryError"):
            db.add_users(generate_users(1000, seed=2))
    with DataBase(shards=1, snapshot_path=path) as db:
        assert _state(db) == expected


def test_memory_error_half_way_is_rolled_back_and_the_shard_rebuilt(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=path) as db:
        db.add_users(generate_users(100, seed=1))
        expected = _state(db)
        _inject(db, 1, "apply", 0)
        with pytest.raises(ShardError, match="MemoryError"):
            db.upsert_users(generate_users(300, seed=2))
        assert _state(db) == expected  # shard 0 undid its part; shard 1 was rebuilt without it
        assert db.stats()["shards"][1]["restarts"] == 1
        db.add_users(generate_users(10, seed=3))
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=path) as db:
        assert _state(db) == expected


def test_load_whose_commit_fails_after_the_rename_keeps_the_loaded_state(tmp_path, monkeypatch):
    import pydbms_shard.snapshot as snapshot_mod

    own, other = tmp_path / "db.json", tmp_path / "other.json"
    with DataBase(shards=2) as db:
        db.add_users(generate_users(30, seed=1))
        db.save(other)
    real = snapshot_mod.fsync_dir
    calls = {"n": 0, "fail_at": None}

    def flaky_fsync_dir(directory):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise OSError(errno.EIO, "Input/output error")
        return real(directory)

    monkeypatch.setattr(snapshot_mod, "fsync_dir", flaky_fsync_dir)
    with DataBase(shards=2, snapshot_path=own) as db:
        db.add_users(generate_users(10, seed=2))
        calls["fail_at"] = calls["n"] + 2  # the directory fsync right after the manifest's rename
        db.load(other)
        assert len(db) == 30
        db.add_users(generate_users(7, seed=3))
        expected = _state(db)
    with DataBase(shards=2, snapshot_path=own) as db:
        assert _state(db) == expected


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_an_opener_waits_for_the_workers_of_an_ended_program(tmp_path):
    """A worker of a killed program may still append a message it had received: while any
    worker holds the path, a new DataBase does not open it."""
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path):
        pass
    holder = textwrap.dedent(
        f"""
        import fcntl, os, sys
        fd = os.open({str(tmp_path / ".db.json.owner")!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_SH)
        print("held", flush=True)
        sys.stdin.readline()
        """
    )
    with subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "held"
            with pytest.raises(SnapshotError, match="worker process of a program that ended"):
                DataBase(shards=1, snapshot_path=path)
        finally:
            child.communicate("\n", timeout=10)
    with DataBase(shards=1, snapshot_path=path) as db:
        assert len(db) == 0


def test_a_bad_record_at_the_end_of_an_older_segment_is_damage(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=1, snapshot_path=path) as db:
        db.add_users(generate_users(100, seed=1))
        db.save()  # a checkpoint: the shard moves on to a new segment
        db.add_users(generate_users(100, seed=2))
    older = min(_segments(path), key=lambda p: wal.parse_segment_name(path.name, p.name).base)
    scan = wal.scan_segment(older)
    data = bytearray(older.read_bytes())
    data[scan.records[-1].end - 3] ^= 0xFF
    older.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(LogDamagedError):
        DataBase(shards=1, snapshot_path=path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.crash
def test_close_gives_up_on_a_stopped_worker_during_an_autosave(tmp_path, monkeypatch):
    import time

    import pydbms_shard.snapshot as snapshot_mod

    path = tmp_path / "db.json"
    flag = tmp_path / "writing"
    real = snapshot_mod.write_shard_file

    def slow(file_path, records, shard, shards, level, mode, progress=None):
        if records:
            flag.touch()
            time.sleep(1.0)
        return real(file_path, records, shard, shards, level, mode, progress)

    monkeypatch.setattr(snapshot_mod, "write_shard_file", slow)
    db = DataBase(shards=2, snapshot_path=path, start_method="fork", call_timeout=600)
    db.add_users(generate_users(100, seed=1))
    db.start_autosave(0.05)
    deadline = time.monotonic() + 10
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(_pid(db, 0), signal.SIGSTOP)
    db.close()  # within seconds, not the call_timeout
    assert db.closed
    with DataBase(shards=2, snapshot_path=path) as again:
        assert len(again) == 100
