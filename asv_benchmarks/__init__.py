"""The asv suite of pydbms-shard: every row of the reference workload (the original's
benchmark table: add, search, check, remove by ID and by name, save, backup, load) and the
costs of the write-ahead log, tracked across commits. See asv.conf.json at the repository
root and benchmarks.py."""
