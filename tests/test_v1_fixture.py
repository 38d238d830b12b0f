"""Files written by format v1 (committed in tests/fixtures/v1, made by the v1 code) keep
loading exactly: a plain snapshot of three shards, and a logged database whose last calls
live only in its write-ahead log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pydbms_shard import DataBase, User

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def _expected(folder: Path) -> list[dict[str, object]]:
    return json.loads((folder / "expected.json").read_text(encoding="utf-8"))


def _dump(db: DataBase) -> list[dict[str, object]]:
    return sorted((u.to_dict() for u in db), key=lambda d: str(d["ID"]))


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    for f in target.iterdir():
        f.chmod(0o600)
    return target


@pytest.mark.parametrize("shards", [1, 3, 4])
def test_a_v1_snapshot_loads_exactly(tmp_path, shards):
    folder = _copy(FIXTURES, tmp_path)
    with DataBase(shards=shards, log=False) as db:
        db.load(folder / "db.snap")
        assert _dump(db) == _expected(FIXTURES)
        long_name = "x" * 1000
        assert sorted(u.age for u in db.find_by_name(long_name)) == sorted(u["age"] for u in _expected(FIXTURES) if u["name"] == long_name)
        assert db.get(User.from_dict(_expected(FIXTURES)[0]).ID) == User.from_dict(_expected(FIXTURES)[0])


@pytest.mark.parametrize("shards", [2, 3])
def test_a_v1_database_with_its_log_opens_with_every_logged_call(tmp_path, shards):
    folder = _copy(FIXTURES / "logged", tmp_path)
    with DataBase(shards=shards, snapshot_path=str(folder / "db.snap")) as db:
        assert _dump(db) == _expected(FIXTURES / "logged")
        db.add(User("after", 1))
    with DataBase(shards=2, snapshot_path=str(folder / "db.snap")) as db:
        assert len(db) == len(_expected(FIXTURES / "logged")) + 1
