"""The asv suite of pydbms-shard: every row of the reference workload (shared/WORKLOAD.md)
tracked across commits. See asv.conf.json at the repository root and benchmarks.py."""
