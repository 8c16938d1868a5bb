"""`noharm bench`: the main job behind `make bench`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="the main job (`make bench`)")
    b.add_argument("--out", default="results", help="output folder")
    b.add_argument("--seeds", type=int, nargs="+", default=[0])
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.main_job import run_main_job

    return run_main_job(out=args.out, seeds=args.seeds)
