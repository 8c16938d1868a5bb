"""Stress tests of selection under shift: scenarios, corruptions, re-scoring stored models, the stress
selectors and the runner.

Stands on the shared core (noharm.bench.trial, compose, tracking); never imports noharm.bench.sweep.
"""
