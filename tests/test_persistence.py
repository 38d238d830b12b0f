"""Saving and loading real DataBases: round trips, resharding, failures, backup, consistent cuts.

Faults are injected at the operating-system boundary or in the shard-file writer, never by
mocking the coordinator: a DataBase started with ``start_method="fork"`` *after* a monkeypatch
has its workers inherit the fault, so a full disk or a refused permission happens where it
really would, inside the worker writing its file.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import random
import shutil
import signal
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest

import pydbms_shard.snapshot as snapshot_mod
from pydbms_shard import ClosedError, ConfigError, DataBase, SnapshotError, User, generate_users
from pydbms_shard.routing import shard_of

NAMES = [
    "Zoë",
    "李小龙",
    "Ωmega",
    "🎉 party 🎉",
    "👩‍👩‍👧‍👦",
    "Ñandú",
    "ǅemal",
    "a\tb",
    'quote"d',
    "back\\slash",
    "मनीष",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "x" * 1000,
]


def sample_users(n: int, seed: int = 0) -> list[User]:
    """Users with unicode and emoji names and every kind of extras."""
    out = []
    for i in range(n):
        name = f"{NAMES[i % len(NAMES)]}"[:990] + f"#{seed}-{i}"
        extras = None
        if i % 4 == 1:
            extras = {"city": "Zürich 🏔", "n": i, "f": i / 7, "neg": -(2**63), "big": 2**63 - 1, "ok": i % 2 == 0, "nil": None}
        elif i % 4 == 2:
            extras = {"tags": ["a", "ß", "🙂", 1, 2.5, None, True], "nested": {"deep": {"er": [{"x": [1, [2, [3]]]}]}}, "": ""}
        elif i % 4 == 3:
            extras = {"ключ": "значение", "tiny": 5e-324, "huge": 1.7976931348623157e308, "negzero": -0.0}
        out.append(User(name, i % 151, uuid.UUID(int=(seed << 64) + i * 7919 + 1), extras))
    return out


def dump(db: DataBase) -> dict[uuid.UUID, dict]:
    """Everything in a DataBase, exactly (not just IDs)."""
    return {u.ID: u.to_dict() for u in db}


def exact(users) -> dict[uuid.UUID, dict]:
    return {u.ID: u.to_dict() for u in users}


def snapshot_names(directory: Path) -> list[str]:
    """Every name in the directory but the hidden per-path writer lock files."""
    return [n for n in os.listdir(directory) if not (n.startswith(".") and n.endswith(".lock"))]


def listing(directory: Path) -> set[str]:
    return set(snapshot_names(directory))


def shard_files(manifest_path: Path) -> list[Path]:
    data = json.loads(manifest_path.read_bytes())
    return [manifest_path.parent / f["name"] for f in sorted(data["files"], key=lambda f: f["shard"])]


def loads_completely(path: Path, shards: int = 2) -> dict[uuid.UUID, dict]:
    with DataBase(shards=shards) as fresh:
        manifest = fresh.load(path)
        assert len(fresh) == manifest.users
        return dump(fresh)


# ---------------------------------------------------------------- round trips


def test_round_trip_empty_database(tmp_path):
    path = tmp_path / "empty.json"
    with DataBase(shards=2) as db:
        manifest = db.save(path)
        assert manifest.users == 0
    with DataBase(shards=2) as other:
        other.add_users(sample_users(10))
        assert other.load(path).users == 0
        assert len(other) == 0
        assert list(other) == []
        assert other.stats()["users"] == 0


def test_round_trip_one_user_with_extras(tmp_path):
    path = tmp_path / "one.json"
    alice = User("Alice 🐇", 25, extras={"email": "alice@example.org", "scores": [1, 2.5, None], "profile": {"lang": "fr", "vip": True}})
    with DataBase(shards=2) as db:
        db.add(alice)
        assert db.save(path).users == 1
    with DataBase(shards=2) as db:
        db.load(path)
        assert len(db) == 1
        got = db.get(alice.ID)
        assert got is not None
        assert got.to_dict() == alice.to_dict()
        assert db.find_by_name("Alice 🐇") == [alice]
        assert got.extras["profile"]["lang"] == "fr"


@pytest.mark.parametrize("shards", [1, 3])
def test_round_trip_unicode_names_and_extras(tmp_path, shards):
    users = sample_users(600, seed=shards)
    path = tmp_path / "uni.json"
    with DataBase(shards=shards) as db:
        db.add_users(users)
        manifest = db.save(path)
        assert manifest.users == 600
        assert manifest.shards == shards
    with DataBase(shards=shards) as db:
        db.load(path)
        assert dump(db) == exact(users)
        for name in (f"Zoë#{shards}-0", f"👩‍👩‍👧‍👦#{shards}-4"):
            assert [u.name for u in db.find_by_name(name)] == [name]
        # -0.0 and subnormals survive bit for bit
        got = db.get(users[3].ID)
        assert str(got.extras["negzero"]) == "-0.0" and got.extras["tiny"] == 5e-324


def test_round_trip_100k_users(tmp_path):
    users = generate_users(100_000, seed=11)
    path = tmp_path / "big.json"
    with DataBase(shards=2) as db:
        db.add_users(users)
        manifest = db.save(path)
        assert manifest.users == 100_000
    on_disk = json.loads(path.read_bytes())
    assert on_disk["users"] == 100_000 and sum(f["users"] for f in on_disk["files"]) == 100_000
    with DataBase(shards=2) as db:
        db.load(path)
        assert len(db) == 100_000
        got = db.get_many([u.ID for u in users])
        assert all(g is not None for g in got)
        assert [(g.name, g.age) for g in got] == [(u.name, u.age) for u in users]


def test_paths_with_spaces_unicode_and_regex_characters(tmp_path):
    directory = tmp_path / "my snaps ü 🎉"
    directory.mkdir()
    path = directory / "db (1)+[x].json"
    users = sample_users(50)
    with DataBase(shards=2, keep_generations=1) as db:
        db.add_users(users)
        for _ in range(3):
            db.save(str(path))
        assert len(_generations(directory, path.name)) == 1  # rotation copes with the odd name
        db.backup(directory / "b*ck?up.json", source=path)
    assert loads_completely(path) == exact(users)
    assert loads_completely(directory / "b*ck?up.json") == exact(users)


def test_save_returns_manifest_and_generation_grows(tmp_path):
    path = tmp_path / "gen.json"
    with DataBase(shards=2) as db:
        db.add_users(sample_users(20))
        first = db.save(path)
        db.add(User("Bob", 30))
        second = db.save(path)
        assert second.generation > first.generation
        assert (first.users, second.users) == (20, 21)
        assert json.loads(path.read_bytes())["generation"] == second.generation
        assert db.stats()["changes_since_save"] == 0


def test_save_and_load_use_configured_snapshot_path(tmp_path):
    path = tmp_path / "configured.json"
    users = sample_users(30)
    with DataBase(shards=2, snapshot_path=str(path)) as db:
        db.add_users(users)
        db.save()
        assert path.exists()
        db.clear_database()
        db.load()
        assert dump(db) == exact(users)


def test_last_save_hold_seconds_is_reported(tmp_path):
    with DataBase(shards=2) as db:
        assert db.last_save_hold_seconds is None
        db.add_users(sample_users(100))
        db.save(tmp_path / "h.json")
        hold = db.last_save_hold_seconds
        assert hold is not None and isinstance(hold, float) and hold >= 0
        assert db.stats()["last_save_hold_seconds"] == hold


# ---------------------------------------------------------------- resharding


@pytest.fixture(scope="module")
def four_shard_snapshot(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reshard")
    users = sample_users(1500, seed=4)
    path = directory / "four.json"
    with DataBase(shards=4) as db:
        db.add_users(users)
        db.save(path)
    return path, users


@pytest.mark.parametrize("shards", [1, 2, 3, 8])
def test_load_into_another_shard_count(four_shard_snapshot, shards):
    path, users = four_shard_snapshot
    with DataBase(shards=shards) as db:
        db.add_users(sample_users(5, seed=99))  # replaced by the load
        manifest = db.load(path)
        assert manifest.shards == 4
        assert len(db) == len(users)
        expected = collections.Counter(shard_of(u.ID.bytes, shards) for u in users)
        stats = db.stats()
        assert [s["users"] for s in stats["shards"]] == [expected[s] for s in range(shards)]
        for user in users:  # each get() goes to the one shard routing names
            got = db.get(user.ID)
            assert got is not None, f"{user.ID} is not where routing looks for it"
            assert got.to_dict() == user.to_dict()
        assert db.contains_many([u.ID for u in users]) == [True] * len(users)
        assert dump(db) == exact(users)
        # and it keeps working: duplicates are still detected on the right shard
        assert db.add_users(users[:50]) == 0
        assert db.remove_users([u.ID for u in users[:50]]) == 50


def test_resharded_database_saves_and_reloads(four_shard_snapshot, tmp_path):
    path, users = four_shard_snapshot
    with DataBase(shards=3) as db:
        db.load(path)
        db.save(tmp_path / "three.json")
    with DataBase(shards=2) as db:
        db.load(tmp_path / "three.json")
        assert dump(db) == exact(users)


def test_manifest_with_swapped_shard_entries_is_refused(tmp_path):
    path = tmp_path / "swap.json"
    users = sample_users(200)
    with DataBase(shards=2) as db:
        db.add_users(users)
        db.save(path)
    data = json.loads(path.read_bytes())
    a, b = data["files"]
    a["shard"], b["shard"] = b["shard"], a["shard"]
    path.write_text(json.dumps(data))
    with DataBase(shards=2) as db:
        try:
            db.load(path)
        except SnapshotError:
            return
        # loaded: then every user must at least be reachable
        assert sum(g is not None for g in db.get_many([u.ID for u in users])) == len(users)


# ---------------------------------------------------------------- failed loads change nothing


def _damage_flip(path: Path) -> Path:
    victim = shard_files(path)[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    return victim


def _damage_truncate(path: Path) -> Path:
    victim = shard_files(path)[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    return victim


def _damage_missing(path: Path) -> Path:
    victim = shard_files(path)[1]
    victim.unlink()
    return victim


def _damage_future_version(path: Path) -> Path:
    data = json.loads(path.read_bytes())
    data["version"] = 99
    path.write_text(json.dumps(data))
    return path


def _damage_outside(path: Path) -> Path:
    data = json.loads(path.read_bytes())
    data["files"][0]["name"] = "../" + data["files"][0]["name"]
    path.write_text(json.dumps(data))
    return path


def _damage_not_json(path: Path) -> Path:
    path.write_bytes(b'{"format": "pydbms-shard", "vers')
    return path


def _damage_crc_in_manifest(path: Path) -> Path:
    data = json.loads(path.read_bytes())
    data["files"][1]["crc32"] = "%08x" % (int(data["files"][1]["crc32"], 16) ^ 1)
    path.write_text(json.dumps(data))
    return shard_files(path)[1]


DAMAGE = {
    "flipped-byte": _damage_flip,
    "truncated": _damage_truncate,
    "missing-file": _damage_missing,
    "future-version": _damage_future_version,
    "outside-dir": _damage_outside,
    "manifest-not-json": _damage_not_json,
    "crc-mismatch": _damage_crc_in_manifest,
}


@pytest.fixture(scope="module")
def pristine_snapshot(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pristine")
    with DataBase(shards=2) as writer:
        writer.add_users(sample_users(300, seed=1))
        writer.save(directory / "snap.json")
    return directory


@pytest.fixture(scope="module")
def load_targets():
    """One DataBase per shard count, shared by the failed-load tests (each resets it)."""
    with DataBase(shards=2) as two, DataBase(shards=3) as three:
        yield {2: two, 3: three}


@pytest.mark.parametrize("target_shards", [2, 3], ids=["same-shards", "reshard"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_failed_load_leaves_database_exactly_as_before(tmp_path, pristine_snapshot, load_targets, damage, target_shards):
    directory = tmp_path / "snap"
    shutil.copytree(pristine_snapshot, directory)
    path = directory / "snap.json"
    named = DAMAGE[damage](path)
    before_users = sample_users(120, seed=2)
    db = load_targets[target_shards]
    db.clear_database()
    db.add_users(before_users)
    db.get(before_users[0].ID)  # warm the read cache too
    with pytest.raises(SnapshotError) as exc:
        db.load(path)
    assert str(named) in str(exc.value) or named.name in str(exc.value), str(exc.value)
    assert len(db) == 120
    assert dump(db) == exact(before_users)
    assert db.get(before_users[0].ID) == before_users[0]
    assert [s["users"] for s in db.stats()["shards"]] == [
        sum(shard_of(u.ID.bytes, target_shards) == s for u in before_users) for s in range(target_shards)
    ]
    # still fully usable afterwards
    assert db.add(User("after", 1))
    assert db.save(tmp_path / "after.json").users == 121
    assert snapshot_mod.verify_snapshot(tmp_path / "after.json").users == 121


def test_load_of_missing_path(tmp_path):
    with DataBase(shards=2) as db:
        db.add_users(sample_users(5))
        with pytest.raises(SnapshotError) as exc:
            db.load(tmp_path / "nope.json")
        assert "nope.json" in str(exc.value)
        assert len(db) == 5


# ---------------------------------------------------------------- file modes


def _modes(directory: Path) -> dict[str, int]:
    return {name: stat.S_IMODE((directory / name).stat().st_mode) for name in snapshot_names(directory)}


def test_files_are_private_by_default(tmp_path):
    with DataBase(shards=2) as db:
        db.add_users(sample_users(10))
        db.save(tmp_path / "p.json")
    modes = _modes(tmp_path)
    assert len(modes) == 4  # manifest, its numbered copy, two shard files
    assert set(modes.values()) == {0o600}, modes


def test_file_mode_is_configurable(tmp_path):
    old = os.umask(0o077)  # a strict umask must not narrow what was configured
    try:
        with DataBase(shards=2, file_mode="0640") as db:
            db.add_users(sample_users(10))
            db.save(tmp_path / "p.json")
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    assert len(modes) == 4 and set(modes.values()) == {0o640}, modes


def test_file_mode_from_yaml_config(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text('shards: 2\nfile_mode: "0604"\nkeep_generations: 1\n')
    snap = tmp_path / "snap"
    snap.mkdir()
    with DataBase(config=str(config)) as db:
        db.add_users(sample_users(10))
        db.save(snap / "p.json")
        db.save(snap / "p.json")
    modes = _modes(snap)
    assert len(modes) == 4 and set(modes.values()) == {0o604}, modes


# ---------------------------------------------------------------- generations and leftovers


def _generations(directory: Path, name: str) -> set[str]:
    return {f.split(".")[2] for f in os.listdir(directory) if f.startswith(name + ".g")}


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_generations(tmp_path, keep):
    path = tmp_path / "k.json"
    with DataBase(shards=2, keep_generations=keep) as db:
        counts = []
        for i in range(5):
            db.add(User(f"u{i}", 20))
            counts.append(db.save(path).users)
        live = json.loads(path.read_bytes())
        assert len(_generations(tmp_path, "k.json")) == keep
        for f in shard_files(path):
            assert f.exists()
        # exactly: the manifest, and per kept generation its shard files and numbered manifest
        assert len(snapshot_names(tmp_path)) == 1 + keep * (2 + 1)
        assert live["generation"] == max(int(g[1:9]) for g in _generations(tmp_path, "k.json"))
        # a kept older generation is itself a complete, loadable snapshot
        older = sorted(tmp_path.glob("k.json.g*.manifest"))
        assert len(older) == keep
        with DataBase(shards=1) as other:
            assert [other.load(m).users for m in older] == counts[-keep:]


def test_leftovers_of_a_crashed_save_are_cleaned_by_the_next_save(tmp_path):
    path = tmp_path / "c.json"
    with DataBase(shards=2) as db:
        db.add_users(sample_users(50))
        db.save(path)
        # what a save killed before its manifest was committed leaves behind
        fakes = [
            "c.json.g00000042-deadbeef.s000.pdbs",
            "c.json.g00000042-deadbeef.s001.pdbs",
            "c.json.g00000001-0badf00d.s000.pdbs",
        ]
        for name in fakes:
            (tmp_path / name).write_bytes(b"PDBSHARD half written")
        unrelated = ["other.json", "other.json.g00000001-aaaaaaaa.s000.pdbs", "c.json.bak", "notes.txt"]
        for name in unrelated:
            (tmp_path / name).write_bytes(b"not ours")
        manifest = db.save(path)
        assert manifest.generation > 42  # never reuses a leftover's generation
        names = listing(tmp_path)
        for name in fakes:
            assert name not in names, f"{name} left behind"
        for name in unrelated:
            assert (tmp_path / name).read_bytes() == b"not ours"
        assert len(loads_completely(path)) == 50


def test_leftover_manifest_temp_file_is_cleaned_by_the_next_save(tmp_path):
    path = tmp_path / "c.json"
    with DataBase(shards=2) as db:
        db.add_users(sample_users(5))
        db.save(path)
        leftover = tmp_path / ".c.json.0123abcd.tmp"  # named as commit_manifest names its temp file
        leftover.write_bytes(b'{"format": "pydbms-shard"')
        db.save(path)
        db.save(path)
    assert not leftover.exists()


# ---------------------------------------------------------------- backup


def test_backup_is_independent_of_the_original(tmp_path):
    original = tmp_path / "live" / "db.json"
    original.parent.mkdir()
    backup = tmp_path / "backups" / "db-backup.json"
    backup.parent.mkdir()
    first = sample_users(400, seed=5)
    with DataBase(shards=2, keep_generations=1) as db:
        db.add_users(first)
        db.save(original)
        copy = db.backup(backup, source=original)
        assert copy.users == 400
        # cheap: on one filesystem the backup's files are hard links to the snapshot's
        for a, b in zip(shard_files(original), shard_files(backup)):
            assert os.stat(a).st_ino == os.stat(b).st_ino
        assert set(_modes(backup.parent).values()) == {0o600}
        for i in range(3):  # the original rotates: its first generation is removed
            db.add(User(f"later{i}", 40))
            db.save(original)
        assert len(loads_completely(original)) == 403
    assert len(_generations(original.parent, "db.json")) == 1
    assert loads_completely(backup) == exact(first)
    for name in os.listdir(original.parent):
        os.unlink(original.parent / name)
    assert loads_completely(backup, shards=3) == exact(first)
    snapshot_mod.verify_snapshot(backup)


def test_backup_via_configured_snapshot_path(tmp_path):
    path = tmp_path / "db.json"
    with DataBase(shards=2, snapshot_path=str(path)) as db:
        db.add_users(sample_users(25))
        db.save()
        db.backup(tmp_path / "b.json")
    path.unlink()
    for f in tmp_path.glob("db.json.g*"):
        f.unlink()
    assert len(loads_completely(tmp_path / "b.json")) == 25


def test_backup_copies_when_hard_links_cross_filesystems(tmp_path, monkeypatch):
    original = tmp_path / "db.json"
    backup = tmp_path / "copy.json"
    users = sample_users(300, seed=8)
    calls = []

    def no_link(src, dst, *args, **kwargs):
        calls.append((src, dst))
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(dst))

    with DataBase(shards=2) as db:
        db.add_users(users)
        db.save(original)
        monkeypatch.setattr(os, "link", no_link)
        db.backup(backup, source=original)
        monkeypatch.undo()
    assert calls, "backup never tried a hard link"
    for a, b in zip(shard_files(original), shard_files(backup)):
        sa, sb = os.stat(a), os.stat(b)
        assert sa.st_ino != sb.st_ino and sb.st_nlink == 1  # a real copy
        assert a.read_bytes() == b.read_bytes()
        assert stat.S_IMODE(sb.st_mode) == 0o600
    for f in list(tmp_path.glob("db.json*")):
        f.unlink()
    assert loads_completely(backup) == exact(users)


def test_backup_of_missing_or_damaged_source_fails_cleanly(tmp_path):
    with DataBase(shards=2) as db:
        with pytest.raises(SnapshotError):
            db.backup(tmp_path / "b.json", source=tmp_path / "nothing.json")
        db.add_users(sample_users(10))
        db.save(tmp_path / "a.json")
        with pytest.raises(SnapshotError):
            db.backup(tmp_path / "a.json", source=tmp_path / "a.json")  # must not replace itself
        _damage_missing(tmp_path / "a.json")
        before = listing(tmp_path)
        with pytest.raises(SnapshotError):
            db.backup(tmp_path / "b.json", source=tmp_path / "a.json")
        assert listing(tmp_path) == before


# ---------------------------------------------------------------- consistent cut


def test_snapshot_is_a_consistent_cut_under_concurrent_writes(tmp_path):
    batch = 50
    stop = threading.Event()
    batches: list[list[uuid.UUID]] = []
    batches_lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for j in range(400):
                if stop.is_set():
                    return
                users = [User(f"w{k}-{j}-{i}", 30) for i in range(batch)]
                with batches_lock:
                    batches.append([u.ID for u in users])
                db.add_users(users)
                time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    path = tmp_path / "cut.json"
    with DataBase(shards=2) as db, DataBase(shards=3) as check:
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        try:
            seen = []
            for _ in range(10):
                time.sleep(0.02)
                manifest = db.save(path)
                check.load(path)
                n = len(check)
                assert n == manifest.users
                assert n % batch == 0, f"a batch was cut in two: {n} users"
                with batches_lock:
                    known = list(batches)
                flat = [i for b in known for i in b]
                present = check.contains_many(flat) if flat else []
                pos = 0
                for b in known:
                    inside = sum(present[pos : pos + len(b)])
                    pos += len(b)
                    assert inside in (0, batch), f"batch partly saved: {inside} of {batch}"
                assert sum(present) == n  # nothing in the snapshot that no batch added
                seen.append(n)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors
        assert seen == sorted(seen) and seen[-1] > 0


# ---------------------------------------------------------------- failing saves


def _arm(tmp_path: Path) -> Path:
    marker = tmp_path / "fault-armed"
    marker.touch()
    return marker


def _faulty_writer(marker: Path, make_error, failing_shard: int = 1):
    """A write_shard_file that, while ``marker`` exists, leaves half a file and fails on one shard."""
    real = snapshot_mod.write_shard_file

    def write_shard_file(path, records, shard, shards, level, mode, progress=None):
        if marker.exists() and shard == failing_shard:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            os.write(fd, b"PDBSHARD" + b"\0" * 100)  # half written, then the disk says no
            os.close(fd)
            raise make_error(path)
        return real(path, records, shard, shards, level, mode)

    return write_shard_file


def _snapshot_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "snap"
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    "fault, words",
    [
        (lambda p: OSError(errno.ENOSPC, "No space left on device", str(p)), "disk is full"),
        (lambda p: PermissionError(errno.EACCES, "Permission denied", str(p)), "Permission denied"),
    ],
    ids=["disk-full", "permission-denied"],
)
def test_failed_save_in_a_worker_keeps_previous_snapshot(tmp_path, monkeypatch, fault, words):
    directory = _snapshot_dir(tmp_path)
    path = directory / "db.json"
    marker = tmp_path / "fault-armed"
    monkeypatch.setattr(snapshot_mod, "write_shard_file", _faulty_writer(marker, fault))
    first = sample_users(200, seed=3)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(first)
        db.save(path)
        good = listing(directory)
        manifest_before = path.read_bytes()
        db.add_users(sample_users(10, seed=4))
        _arm(tmp_path)
        with pytest.raises(SnapshotError) as exc:
            db.save(path)
        message = str(exc.value)
        assert words in message, message
        assert str(directory) in message, message  # says where
        assert listing(directory) == good, "partial files of the failed save remain"
        assert path.read_bytes() == manifest_before
        assert loads_completely(path) == exact(first)
        assert db.stats()["changes_since_save"] > 0  # the changes are still unsaved
        # the disk has room again: the next save succeeds and holds everything
        marker.unlink()
        assert db.save(path).users == 210
    assert len(loads_completely(path)) == 210


def test_disk_full_while_writing_the_manifest(tmp_path, monkeypatch):
    """The coordinator's own writes (the manifest) fail: shard files are removed too."""
    directory = _snapshot_dir(tmp_path)
    path = directory / "db.json"
    real_write = os.write
    armed = []

    def write(fd, data):
        if armed:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.startswith(str(directory)):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    first = sample_users(100, seed=6)
    with DataBase(shards=2) as db:  # forkserver: the workers do not inherit the fault
        db.add_users(first)
        db.save(path)
        good = listing(directory)
        db.add(User("new", 3))
        monkeypatch.setattr(os, "write", write)
        armed.append(True)
        try:
            with pytest.raises(SnapshotError) as exc:
                db.save(path)
        finally:
            monkeypatch.undo()
        assert "disk is full" in str(exc.value)
        assert str(path) in str(exc.value)
        assert listing(directory) == good
        assert loads_completely(path) == exact(first)


