"""`noharm methods list`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    m = sub.add_parser("methods", help="list methods")
    msub = m.add_subparsers(dest="methods_command", required=True, metavar="ACTION")
    ml = msub.add_parser("list", help="registered methods with their hyperparameters")
    ml.add_argument("-v", "--verbose", action="store_true", help="show every hyperparameter's default and search space")
    ml.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    from noharm.methods import METHODS

    for name in METHODS.names():
        info = METHODS.get(name).summary()
        print(f"{name}  {info['description']}")
        if info["paper"]:
            print(f"    paper: {info['paper']}")
        print(f"    candidates: {', '.join(info['candidates'])}")
        if args.verbose:
            for hp, desc in info["hparams"].items():
                print(f"    {hp}: {desc}")
        else:
            print(f"    hparams: {', '.join(info['hparams'])}")
    return 0
