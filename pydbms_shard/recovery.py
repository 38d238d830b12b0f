"""Recovery from the write-ahead log, decided on the coordinator's side: which logged calls are
whole, what each shard replays, which tails are dropped, which segments a checkpoint made
obsolete, and ``pydbms repair``. Per-record work (reading, checking, applying) is the workers'.

Every write call has a sequence number, a random nonce and the list of shards it touched;
each touched shard logs one record with all three. A call is *whole* when every shard it
touched holds its record with the same nonce. Recovery replays calls in sequence order from
the snapshot's ``log_seq`` and stops at the first call that is not whole, so the database
holds exactly the effect of a prefix of the calls that were made.

Segments: each shard appends to one segment at a time; a checkpoint (a save of the
database's own path) moves every shard on to a new segment whose ``base`` is the first
sequence number after the snapshot's cut. Within one chain (the log of one snapshot lineage)
a shard's segment holds calls from its base up to the base of that shard's next segment
minus one; a record beyond that is a leftover of a call that failed and is ignored.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LogDamagedError, SnapshotError
from .snapshot import fsync_dir, numbered_manifests, read_manifest
from .workers import log as wal

log = logging.getLogger("pydbms_shard.recovery")

_NO_END = 1 << 63


@dataclass
class Plan:
    """What recovering from a chain's log means: replay calls ``start+1 .. last``."""

    chain: str | None
    start: int
    last: int
    dropped: int = 0  # calls found after ``last`` that are not replayed (not whole)
    paths: list[str] = field(default_factory=list)  # every segment file of the chain
    layouts: list[int] = field(default_factory=list)  # the shard count that wrote each path
    extents: dict[int, list[list[int]]] = field(default_factory=dict)  # worker -> [path index, start, end]
    truncate: list[tuple[Path, int, bool]] = field(default_factory=list)  # (file, new size, torn)
    # shard -> (file, offset, base) of its newest segment, where it goes on appending (a
    # segment's range is open-ended while it is its shard's newest)
    append: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    replayed_bytes: int = 0  # what the replayed calls take in the log

    def replay_message(self, shard: int, shards: int) -> list[Any]:
        """The ``replay`` command's arguments for one worker of a ``shards``-shard layout."""
        return [self.paths, [layout != shards for layout in self.layouts], self.extents.get(shard, [])]


def _created(scan: wal.SegmentScan) -> bool:
    """False for a segment whose creation was cut short (no whole header): it holds nothing
    and bounds nothing, and it is removed."""
    return scan.good_end >= wal.HEADER_SIZE


def _ranges(scans: list[wal.SegmentScan]) -> dict[int, int]:
    """For each scan (by position), the last sequence number its segment may hold."""
    by_lane: dict[tuple[int, int], list[int]] = {}
    ends: dict[int, int] = {}
    for k, scan in enumerate(scans):
        if _created(scan):
            by_lane.setdefault((scan.shards, scan.shard), []).append(k)  # type: ignore[arg-type]  # a created segment's header gives shard, shards and base (never None)
        else:
            ends[k] = -1
    for lane in by_lane.values():
        lane.sort(key=lambda k: scans[k].base)  # type: ignore[arg-type,return-value]  # a created segment's header gives shard, shards and base (never None)
        for here, after in zip(lane, lane[1:] + [None]):
            ends[here] = _NO_END if after is None else scans[after].base - 1  # type: ignore[operator]  # a created segment's header gives shard, shards and base (never None)
    return ends


def plan(manifest_path: Path, chain: str | None, start: int, shards: int, upto: int | None = None) -> Plan:
    """Scan every segment of ``chain`` beside ``manifest_path`` and decide what a
    ``shards``-shard database replays after call ``start`` (and at most up to ``upto``).
    Raises LogDamagedError (changing nothing) when a segment is damaged, not merely torn."""
    result = Plan(chain, start, start)
    if chain is None:
        return result
    scans, ends = _scan_chain(manifest_path, chain)
    parts = _calls_after(scans, ends, start)
    result.last = _whole_prefix(parts, scans, start, upto)
    result.dropped = sum(1 for s in parts if s > result.last)
    result.paths = [str(scan.path) for scan in scans]
    result.layouts = [scan.shards for scan in scans]  # type: ignore[misc]  # every scanned segment's name or header gives shards
    _assign_extents(result, parts, scans, shards)
    _plan_tails(result, scans, ends)
    _plan_appends(result, scans, shards)
    return result


