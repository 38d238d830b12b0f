"""SIGKILL a process writing to a DataBase with a write-ahead log; reopening must give exactly
the state after a prefix of its write calls (the prefix property):

- log_fsync "always": every acknowledged call is recovered, and at most the one call that
  was in flight besides: acked <= L <= acked + 1;
- "everysec" and "no": any prefix 0 <= L <= acked + 1, but never part of a call.

Each round runs tests/crash_child.py in its own process group, kills the whole group
(coordinator and workers) at a random moment, reopens the directory here and compares the
recovered state's fingerprint with the fingerprints of every prefix of the same calls applied
to a plain-dict model (tests/crash_model.py); tests/crash_harness.py has the details. Some
rounds also check that a second reopen finds the same state, that the recovered database
takes a write, that a second child can go on from a recovered log ("lives": 2), and that
recovery works into another shard count ("reshard"). scripts/crash-test runs many more rounds.
"""

from __future__ import annotations

import pytest
from crash_harness import describe, rerun_command, run_round

pytestmark = pytest.mark.crash

# seed, log_fsync, shards, lives, reshard, check_writable, kills (None: chosen from the seed)
ROUNDS = [
    (101, "always", 2, 1, False, True, None),
    (102, "always", 2, 1, False, False, [("early", 0.15)]),  # before the DataBase even opens
    (103, "always", 2, 2, False, True, None),
    (104, "always", 2, 1, False, False, None),
    (105, "always", 3, 1, False, True, None),
    (106, "always", 2, 1, True, True, None),
    (107, "always", 2, 2, False, False, [("running", 0.6), ("early", 1.0)]),  # killed while recovering
    (108, "always", 2, 1, False, False, [("early", 0.9)]),  # while opening
    (109, "always", 3, 2, False, True, None),
    (110, "always", 2, 1, False, False, [("running", 1.4)]),
    (201, "everysec", 2, 1, False, True, None),
    (202, "everysec", 2, 2, False, False, None),
    (203, "everysec", 3, 1, True, True, None),
    (204, "everysec", 2, 1, False, False, [("early", 0.4)]),
    (205, "everysec", 2, 1, False, False, [("running", 1.2)]),
    (301, "no", 2, 1, False, True, None),
    (302, "no", 2, 2, False, False, None),
    (303, "no", 3, 1, False, False, None),
    (304, "no", 2, 1, True, True, [("running", 0.3)]),
    (305, "no", 2, 1, False, False, [("early", 0.7)]),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed, fsync, shards, lives, reshard, check_writable, kills",
    ROUNDS,
    ids=[f"{r[1]}-{r[2]}shards-seed{r[0]}" for r in ROUNDS],
)
def test_sigkill_recovers_a_prefix_of_the_calls(tmp_path, seed, fsync, shards, lives, reshard, check_writable, kills):
    result = run_round(tmp_path, seed, fsync, shards, lives=lives, reshard=reshard, check_writable=check_writable, kills=kills)
    assert result["ok"], f"{describe(result)}\nre-run with more rounds of this seed: {rerun_command(result)}"
