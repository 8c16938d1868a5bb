"""The `noharm` command line: a thin dispatcher over `bench.commands.*`."""

from __future__ import annotations

import argparse
import importlib
import sys

from noharm.bench.commands import COMMANDS
from noharm.bench.errors import ConfigError

EXIT_BAD_INPUT = 2


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from noharm.datasets import DatasetError, UnknownNameError
    from noharm.methods.hparams import HparamError

    return (ConfigError, DatasetError, UnknownNameError, HparamError, FileExistsError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noharm",
        description="Benchmarking suite for fairness without harm: compare every group against pooled ERM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"noharm.bench.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `noharm` console script; bad input exits 2 with one line."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _bad_input_types() as exc:
        print(f"noharm: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("noharm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
