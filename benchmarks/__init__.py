"""Benchmarks: this project against the detectors users would pick instead, on the same splits.

`python -m benchmarks` (what `make bench` runs) writes `benchmarks/results/<date>.md`; the
scripts `benchmarks.tabular` and `benchmarks.scoring_speed` also run alone for quick checks.
"""
