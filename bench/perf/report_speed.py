"""Reading a store at paper scale: `noharm report`, `noharm stress`'s run discovery and a resumed sweep's
start-up on synthetic stores of any size, read directly (SQLite, PostgreSQL) and through an `mlflow server`,
timed as whole commands in fresh processes, this checkout's code against another's.

Run by hand from the repository root, e.g. (issue 24):

    .venv/bin/python -m noharm.bench.perf.report_speed --source runs/default/mlflow.db --experiment default \\
        --runs 5000 --stores sqlite sqlite-server postgres-server postgres --suite SUITE.yaml \\
        --before /path/to/main/.venv/bin/python --work /tmp/report-stores --check-api

Stores (built once under --work and reused; `servers.grow` copies the source's FINISHED search, evaluate and
compose runs until the store holds --runs, each copy a new set of seeds):
`sqlite` the SQLite file; `sqlite-server` that file behind `mlflow server --workers N` (default 1);
`postgres` a PostgreSQL database (the `pgserver` wheel; `pip install pgserver 'psycopg[binary]'`);
`postgres-server` that database behind `mlflow server`.

Commands (`--commands`), each a fresh process:
`report` `noharm report`; `stress` what `noharm stress --experiment` reads before it stresses anything (the
experiment's FINISHED evaluate runs and stress runs: `tracking.open_existing` + `finished_runs`);
`start-up` `noharm run SUITE` on a store that already holds every trial of SUITE (the suite the source was
swept with): the finished index, the searcher, the end table, nothing trained.

For each store and command: `--repeats` runs of this checkout's code (A) and, with `--before PYTHON` (another
checkout's interpreter, e.g. main's), of that code (B), in turn A B A B; the wall time, the command's CPU
time (user + system) and the tracking server's CPU time meanwhile (for `*-server` stores), medians.
`--profile` adds the phases of one `write_report` under cProfile, `--check-api` whether this checkout's
report has the same bytes as one read through MLflow's search API. Appends a section to bench/perf/RESULTS.md.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

PHASES = {  # (file suffix, function name) -> phase of `analysis.report.write_report`
    ("store_readers.py", "sqlite_experiment_runs"): "store read (SQL)",
    ("store_readers.py", "database_experiment_runs"): "store read (SQL)",
    ("store_readers.py", "server_runs"): "store read (server JSON)",
    ("store_readers.py", "search_all"): "MLflow search",
    ("collect.py", "collect"): "collect (read + tidy)",
    ("tables.py", "summarise"): "summary",
    ("tables.py", "write_table"): "table files",
    ("plots.py", "group_bars"): "group bar plots",
    ("plots.py", "pareto"): "pareto plots",
    ("plots.py", "stress_curves"): "stress plots",
    ("leaderboard.py", "write"): "leaderboard",
}
STORES = ("sqlite", "sqlite-server", "postgres", "postgres-server")
COMMANDS = ("report", "stress", "start-up")
# What `noharm stress --experiment` reads before stressing anything (bench/stress/run.py).
STRESS_DISCOVERY = ("import sys; from noharm.bench import tracking; "
                    "t = tracking.open_existing(sys.argv[1], sys.argv[2]); "
                    "print(len(tracking.finished_runs(t, 'evaluate')), len(tracking.finished_runs(t, 'stress')))")


@dataclass
class Timing:
    """Runs of one command by one code: wall seconds, the command's CPU seconds, the server's CPU seconds."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def cell(self) -> str:
        if not self.wall:
            return "failed: " + "; ".join(sorted(set(self.failed)))
        med = statistics.median
        text = f"{med(self.wall):.1f} ({min(self.wall):.1f}-{max(self.wall):.1f})"
        text += f" / {med(self.cpu):.1f}" + (f" / {med(self.server):.1f}" if any(self.server) else "")
        return text + (f"; {len(self.failed)} failed ({self.failed[0]})" if self.failed else "")


