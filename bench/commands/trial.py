"""`noharm trial`: train and score one (dataset, attribute, method, seed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from noharm.analysis.record import selected
from noharm.bench.commands.common import DATA_ROOT_HELP, check_device, check_out_folder, non_negative_int, parse_options
from noharm.settings import CHANNELS_LAST, PRECISION, SELECTION_METRIC


def add_parser(sub) -> None:
    p = sub.add_parser("trial", help="train and score one (dataset, attribute, method, seed)",
                       description="Train one model and print its per-group table; --out saves predictions and metrics.")
    p.add_argument("--dataset", required=True, help="registered dataset name (see `noharm datasets list`)")
    p.add_argument("--attribute", required=True, help="sensitive attribute, or several joined by '+' (e.g. sex+race)")
    p.add_argument("--method", required=True, help="registered method name (see `noharm methods list`)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a hyperparameter (repeatable)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset option, e.g. image_size=64 (repeatable)")
    p.add_argument("--target", help="dataset target (default: the dataset's own)")
    p.add_argument("--data-root", help=DATA_ROOT_HELP)
    p.add_argument("--objective", default="acc", help="validation metric for the best epoch (e.g. acc, val/worst_group_auc)")
    PRECISION.add_argument(p)
    p.add_argument("--selectors", default="greedy,ip-gap,ip-utility",
                   help="no-harm selectors composed with pooled ERM for non-ERM methods (comma-separated, or 'none')")
    SELECTION_METRIC.add_argument(p)
    p.add_argument("--erm", metavar="PATH", help="an ERM run folder (same dataset, attribute, seed) to compose with, "
                                                  "instead of training ERM in this trial")
    CHANNELS_LAST.add_argument(p)
    p.add_argument("--train-predictions", action="store_true",
                   help="also score and store the training split (default: validation and test only)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--out", help="folder for predictions.parquet, metrics.json, config.json, model.pt")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no per-epoch log")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noharm.bench.console import trial_report
    from noharm.bench.trial import TrialConfig, budget_text, run_trial, save_trial
    from noharm.datasets import resolve_root
    from noharm.methods.hparams import parse_assignments

    options = parse_options(args.option)
    if options.get("split_file"):  # recorded in config.json: absolute, so a later re-score finds it
        options["split_file"] = str(Path(str(options["split_file"])).expanduser().absolute())
    if args.target:
        options["target"] = args.target
    if args.data_root:  # the folder found is what config.json records (absolute: a later re-score finds it)
        root = resolve_root(args.dataset, args.data_root, **{k: v for k, v in options.items() if k != "root"})
        if root is not None:
            options["root"] = root
    cfg = TrialConfig(
        dataset=args.dataset, attribute=args.attribute, method=args.method, seed=args.seed,
        hparams=parse_assignments(args.set), dataset_options=options, objective=args.objective,
        precision=args.precision, channels_last=args.channels_last, selection_metric=args.selection_metric, erm_predictions=args.erm,
        train_predictions=args.train_predictions,
        selectors=tuple(x.strip() for x in args.selectors.split(",") if x.strip() and x.strip() != "none"),
    )
    cfg.validate()
    check_device(args.device)
    check_out_folder(args.out, force=args.force)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_trial(cfg, device=args.device, log=log)
    print(f"{cfg.method} on {cfg.dataset} ({cfg.attribute}), seed {cfg.seed}, device {result.notes['device']}")
    print(f"budget: {budget_text(cfg.dataset, result.notes['budget'])}")
    if result.notes["small_groups"]:
        print(f"warning: groups below {cfg.min_group_size} samples in some split: {', '.join(result.notes['small_groups'])}")
    print(trial_report(result.metrics, list(result.candidates), list(result.group_names)))
    for strategy, info in result.notes["selection"].items():
        experts = [g for g, use in info["use_expert"].items() if use]
        print(f"{selected(strategy)}: experts for {', '.join(experts) if experts else 'no group'} ({info['status']})")
    c = result.cost
    print(f"\ntime {c['wall_seconds']:.1f} s (fit {c['fit_seconds']:.1f} s), "
          f"{c['train_samples_per_second']:.0f} train samples/s, peak memory {c['peak_memory_mb']:.0f} MB")
    if args.out:
        save_trial(result, args.out, force=args.force)
        print(f"wrote {args.out}/predictions.parquet, metrics.json, config.json, model.pt")
    return 0