def _scan_chain(manifest_path: Path, chain: str) -> tuple[list[wal.SegmentScan], dict[int, int]]:
    scans = [wal.scan_segment(p) for p, name in wal.list_segments(manifest_path) if name.chain == chain]
    ends = _ranges(scans)
    for k, scan in enumerate(scans):
        if scan.torn and _created(scan) and ends[k] != _NO_END:
            # only a shard's newest segment can be cut short by a crash: later ones follow it
            raise LogDamagedError(str(scan.path), scan.good_end, "a bad record in a segment that later segments of the same shard follow")
    return scans, ends


def _calls_after(scans: list[wal.SegmentScan], ends: dict[int, int], start: int) -> dict[int, list[tuple[int, wal.RecordInfo]]]:
    """Every logged part of every call after ``start``, by call number: (scan, record)."""
    parts: dict[int, list[tuple[int, wal.RecordInfo]]] = {}
    for k, scan in enumerate(scans):
        for record in scan.records:
            if start < record.seq <= ends[k]:
                parts.setdefault(record.seq, []).append((k, record))
    return parts


def _whole_prefix(parts: dict[int, list[tuple[int, wal.RecordInfo]]], scans: list[wal.SegmentScan], start: int, upto: int | None) -> int:
    """The last call of the longest run of whole calls after ``start``."""
    seq = start
    while seq + 1 in parts and (upto is None or seq + 1 <= upto):
        found = parts[seq + 1]
        first = found[0][1]
        layout = {scans[k].shards for k, _ in found}
        holders = sorted(scans[k].shard for k, _ in found)  # type: ignore[type-var]  # a created segment's header gives shard, shards and base (never None)
        if len(layout) != 1 or any(r.nonce != first.nonce or r.touched != first.touched for _, r in found):
            break  # parts of different calls under one number: the later ones are leftovers
        if holders != sorted(first.touched):
            break  # some shard the call touched never logged it: the call is not whole
        seq += 1
    return seq


def _assign_extents(result: Plan, parts: dict[int, list[tuple[int, wal.RecordInfo]]], scans: list[wal.SegmentScan], shards: int) -> None:
    """Who replays what: a worker its own shard's records, or, when another layout wrote
    them, every worker every record (keeping its own users)."""
    for s in range(result.start + 1, result.last + 1):
        for k, record in parts[s]:
            span = [k, record.start, record.end]
            result.replayed_bytes += record.end - record.start
            if scans[k].shards == shards:
                result.extents.setdefault(scans[k].shard, []).append(span)  # type: ignore[arg-type]  # a created segment's header gives shard, shards and base (never None)
            else:
                for w in range(shards):
                    result.extents.setdefault(w, []).append(span)


def _plan_tails(result: Plan, scans: list[wal.SegmentScan], ends: dict[int, int]) -> None:
    """What to cut once recovery succeeded: torn records, calls after the last whole one,
    and segments whose creation was cut short."""
    for k, scan in enumerate(scans):
        if not _created(scan):
            result.truncate.append((Path(scan.path), 0, True))
            continue
        keep = scan.good_end
        if scan.records:
            kept = [r.end for r in scan.records if r.seq <= min(result.last, ends[k])]
            keep = kept[-1] if kept else scan.records[0].start
        if keep < scan.size:
            result.truncate.append((Path(scan.path), keep, scan.torn))


def _plan_appends(result: Plan, scans: list[wal.SegmentScan], shards: int) -> None:
    """Each shard of this layout goes on appending to its newest segment, after the cut."""
    lanes = [k for k, scan in enumerate(scans) if scan.shards == shards and _created(scan)]
    for w in range(shards):
        mine = [k for k in lanes if scans[k].shard == w]
        if mine:
            k = max(mine, key=lambda k: scans[k].base)  # type: ignore[arg-type,return-value]  # a created segment's header gives shard, shards and base (never None)
            new_size = next((size for p, size, _ in result.truncate if p == Path(scans[k].path)), scans[k].size)
            result.append[w] = (Path(scans[k].path).name, new_size, scans[k].base)  # type: ignore[assignment]  # a created segment's header gives shard, shards and base (never None)


