"""What the sweep's lease costs on a server store: one heartbeat (read the record, write it back) and one
take-over, through `mlflow server` on PostgreSQL (the pgserver wheel, as in tests/test_postgres_store.py).

A beat runs every `HEARTBEAT` seconds on a daemon thread of the driver; its cost over that period is the
share of one thread the lease takes from the driver. Taking the lease adds `SETTLE` seconds once.

Run by hand from the repository root: `.venv/bin/python bench/perf/lease_cost.py [-n 200]`;
appends to bench/perf/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests/postgres_store.py starts the servers

from noharm.bench.perf.common import append_results  # noqa: E402
from noharm.bench.sweep.lease import HEARTBEAT, SETTLE, RecordLease  # noqa: E402
from noharm.bench.tracking import Tracker  # noqa: E402
from tests.postgres_store import create_database, mlflow_server, postgres  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="beats timed")
    args = parser.parse_args()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory() as tmp, postgres() as pg:
        with mlflow_server(create_database(pg, "mlflow"), Path(tmp), env) as url:
            lease = RecordLease(Tracker.open(url, "lease-cost"), "s", heartbeat=3600)
            t0 = time.perf_counter()
            lease.acquire("suite s")
            take = time.perf_counter() - t0
            beats = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                lease.ours(lease.read())  # what one beat does
                lease.write()
                beats.append(time.perf_counter() - t0)
            lease.release()
    median, p95 = statistics.median(beats), sorted(beats)[int(0.95 * len(beats))]
    load = os.getloadavg()[0]
    body = (f"`.venv/bin/python bench/perf/lease_cost.py -n {args.n}` (load average {load:.1f} at the end)\n\n"
            f"- one heartbeat (read + write the lease tag through the server): median {1000 * median:.1f} ms, "
            f"95th percentile {1000 * p95:.1f} ms; every {HEARTBEAT:.0f} s that is at most "
            f"{100 * median / HEARTBEAT:.2f} % of one thread (most of a beat is waiting for the server)\n"
            f"- taking a free lease: {take:.2f} s, of which {SETTLE:.0f} s is the settle wait\n")
    print(body)
    append_results("lease_cost.py: the sweep's lease through mlflow server on PostgreSQL", body)


if __name__ == "__main__":
    main()
