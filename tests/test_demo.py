"""scripts/demo's job, at a tiny size: every step runs and the files it promises are left."""

from __future__ import annotations

import json

import pytest

from pydbms_shard import DataBase
from pydbms_shard.demo import main


@pytest.mark.slow
def test_demo_runs_the_workload_and_leaves_its_files(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--users", "2000", "--iterations", "1", "--shards", "2", "--output", str(out), "--autosave-seconds", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for row in (
        "Add Users",
        "Search Users by Name",
        "Check Users by ID",
        "Remove Users by ID",
        "Remove Users by Name",
        "Save Database",
        "Backup Database",
        "Load Database",
    ):
        assert row in printed
    snap = out / "ours-2" / "users_db.json"
    with DataBase(shards=1, start_method="fork") as db:
        db.load(snap)
        assert len(db) == 2000
        db.load(out / "ours-2" / "backup-users_db.json")
        assert len(db) == 2000
    lines = (out / "readable.jsonl").read_text().splitlines()
    assert len(lines) == 2000 and set(json.loads(lines[0])) == {"name", "age", "ID", "extras"}
    assert (out / "readable.txt").read_text().startswith('User "')
    assert (out / "autosave.json").exists()
    # a second run replaces its own folder
    assert main(["--users", "100", "--iterations", "1", "--shards", "1", "--output", str(out), "--autosave-seconds", "0.5", "--quiet"]) == 0


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        main(["--users", "100", "--output", str(tmp_path), "--quiet"])
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_convert_refuses_to_overwrite_the_snapshot(tmp_path):
    from pydbms_shard import SnapshotError, generate_users

    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(generate_users(10, seed=1))
        db.save(tmp_path / "a.json")
        with pytest.raises(SnapshotError, match="must not overwrite"):
            db.convert_file(tmp_path / "a.json", tmp_path / "a.json")
        assert db.convert_file(tmp_path / "a.json", tmp_path / "r.jsonl") == 10
    with DataBase(shards=1, start_method="fork") as db:
        db.load(tmp_path / "a.json")
        assert len(db) == 10
