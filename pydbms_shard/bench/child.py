"""Run one measurement in a fresh interpreter, so that nothing else in the benchmark's heap (its
users, the other engines' garbage) counts in it: ``run_in_child("memory:measure_engine", ...)``
runs ``pydbms_shard.bench.memory.measure_engine(**kwargs)`` in a child process and returns what
it returned (JSON-ready)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any


def run_in_child(target: str, **kwargs: Any) -> Any:
    """``target`` is ``"module:function"`` of a module of this package."""
    args = [sys.executable, "-m", "pydbms_shard.bench.child", target, json.dumps(kwargs)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{target}({kwargs}) failed in its child process: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" not in argv[0]:
        print("usage: python -m pydbms_shard.bench.child MODULE:FUNCTION JSON_KWARGS", file=sys.stderr)
        return 2
    module, name = argv[0].split(":", 1)
    function = getattr(importlib.import_module(f"pydbms_shard.bench.{module}"), name)
    print(json.dumps(function(**json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
