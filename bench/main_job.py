"""The main job behind `make bench`: the default suite (bench/suites/default.yaml) into `results/`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def default_suite_path() -> Path:
    """The shipped default suite (package data, so it is found from any working folder)."""
    return Path(str(resources.files("bench") / "suites" / "default.yaml"))


def run_main_job(out: str = "results", suite: str | None = None, max_concurrent: int | None = None,
                 tracking_uri: str | None = None) -> int:
    """Run the default suite (or `suite`) into `out`; prints the comparison, where the results are and
    the `mlflow ui` command. Rerunning skips everything already finished."""
    from bench.commands.run import run_and_report
    from bench.suite import load_suite

    loaded = load_suite(suite or default_suite_path())
    return run_and_report(loaded, out, tracking_uri=tracking_uri, max_concurrent=max_concurrent)
