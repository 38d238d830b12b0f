"""Recovery plans against a model: which logged calls are whole, what each shard replays,
which tails are cut, which segments a checkpoint makes obsolete, and repair. Segments are
written with the real SegmentWriter; no worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydbms_shard import recovery, snapshot
from pydbms_shard.errors import LogDamagedError
from pydbms_shard.workers import log as wal

CHAIN = "0badcafe"
NAME = "db.json"


def writer(tmp_path: Path, shard: int, shards: int, base: int = 1, chain: str = CHAIN) -> wal.SegmentWriter:
    return wal.SegmentWriter(
        tmp_path / wal.segment_name(NAME, chain, base, shard, shards), chain=chain, base=base, shard=shard, shards=shards, fsync="no"
    )


def log_calls(tmp_path: Path, shards: int, calls: list[list[int]], first: int = 1) -> list[wal.SegmentWriter]:
    """Log each call (the shards it touches) on every shard it touches."""
    writers = [writer(tmp_path, s, shards, first) for s in range(shards)]
    for seq, touched in enumerate(calls, start=first):
        for s in touched:
            writers[s].append(seq, seq * 7, touched, b"payload %d" % seq)
    return writers


calls_strategy = st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True).map(sorted), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(calls=calls_strategy, data=st.data())
def test_the_plan_replays_the_longest_run_of_whole_calls(tmp_path_factory, calls, data):
    """Cut each shard's log after a random number of its records (as a crash under
    ``everysec`` may): the plan's last call is the model's longest whole prefix."""
    tmp_path = tmp_path_factory.mktemp("plan")
    writers = log_calls(tmp_path, 3, calls)
    kept_per_shard = []
    for s, w in enumerate(writers):
        w.close()
        records = wal.scan_segment(w.path).records
        keep = data.draw(st.integers(0, len(records)), label=f"records kept on shard {s}")
        kept_per_shard.append({r.seq for r in records[:keep]})
        wal.truncate_segment(w.path, records[keep - 1].end if keep else wal.HEADER_SIZE)
    expected = 0
    for seq, touched in enumerate(calls, start=1):
        if not all(seq in kept_per_shard[s] for s in touched):
            break
        expected = seq
    result = recovery.plan(tmp_path / NAME, CHAIN, 0, 3)
    assert result.last == expected
    for s in range(3):
        replayed = [span for span in result.extents.get(s, [])]
        assert len(replayed) == sum(1 for seq, touched in enumerate(calls[:expected], start=1) if s in touched)


def test_a_call_number_whose_parts_differ_is_not_whole(tmp_path):
    a, b = writer(tmp_path, 0, 2), writer(tmp_path, 1, 2)
    a.append(1, 11, [0, 1], b"x")
    b.append(1, 11, [0, 1], b"x")
    a.append(2, 22, [0, 1], b"failed call, left over")
    b.append(2, 23, [1], b"a later call reusing the number")
    result = recovery.plan(tmp_path / NAME, CHAIN, 0, 2)
    assert result.last == 1 and result.dropped == 1


def test_records_beyond_a_segments_range_are_leftovers(tmp_path):
    old = writer(tmp_path, 0, 1, base=1)
    old.append(1, 1, [0], b"one")
    old.append(2, 2, [0], b"failed call, never cut off")
    new = writer(tmp_path, 0, 1, base=2)  # a checkpoint at call 1 moved the shard on
    new.append(2, 3, [0], b"two")
    result = recovery.plan(tmp_path / NAME, CHAIN, 0, 1)
    assert result.last == 2
    first_record = wal.scan_segment(old.path).records[0]
    assert [(result.paths[k], start) for k, start, _ in result.extents[0]] == [
        (str(old.path), first_record.start),
        (str(new.path), wal.HEADER_SIZE),
    ]
    assert (old.path, first_record.end, False) in result.truncate  # the leftover is cut


def test_another_layout_is_replayed_by_every_worker(tmp_path):
    log_calls(tmp_path, 2, [[0], [1], [0, 1]])
    result = recovery.plan(tmp_path / NAME, CHAIN, 0, 3)
    assert result.last == 3
    assert all(len(result.extents[w]) == 4 for w in range(3))  # every part of every call
    assert result.replay_message(0, 3)[1] == [True, True]  # their users are filtered by route


def test_a_segment_whose_creation_was_cut_short_is_ignored_and_scheduled_for_removal(tmp_path):
    log_calls(tmp_path, 1, [[0], [0]])
    stub = tmp_path / wal.segment_name(NAME, CHAIN, 3, 0, 1)
    stub.write_bytes(b"PDBS")  # half a header
    result = recovery.plan(tmp_path / NAME, CHAIN, 0, 1)
    assert result.last == 2
    assert (stub, 0, True) in result.truncate
    assert result.append[0][0] != stub.name  # appends go on in the last created segment
    recovery.drop_tails(result)
    assert not stub.exists()


def test_a_torn_tail_is_only_allowed_in_a_shards_newest_segment(tmp_path):
    old = writer(tmp_path, 0, 1, base=1)
    old.append(1, 1, [0], b"one")
    old.close()
    with open(old.path, "ab") as f:
        f.write(b"\x30\x00\x00\x00torn")
    newest = writer(tmp_path, 0, 1, base=2)
    newest.append(2, 2, [0], b"two")
    with pytest.raises(LogDamagedError):
        recovery.plan(tmp_path / NAME, CHAIN, 0, 1)
    newest.close()
    with open(newest.path, "ab") as f:
        f.write(b"\x30\x00\x00\x00torn")
    old.path.write_bytes(old.path.read_bytes()[: wal.scan_segment(old.path).good_end])
    result = recovery.plan(tmp_path / NAME, CHAIN, 0, 1)  # torn at the very end: dropped
    assert result.last == 2 and (newest.path, wal.scan_segment(newest.path).good_end, True) in result.truncate


def _commit(tmp_path: Path, generation: int, chain: str | None, log_seq: int, keep: int) -> None:
    path = tmp_path / NAME
    token = snapshot.new_token()
    entry = snapshot.write_shard_file(tmp_path / snapshot.shard_file_name(NAME, generation, token, 0), [], 0, 1, 1, 0o600)
    manifest = snapshot.build_manifest(generation, 1, [entry], chain, log_seq)
    snapshot.commit_manifest(path, manifest, token, 0o600, keep)


def test_a_checkpoint_removes_the_segments_it_covers_and_foreign_chains(tmp_path):
    first = writer(tmp_path, 0, 1, base=1)
    first.append(1, 1, [0], b"one")
    second = writer(tmp_path, 0, 1, base=2)
    second.append(2, 2, [0], b"two")
    third = writer(tmp_path, 0, 1, base=3)
    foreign = writer(tmp_path, 0, 1, base=1, chain="deadbeef")
    _commit(tmp_path, 1, CHAIN, 1, keep=2)
    _commit(tmp_path, 2, CHAIN, 2, keep=2)
    removed = recovery.remove_obsolete_segments(tmp_path / NAME)
    # generation 1 (calls up to 1) is still kept: the segment from call 2 on is needed by it
    assert sorted(removed) == sorted([first.path.name, foreign.path.name])
    assert second.path.exists() and third.path.exists()


def test_repair_cuts_damage_and_keeps_a_copy(tmp_path):
    w = writer(tmp_path, 0, 1)
    for seq in range(1, 5):
        w.append(seq, seq, [0], b"x" * 50)
    w.close()
    records = wal.scan_segment(w.path).records
    data = bytearray(w.path.read_bytes())
    data[records[1].start + 20] ^= 0x55
    w.path.write_bytes(bytes(data))
    done = recovery.repair(tmp_path / NAME)
    assert len(done) == 1 and "damaged at byte" in done[0]
    copies = list(tmp_path.glob(w.path.name + ".damaged-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == bytes(data)
    assert [r.seq for r in wal.scan_segment(w.path).records] == [1]


def test_repair_removes_a_segment_whose_header_is_damaged(tmp_path):
    w = writer(tmp_path, 0, 1)
    w.append(1, 1, [0], b"x")
    w.close()
    data = bytearray(w.path.read_bytes())
    data[3] ^= 0xFF
    w.path.write_bytes(bytes(data))
    done = recovery.repair(tmp_path / NAME)
    assert "header is damaged" in done[0] and not w.path.exists()
    assert list(tmp_path.glob(w.path.name + ".damaged-*"))


def test_cut_lane_drops_a_dead_workers_part_of_a_failed_call(tmp_path):
    writers = log_calls(tmp_path, 2, [[0, 1], [0]])
    writers[1].append(3, 99, [0, 1], b"logged, then the worker died; the call failed")
    result = recovery.plan(tmp_path / NAME, CHAIN, 0, 2, upto=2)
    recovery.cut_lane(result, 1)
    assert [r.seq for r in wal.scan_segment(writers[1].path).records] == [1]
