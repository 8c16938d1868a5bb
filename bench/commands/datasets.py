"""`noharm datasets list|check`."""

from __future__ import annotations

import argparse

from noharm.bench.commands.common import DATA_ROOT_HELP, parse_options


def add_parser(sub) -> None:
    d = sub.add_parser("datasets", help="list or check datasets")
    dsub = d.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="registered datasets with targets and attributes")
    dl.set_defaults(func=run_list)
    dc = dsub.add_parser(
        "check", help="load a dataset without training: counts per split x group x label, drops, problems",
        description="Load a dataset as a trial would (decoding images into the cache if needed) and print counts "
                    "per split x group x label, what was dropped and why, and every problem found. Bad images are "
                    "listed, not fatal. Exit 0 when no problem is found, 1 when some are, 2 on bad input.",
    )
    dc.add_argument("name", help="registered dataset name (see `noharm datasets list`)")
    dc.add_argument("--data-root", dest="root", help=DATA_ROOT_HELP)
    dc.add_argument("--root", dest="root", help=argparse.SUPPRESS)  # the old name of --data-root, kept working
    dc.add_argument("--attribute", help="one attribute or several joined by '+' (default: each attribute)")
    dc.add_argument("--target", help="dataset target (default: the dataset's own)")
    dc.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="dataset option, e.g. image_size=64 or split=random (repeatable)")
    dc.add_argument("--cache-dir", help="image cache folder (default $NOHARM_CACHE_DIR or ~/.cache/noharm)")
    dc.add_argument("--seed", type=int, default=0, help="split seed")
    dc.set_defaults(func=run_check)


def run_list(args: argparse.Namespace) -> int:
    from noharm.datasets import DATASETS

    for name in DATASETS.names():
        cls = DATASETS.get(name)
        print(f"{name}  [{cls.kind}]  {cls.description}")
        print("    targets:    " + "; ".join(f"{k} ({v})" for k, v in cls.targets.items()))
        print("    attributes: " + "; ".join(f"{k} ({v})" for k, v in cls.attributes.items()))
        for attribute, caveat in getattr(cls, "caveats", {}).items():
            print(f"    caveat:     {attribute}: {caveat}")
        if cls.size_note:
            print(f"    size:       {cls.size_note}")
        if cls.training_budget:
            print("    budget:     " + ", ".join(f"{k}={v}" for k, v in cls.training_budget.items())
                  + " (for every method, unless --set or a suite sets it)")
        if cls.shift_help():  # out-of-domain splits besides a split file's
            print(f"    shifts:     {cls.shift_help()}")
        print(f"    source:     {'embedded' if not cls.needs_root else 'local folder (--data-root)'}; {cls.citation}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from noharm.datasets.check import check_dataset, format_report

    options = parse_options(args.option)
    if args.target:
        options["target"] = args.target
    if args.cache_dir:
        options["cache_dir"] = args.cache_dir
    report = check_dataset(args.name, root=args.root, attribute=args.attribute, options=options, seed=args.seed)
    print(format_report(report))
    return 0 if report.ok else 1
