"""`noharm datasets list|check`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    d = sub.add_parser("datasets", help="list or check datasets")
    dsub = d.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="registered datasets with targets and attributes")
    dl.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    from datasets import DATASETS

    for name in DATASETS.names():
        cls = DATASETS.get(name)
        print(f"{name}  [{cls.kind}]  {cls.description}")
        print("    targets:    " + "; ".join(f"{k} ({v})" for k, v in cls.targets.items()))
        print("    attributes: " + "; ".join(f"{k} ({v})" for k, v in cls.attributes.items()))
        if cls.size_note:
            print(f"    size:       {cls.size_note}")
        print(f"    source:     {'embedded' if not cls.needs_root else 'local folder (--data-root)'}; {cls.citation}")
    return 0
