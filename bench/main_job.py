"""The main job behind `make bench`: the default suite (bench/suites/default.yaml) into `results/`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


STRESS_METHODS = ("fairsde",)
STRESS_REPEATS = 100


def default_suite_path() -> Path:
    """The shipped default suite (package data, so it is found from any working folder)."""
    return Path(str(resources.files("bench") / "suites" / "default.yaml"))


def run_main_job(out: str = "results", suite: str | None = None, max_concurrent: int | None = None,
                 tracking_uri: str | None = None) -> int:
    """Run the default suite (or `suite`) into `out`; prints the comparison, where the results are and
    the `mlflow ui` command. Rerunning skips everything already finished."""
    from noharm.bench.commands.run import run_and_report
    from noharm.bench.sweep.suite import load_suite

    loaded = load_suite(suite or default_suite_path())
    code = run_and_report(loaded, out, tracking_uri=tracking_uri, max_concurrent=max_concurrent)
    if code not in (0, 1):  # interrupted or bad input: nothing more to add
        return code
    from noharm.bench.stress.run import run_stress_for_experiment
    from noharm.bench.tracking import default_uri

    # The same store and experiment the sweep used (bench.sweep.run.run_suite's rule).
    uri = tracking_uri or loaded.tracking.uri or default_uri(Path(out).absolute())
    experiment = loaded.tracking.experiment or loaded.name
    # A small stress pass: FairSDE's selection under shift, 100 repeats per severity.
    print("\nstress pass (FairSDE against ERM, 100 repeats per severity) ...")
    run_stress_for_experiment(experiment, uri, None, repeats=STRESS_REPEATS, methods=STRESS_METHODS, log=lambda m: None)

    from noharm.analysis.report import write_report

    report = write_report(experiment, uri, Path(out) / "report")
    print(f"report: tables, plots and leaderboard in {report.out} (start at {report.out / 'README.md'}, "
          f"leaderboard {report.out / 'leaderboard.html'})")
    return code
