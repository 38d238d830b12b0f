"""The reference workload and what it is measured against (used by scripts/bench, `pydbms
bench` and the asv suite)."""
