"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from noharm.bench.errors import ConfigError


# What --data-root means in every command (`noharm trial`, `run`, `datasets check`): `resolve_root` in datasets.
DATA_ROOT_HELP = ("a real dataset's own folder, or a folder holding one subfolder per dataset name "
                  "(e.g. /data for /data/compas/); embedded datasets ignore it")


class UsageError(ConfigError):
    """Bad command-line input: reported as one line, exit code 2."""


def parse_options(items: list[str] | None) -> dict[str, object]:
    """`--option key=value` pairs; values parsed as YAML scalars (numbers, booleans, strings)."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def non_negative_int(text: str) -> int:
    """argparse type of --seed: an integer >= 0 (numpy and torch seeds cannot be negative)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def check_out_folder(out: str | None, force: bool = False) -> None:
    """--out names a folder (created when missing) that is empty unless --force."""
    if not out:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out!r} is a file; give a folder (it is created when missing)")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UsageError(f"output folder {out!r} is not empty; choose another --out or pass --force")


def check_device(device: str) -> None:
    """`auto` or a device string torch parses (cpu, cuda, cuda:1, mps); availability is the worker's business."""
    if device == "auto":
        return
    import torch  # lazy: torch costs seconds of start-up for every command

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
