"""Test support shared with the benchmarks: checkpoint writers that runtime code never needs."""
