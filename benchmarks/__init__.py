"""Benchmarks: load generator (loadgen), shim overhead (shim_overhead), GPU runner (gpu/run.sh)."""
