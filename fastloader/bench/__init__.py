"""Benchmark harness behind ``fastloader bench`` and ``benchmarks/``."""