def test_failure_after_the_manifest_rename_never_breaks_the_snapshot(tmp_path, monkeypatch):
    directory = _snapshot_dir(tmp_path)
    path = directory / "db.json"
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    with DataBase(shards=2) as db:
        db.add_users(sample_users(100, seed=6))
        db.save(path)
        db.add(User("new", 3))
        monkeypatch.setattr(os, "fsync", fsync)
        try:
            with pytest.raises(SnapshotError):
                db.save(path)
        finally:
            monkeypatch.undo()
    # old or new, but complete
    assert len(loads_completely(path)) in (100, 101)


def _self_killing_writer(victim_shard: int, slow_shard: int | None = None, delay: float = 0.0):
    real = snapshot_mod.write_shard_file

    def write_shard_file(path, records, shard, shards, level, mode, progress=None):
        if shard == victim_shard and Path(path).name.startswith("db.json.g") and ".g00000001-" not in Path(path).name:
            os.kill(os.getpid(), signal.SIGKILL)
        if shard == slow_shard:
            time.sleep(delay)
        return real(path, records, shard, shards, level, mode)

    return write_shard_file


def test_worker_killed_during_a_save(tmp_path, monkeypatch):
    directory = _snapshot_dir(tmp_path)
    path = directory / "db.json"
    monkeypatch.setattr(snapshot_mod, "write_shard_file", _self_killing_writer(victim_shard=1))
    first = sample_users(150, seed=9)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(first)
        db.save(path)  # generation 1 is spared
        good = listing(directory)
        db.add(User("new", 3))
        with pytest.raises(SnapshotError) as exc:
            db.save(path)  # a hang here is caught by the suite's timeout
        assert "shard 1" in str(exc.value)
        assert str(path) in str(exc.value)
    assert listing(directory) == good
    assert loads_completely(path) == exact(first)