def drop_tails(result: Plan) -> None:
    """After a successful recovery: cut torn records and calls that were not whole off the
    segments, so they are neither warned about again nor mistaken for later calls."""
    for path, size, torn in result.truncate:
        if torn:
            log.warning("%s: dropped a torn record at the end of the log (byte %d on)", path, size)
        if size < wal.HEADER_SIZE:
            _unlink(path)  # a segment whose creation was cut short holds nothing
        else:
            wal.truncate_segment(path, size)
    if result.dropped:
        log.warning(
            "%d logged call(s) after call %d were not replayed: call %d was not logged by every shard it touched "
            "(with log_fsync: always such a call never returned)",
            result.dropped,
            result.last,
            result.last + 1,
        )


def drop_torn_creations(result: Plan) -> None:
    """Remove segments whose creation was cut short (they hold nothing), so a new segment of
    the same name can be created later."""
    for path, size, _torn in result.truncate:
        if size < wal.HEADER_SIZE:
            _unlink(path)


def cut_lane(result: Plan, shard: int) -> None:
    """Cut a shard's newest segment after the plan's last call (its worker is gone)."""
    where = result.append.get(shard)
    if where is None:
        return
    name, offset, _base = where
    path = Path(result.paths[0]).parent / name if result.paths else None
    if path is not None and path.stat().st_size > offset:
        wal.truncate_segment(path, offset)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_obsolete_segments(manifest_path: Path) -> list[str]:
    """After a checkpoint commits: remove segments no kept snapshot generation needs, i.e.
    those of chains no kept manifest names, and those wholly covered by the oldest kept
    snapshot of their chain. A shard's newest segment is always kept."""
    needed: dict[str | None, int] = {}
    manifests = [manifest_path, *numbered_manifests(manifest_path)]
    for candidate in manifests:
        try:
            m = read_manifest(candidate)
        except SnapshotError:
            continue
        needed[m.log_chain] = min(needed.get(m.log_chain, m.log_seq), m.log_seq)
    segments = wal.list_segments(manifest_path)
    removed = []
    by_chain: dict[str, list[tuple[Path, wal.SegmentName]]] = {}
    for path, name in segments:
        by_chain.setdefault(name.chain, []).append((path, name))
    for chain, items in by_chain.items():
        if chain not in needed:
            doomed = [path for path, _ in items]
        else:
            covered = needed[chain]
            doomed = []
            lanes: dict[tuple[int, int], list[tuple[Path, wal.SegmentName]]] = {}
            for path, name in items:
                lanes.setdefault((name.shards, name.shard), []).append((path, name))
            for lane in lanes.values():
                lane.sort(key=lambda item: item[1].base)
                for (path, _), (_, after) in itertools.pairwise(lane):
                    if after.base - 1 <= covered:
                        doomed.append(path)
        for path in doomed:
            _unlink(path)
            removed.append(path.name)
    if removed:
        fsync_dir(manifest_path.parent)
    return removed


def repair(manifest_path: Path) -> list[str]:
    """Truncate every damaged segment at its last good record, keeping a copy of it first
    (``<segment>.damaged-<UTC time>``); torn tails are cut too. Returns what was done."""
    done = []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for path, _name in wal.list_segments(manifest_path):
        try:
            scan = wal.scan_segment(path)
        except LogDamagedError as exc:
            copy = path.with_name(f"{path.name}.damaged-{stamp}")
            shutil.copy2(path, copy)
            with open(copy, "rb+") as f:
                os.fsync(f.fileno())
            if exc.offset < wal.HEADER_SIZE:
                _unlink(path)
                done.append(f"{path.name}: its header is damaged; removed (the whole file is kept as {copy.name})")
                continue
            wal.truncate_segment(path, exc.offset)
            done.append(f"{path.name}: damaged at byte {exc.offset}; truncated there (the whole file is kept as {copy.name})")
            continue
        if scan.torn:
            if scan.good_end < wal.HEADER_SIZE:
                _unlink(path)
                done.append(f"{path.name}: its creation was cut short; removed")
            else:
                wal.truncate_segment(path, scan.good_end)
                done.append(f"{path.name}: torn tail dropped at byte {scan.good_end}")
    if done:
        fsync_dir(manifest_path.parent)
    return done
