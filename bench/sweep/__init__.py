"""Sweeps: suites, the trial grid, keys, the Tune searcher and trainables, progress and the sweep's own report.

Stands on the shared core (noharm.bench.trial, compose, tracking); never imports noharm.bench.stress.
"""