def test_worker_killed_while_another_shard_is_still_writing(tmp_path, monkeypatch):
    directory = _snapshot_dir(tmp_path)
    path = directory / "db.json"
    monkeypatch.setattr(snapshot_mod, "write_shard_file", _self_killing_writer(victim_shard=1, slow_shard=0, delay=0.4))
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(sample_users(50))
        db.save(path)
        good = listing(directory)
        db.add(User("new", 3))
        with pytest.raises(SnapshotError):
            db.save(path)
        time.sleep(0.8)  # shard 0's writer finishes its (now orphaned) file meanwhile
    assert listing(directory) == good


def test_save_to_missing_directory(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "db.json"
    with DataBase(shards=2) as db:
        db.add_users(sample_users(5))
        with pytest.raises(SnapshotError) as exc:
            db.save(target)
        assert str(target.parent) in str(exc.value)
    assert not (tmp_path / "no").exists()


def test_save_onto_a_directory_fails_and_leaves_nothing(tmp_path):
    (tmp_path / "db.json").mkdir()
    with DataBase(shards=2) as db:
        db.add_users(sample_users(5))
        with pytest.raises(SnapshotError) as exc:
            db.save(tmp_path / "db.json")
        assert "db.json" in str(exc.value)
    assert listing(tmp_path) == {"db.json"}


# ---------------------------------------------------------------- callers during a save


HANG = 30.0  # seconds: a wait that only detects a hang; no test asserts that a call is fast


def _held_writer(started_flag: Path, release_flag: Path):
    """A shard writer that signals it started, then holds until ``release_flag`` exists (a big
    shard: compressing and writing takes a while), so the test decides when writing ends."""
    real = snapshot_mod.write_shard_file

    def held_write(file_path, records, shard, shards, level, mode, progress=None):
        started_flag.touch()
        deadline = time.monotonic() + HANG
        while not release_flag.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(file_path, records, shard, shards, level, mode, progress)

    return held_write


def _start_slow_save(db: DataBase, path: Path, started_flag: Path) -> tuple[threading.Thread, dict]:
    result: dict = {}
    saver = threading.Thread(target=lambda: result.setdefault("manifest", db.save(path)))
    saver.start()
    deadline = time.monotonic() + HANG
    while not started_flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started_flag.exists()
    return saver, result


def _calls_finish_while_held(calls, release_flag: Path) -> None:
    """Run ``calls`` in a thread; they must finish while the writers are held (a hang would mean
    they waited for the save), then release the writers."""
    worker = threading.Thread(target=calls)
    try:
        worker.start()
        worker.join(HANG)
        assert not worker.is_alive(), "the calls waited for the whole save"
    finally:
        release_flag.touch()


def test_callers_go_through_while_files_are_written(tmp_path, monkeypatch):
    """Calls made while the shard files are being written complete before the save does,
    and are not part of the snapshot (the cut was taken before them)."""
    path = tmp_path / "slow.json"
    flag, release = tmp_path / "write-started", tmp_path / "write-release"
    monkeypatch.setattr(snapshot_mod, "write_shard_file", _held_writer(flag, release))
    first = sample_users(100, seed=12)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(first)
        saver, result = _start_slow_save(db, path, flag)
        later = sample_users(3, seed=13)
        added = []
        _calls_finish_while_held(lambda: added.extend(db.add(user) for user in later), release)
        assert added == [True, True, True]
        saver.join(timeout=HANG)
        assert not saver.is_alive()
        assert result["manifest"].users == 100
        assert db.stats()["changes_since_save"] == 3
        assert db.last_save_hold_seconds is not None
    assert loads_completely(path) == exact(first)


def test_many_calls_go_through_while_files_are_written(tmp_path, monkeypatch):
    """Not a speed test: 200 gets all complete while the writers are held."""
    path = tmp_path / "slow.json"
    flag, release = tmp_path / "write-started", tmp_path / "write-release"
    monkeypatch.setattr(snapshot_mod, "write_shard_file", _held_writer(flag, release))
    users = sample_users(200, seed=14)
    with DataBase(shards=2, start_method="fork") as db:
        db.add_users(users)
        saver, _ = _start_slow_save(db, path, flag)
        found = []
        _calls_finish_while_held(lambda: found.extend(db.get(u.ID) for u in users), release)
        saver.join(timeout=HANG)
        assert not saver.is_alive()
    assert found == users


# ---------------------------------------------------------------- settings


def test_compression_level_setting_is_used(tmp_path):
    rng = random.Random(5)  # names from a small vocabulary: where a higher level finds more to share
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(300)]
    users = [User(" ".join(rng.choice(words) for _ in range(6)), rng.randint(0, 150)) for _ in range(20_000)]
    sizes = {}
    for level in (1, 19):
        path = tmp_path / f"level{level}.json"
        with DataBase(shards=1, compression_level=level) as db:
            db.add_users(users)
            db.save(path)
        sizes[level] = sum(f.stat().st_size for f in shard_files(path))
        assert snapshot_mod.verify_snapshot(path).users == 20_000
    assert sizes[19] < sizes[1]


@pytest.mark.parametrize(
    "setting",
    [{"file_mode": "0999"}, {"file_mode": "rw-------"}, {"compression_level": 0}, {"compression_level": 23}, {"keep_generations": 0}],
)
def test_bad_persistence_settings_are_refused(setting):
    with pytest.raises(ConfigError) as exc:
        DataBase(shards=1, **setting)
    assert next(iter(setting)) in str(exc.value)


def test_save_over_a_damaged_manifest(tmp_path):
    path = tmp_path / "db.json"
    path.write_bytes(b"\x00garbage, not a manifest")
    with DataBase(shards=2) as db:
        db.add_users(sample_users(10))
        assert db.save(path).users == 10
    assert len(loads_completely(path)) == 10


def test_closed_database_cannot_save_or_load(tmp_path):
    db = DataBase(shards=1)
    db.add_users(sample_users(3))
    db.save(tmp_path / "a.json")
    db.close()
    with pytest.raises(ClosedError):
        db.save(tmp_path / "b.json")
    with pytest.raises(ClosedError):
        db.load(tmp_path / "a.json")
    assert not (tmp_path / "b.json").exists()
    assert not list(tmp_path.glob("b.json.*"))
