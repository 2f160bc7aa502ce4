"""Benchmarks: they measure and write rows to bench/results/*.csv; tests never time."""
