"""Benchmarks: scripts that print ratio tables; run them as modules (python -m benchmarks.core)."""
