"""save() and load() report their progress per block written or read, ending at the total."""

from __future__ import annotations

from pydbms_shard import DataBase, generate_users
from pydbms_shard.shard_file_v2 import BLOCK_ROWS as BLOCK_RECORDS


def _recorder() -> tuple[list[tuple[int, int]], object]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def test_save_and_load_report_each_block(tmp_path):
    users = generate_users(2 * BLOCK_RECORDS + 10, seed=1)
    path = tmp_path / "db.snap"
    with DataBase(shards=1, log=False) as db:
        db.add_users(users)
        calls, step = _recorder()
        db.save(path, progress=step)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)
        assert {total for _, total in calls} == {len(users)}
        assert calls[-1] == (len(users), len(users))
        assert len(calls) >= 3  # a report per block, not one jump from 0 to 100%
    with DataBase(shards=1, log=False) as db:
        calls, step = _recorder()
        db.load(path, progress=step)
        assert len(db) == len(users)
        assert calls[-1] == (len(users), len(users)) and len(calls) >= 3
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_loading_into_another_shard_count_reports_every_worker_reading_every_file(tmp_path):
    users = generate_users(BLOCK_RECORDS + 10, seed=2)
    path = tmp_path / "db.snap"
    with DataBase(shards=1, log=False) as db:
        db.add_users(users)
        db.save(path)
    with DataBase(shards=2, log=False) as db:
        calls, step = _recorder()
        db.load(path, progress=step)
        assert len(db) == len(users)
        assert calls[-1] == (2 * len(users), 2 * len(users))


def test_without_progress_nothing_is_reported_and_later_saves_are_not_confused(tmp_path):
    users = generate_users(1000, seed=3)
    with DataBase(shards=2, snapshot_path=str(tmp_path / "db.snap")) as db:
        db.add_users(users)
        db.save()
        calls, step = _recorder()
        db.load(tmp_path / "db.snap", progress=step)
        db.add_users(generate_users(10, seed=4))
        db.save()
        db.save(tmp_path / "other.snap", progress=step)
        assert calls[-1] == (len(users) + 10, len(users) + 10)
    with DataBase(shards=2, snapshot_path=str(tmp_path / "db.snap")) as db:
        assert len(db) == len(users) + 10
