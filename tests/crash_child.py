"""The crash test's child (not a test module): run as

    python tests/crash_child.py DIR SEED FSYNC SHARDS [START]

Opens ``DataBase(snapshot_path=DIR/db.json, shards=SHARDS, log_fsync=FSYNC, ...)`` (the
other settings come from ``crash_model.round_settings(SEED)``), prints ``ready``, then makes
SEED's write calls (``crash_model.calls``) one after another forever, skipping the first START
(a previous life of this directory already made them), and after each call returns prints
its number on a line of its own and flushes: a printed number is an acknowledged call.
It is meant to be SIGKILLed with its whole process group.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crash_model import apply_to_db, calls, round_settings

from pydbms_shard import DataBase


def main(argv: list[str]) -> None:
    directory, seed, fsync, shards = Path(argv[0]), int(argv[1]), argv[2], int(argv[3])
    start = int(argv[4]) if len(argv) > 4 else 0
    db = DataBase(snapshot_path=str(directory / "db.json"), shards=shards, log_fsync=fsync, **round_settings(seed))
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for call in calls(seed):
        if call.number <= start:
            continue
        apply_to_db(db, call)
        out.write(f"{call.number}\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