def command(name: str, python: str, uri: str, experiment: str, suite: str | None, out: Path) -> list[str]:
    if name == "report":
        return [python, "-m", "noharm.bench.cli", "report", "--experiment", experiment, "--tracking-uri", uri,
                "--out", str(out)]
    if name == "stress":
        return [python, "-c", STRESS_DISCOVERY, experiment, uri]
    return [python, "-m", "noharm.bench.cli", "run", str(suite), "--out", str(out), "--tracking-uri", uri,
            "--experiment", experiment, "--quiet"]


def time_once(argv: list[str], timing: Timing, server=None, timeout: float | None = None) -> None:
    """One fresh process of `argv`: its wall and CPU seconds (and the server's CPU meanwhile) into `timing`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = server.cpu() if server is not None else 0.0
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    except subprocess.TimeoutExpired:
        timing.failed.append(f"stopped after {timeout:.0f} s")
        return
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1][:160]
        timing.failed.append(f"exit {done.returncode} after {wall:.0f} s: {last}")
        return
    timing.wall.append(wall)
    timing.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    timing.server.append(server.cpu() - server_before if server is not None else 0.0)


def paired(names: list[str], pythons: dict[str, str], uri: str, experiment: str, suite: str | None,
           repeats: int, server=None, timeout: float | None = None) -> dict[tuple[str, str], Timing]:
    """{(command, code): Timing}: each command `repeats` times per code, the codes in turn (A B A B)."""
    out: dict[tuple[str, str], Timing] = {}
    for name in names:
        for _ in range(repeats):
            for code, python in pythons.items():
                with tempfile.TemporaryDirectory(prefix="noharm-read-speed-") as tmp:
                    time_once(command(name, python, uri, experiment, suite, Path(tmp) / "out"),
                              out.setdefault((name, code), Timing()), server, timeout)
    return out


def profile_report(uri: str, experiment: str) -> tuple[float, dict[str, float]]:
    """(wall seconds, seconds per phase) of one `write_report` in this process."""
    from noharm.analysis.report import write_report

    with tempfile.TemporaryDirectory(prefix="noharm-report-speed-") as out:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        write_report(experiment, uri, out)
        prof.disable()
        wall = time.perf_counter() - t0
    phases: dict[str, float] = {}
    for (file, _, name), (_, _, _, cumulative, _) in pstats.Stats(prof).stats.items():
        for (suffix, fn), label in PHASES.items():
            if name == fn and file.endswith(suffix):
                phases[label] = phases.get(label, 0.0) + cumulative
    return wall, phases


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def same_as_search_api(uri: str, experiment: str) -> str:
    """Whether this checkout's report and one read through MLflow's search API have the same bytes."""
    import noharm.analysis.collect as collect_mod
    from noharm.analysis.report import write_report

    with tempfile.TemporaryDirectory(prefix="noharm-report-check-") as tmp:
        write_report(experiment, uri, Path(tmp) / "fast")
        fast = collect_mod.sql_experiment_runs, collect_mod.server_runs
        collect_mod.sql_experiment_runs = lambda uri, experiment: None
        collect_mod.server_runs = lambda client, experiment_id: None
        try:
            t0 = time.perf_counter()
            write_report(experiment, uri, Path(tmp) / "api")
            api_wall = time.perf_counter() - t0
        finally:
            collect_mod.sql_experiment_runs, collect_mod.server_runs = fast
        a, b = _hashes(Path(tmp) / "fast"), _hashes(Path(tmp) / "api")
    same = "same bytes" if a == b else f"DIFFERENT: {sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))}"
    return f"{same} in {len(a)} files as through MLflow's search API (that report: {api_wall:.1f} s)"


@contextmanager
def store(kind: str, n: int, source: str, experiment: str, work: Path, workers: int, notes: list[str]) -> Iterator:
    """(tracking URI, server or None) of the store `kind` with `n` runs, built under `work` when missing."""
    from noharm.bench.perf.servers import grow, mlflow_server, postgres

    with ExitStack() as stack:
        if kind.startswith("postgres"):
            pg = stack.enter_context(postgres(work / "postgres", f"store_{n}"))
            backend = pg.uri
            if not _has_experiment(backend, experiment):
                t0 = time.perf_counter()
                grow(source, experiment, backend, n)
                notes.append(f"PostgreSQL store of {n} runs built in {time.perf_counter() - t0:.0f} s")
        else:
            db = work / f"store-{n}.db"
            backend = f"sqlite:///{db}"
            if not db.exists():
                t0 = time.perf_counter()
                grow(source, experiment, backend, n)
                notes.append(f"SQLite store of {n} runs built in {time.perf_counter() - t0:.0f} s")
        if kind.endswith("-server"):
            served = stack.enter_context(mlflow_server(backend, work / "artifacts", workers=workers,
                                                       log=work / "server.log"))
            yield served.uri, served
        else:
            yield backend, None


def _has_experiment(uri: str, experiment: str) -> bool:
    from noharm.analysis.store_readers import sql_experiment_runs

    return sql_experiment_runs(uri, experiment, fields=()) is not None  # None too for a database without tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="a sweep's mlflow.db (or a SQL tracking URI)")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--runs", type=int, nargs="+", default=[5000], help="store sizes (default: 5000)")
    parser.add_argument("--stores", nargs="+", choices=STORES, default=["sqlite"])
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--suite", help="the suite the source was swept with (needed for `start-up`)")
    parser.add_argument("--before", metavar="PYTHON", help="another checkout's interpreter to time against")
    parser.add_argument("--workers", type=int, default=1, help="mlflow server workers (default: 1)")
    parser.add_argument("--work", default=None, help="folder for the stores (default: temporary)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per command and code (default: 3)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one command may take (default: 1800)")
    parser.add_argument("--profile", action="store_true", help="phases of one write_report under cProfile")
    parser.add_argument("--check-api", action="store_true",
                        help="also compare the report's bytes with one read through MLflow's search API")
    parser.add_argument("--note", default="", help="a line on the machine's load, added to RESULTS.md")
    args = parser.parse_args()
    if "start-up" in args.commands and not args.suite:
        parser.error("start-up needs --suite (the suite the source was swept with)")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    source = args.source if ":" in args.source else f"sqlite:///{Path(args.source).absolute()}"
    work = Path(args.work or tempfile.mkdtemp(prefix="noharm-report-stores-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    pythons = {"after": sys.executable, **({"before": args.before} if args.before else {})}
    rows, notes = [], []
    for n in args.runs:
        for kind in args.stores:
            with store(kind, n, source, args.experiment, work, args.workers, notes) as (uri, server):
                load = os.getloadavg()[0]
                timings = paired(args.commands, pythons, uri, args.experiment, args.suite, args.repeats, server,
                                 args.timeout)
                extra = []
                if args.profile:
                    wall, phases = profile_report(uri, args.experiment)
                    extra.append(f"write_report {wall:.1f} s under cProfile: " + ", ".join(
                        f"{k} {v:.1f} s" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])))
                if args.check_api:
                    extra.append(same_as_search_api(uri, args.experiment))
            for name in args.commands:
                after, before = timings[(name, "after")], timings.get((name, "before"))
                ratio = ""
                if before is not None and after.wall and before.wall:
                    ratio = f"{statistics.median(a / b for a, b in zip(after.wall, before.wall)):.2f}"
                rows.append(f"| {n} | {kind} | {name} | {after.cell()} | {before.cell() if before else ''} "
                            f"| {ratio} | {load:.0f} |")
                print(rows[-1], flush=True)
            for line in extra:
                notes.append(f"{n} runs, {kind}: {line}")
                print(notes[-1], flush=True)
    header = ("| runs | store | command | after: wall (min-max) / CPU / server CPU, s | before: the same | "
              "after/before wall, pair by pair | load at start |\n|---|---|---|---|---|---|---|")
    from noharm.bench.perf.common import append_results

    append_results("report_speed.py: reading a store directly and through an MLflow server",
                   f"Grown from {Path(args.source).name} (experiment {args.experiment!r}); mlflow server --workers "
                   f"{args.workers}; {args.repeats} runs per command and code, A B A B; after = this checkout, "
                   f"before = {'--before' if args.before else '-'}. {args.note}\n\n{header}\n"
                   + "\n".join(rows) + "".join(f"\n- {n}" for n in notes))


if __name__ == "__main__":
    main()
