"""Run-time settings with a closed set of values, each declared once: its values, default and help text.

A trial's precision, its image models' memory format and the metric the no-harm selectors compare are
read by methods (`FitContext`, `methods.training`, `methods.selection`) and set by bench, so they are
declared here, in the neutral package every layer may import (importing `noharm.methods` would load torch
and every method, which `noharm --help` must not wait for). The suite schema (`bench.sweep.suite`, as a pydantic `Literal`), the trial config
(`bench.spec.TrialSpec`) and the command line (`noharm trial`, argparse `choices`) all take them from
this module, so a value added here is accepted everywhere and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Setting:
    """One setting: `name` (the config field), its allowed `choices`, `default` and a one-line `help`."""

    name: str
    choices: tuple[str, ...]
    default: str
    help: str
    label: str = ""  # how messages name it (default: `name`)

    def __post_init__(self) -> None:
        if self.default not in self.choices:
            raise ValueError(f"setting {self.name!r}: default {self.default!r} is not one of {self.choices}")

    @property
    def literal(self) -> Any:
        """`typing.Literal` of the choices, for a pydantic field."""
        return Literal[self.choices]  # type: ignore[valid-type]

    @property
    def flag(self) -> str:
        """The command-line option: `--selection-metric` for `selection_metric`."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, error: type[Exception] = ValueError) -> str:
        """`value` when it is one of the choices; else raises `error` naming the setting and the choices."""
        if value not in self.choices:
            raise error(f"unknown {self.label or self.name} {value!r}; choose one of: {', '.join(self.choices)}")
        return value

    def add_argument(self, parser, help: str | None = None) -> None:
        """Add `flag` to an argparse parser with these choices and default (`help` replaces the declared one)."""
        parser.add_argument(self.flag, default=self.default, choices=self.choices, help=help or self.help)


PRECISION = Setting(
    "precision", ("fp32", "bf16", "fp16"), "fp32",
    "training precision: fp32, bf16 (autocast, CPU or GPU) or fp16 (GPU only, with a gradient scaler); "
    "metrics and selection stay fp32")
CHANNELS_LAST = Setting(
    "channels_last", ("auto", "on", "off"), "auto",
    "memory format of image models (auto: on for CUDA and bf16; changes float rounding only)")
SELECTION_METRIC = Setting(
    "selection_metric", ("accuracy", "auc"), "accuracy",
    "validation metric the no-harm selectors compare per group", label="selection metric")

SETTINGS = (PRECISION, CHANNELS_LAST, SELECTION_METRIC)
