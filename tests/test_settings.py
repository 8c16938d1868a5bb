"""Precision, channels-last and the selection metric: declared once (`noharm.settings`), taken as is everywhere.

Each place that accepts one of these settings (the suite schema, the trial config, the `noharm trial`
options, the method's FitContext, and the tables keyed by their values) is read back here and compared
with the declaration, so a value added or dropped in one place only fails this file.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields

import pytest

from noharm.bench.cli import build_parser
from noharm.bench.errors import ConfigError
from noharm.bench.sweep.suite import SelectionSettings, Suite
from noharm.bench.trial import TrialConfig, TrialSpec
from noharm.methods import FitContext
from noharm.settings import CHANNELS_LAST, PRECISION, SELECTION_METRIC, SETTINGS, Setting


def trial_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["trial"]._actions}


def suite_field(model, name: str) -> tuple[tuple, object]:
    info = model.model_fields[name]
    assert typing.get_origin(info.annotation) is typing.Literal, f"{model.__name__}.{name} is not a Literal"
    return typing.get_args(info.annotation), info.default


def places(setting: Setting) -> dict[str, tuple[tuple | None, object]]:
    """{place: (accepted values, or None where the place checks through `setting.check`; default)}."""
    cli = trial_options()[setting.name]
    out = {"noharm trial " + setting.flag: (tuple(cli.choices), cli.default),
           "TrialSpec." + setting.name: (None, next(f.default for f in fields(TrialSpec) if f.name == setting.name))}
    if setting is PRECISION:
        out["suite precision"] = suite_field(Suite, "precision")
    if setting is SELECTION_METRIC:
        out["suite selection.metric"] = suite_field(SelectionSettings, "metric")
    if setting in (PRECISION, CHANNELS_LAST):
        out["FitContext." + setting.name] = (None, getattr(FitContext(), setting.name))
    return out


def disagreements(setting: Setting, found: dict[str, tuple[tuple | None, object]]) -> list[str]:
    bad = []
    for place, (values, default) in found.items():
        if values is not None and tuple(values) != setting.choices:
            bad.append(f"{place} accepts {tuple(values)}, declared {setting.choices}")
        if default != setting.default:
            bad.append(f"{place} defaults to {default!r}, declared {setting.default!r}")
    return bad


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_place_takes_the_declared_values_and_default(setting):
    found = places(setting)
    assert len(found) >= 3  # suite or FitContext, trial config, CLI
    assert disagreements(setting, found) == []


def test_the_comparison_fails_on_a_value_added_in_one_place():
    found = places(PRECISION)
    found["noharm trial --precision"] = (PRECISION.choices + ("int8",), "fp32")
    found["suite precision"] = (("fp32", "bf16"), "bf16")
    assert disagreements(PRECISION, found) == [
        "noharm trial --precision accepts ('fp32', 'bf16', 'fp16', 'int8'), declared ('fp32', 'bf16', 'fp16')",
        "suite precision accepts ('fp32', 'bf16'), declared ('fp32', 'bf16', 'fp16')",
        "suite precision defaults to 'bf16', declared 'fp32'",
    ]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_trial_config_accepts_exactly_the_choices(setting):
    for value in setting.choices:
        TrialConfig(dataset="adult", attribute="sex", method="erm", **{setting.name: value}).validate()
    label = setting.label or setting.name
    with pytest.raises(ConfigError, match=f"unknown {label} 'int8'; choose one of: {', '.join(setting.choices)}"):
        TrialConfig(dataset="adult", attribute="sex", method="erm", **{setting.name: "int8"}).validate()


def test_cli_refuses_a_value_outside_the_choices(capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["trial", "--dataset", "adult", "--attribute", "sex", "--method", "erm",
                                   "--channels-last", "maybe"])
    assert err.value.code == 2
    assert "invalid choice: 'maybe' (choose from 'auto', 'on', 'off')" in capsys.readouterr().err.replace('"', "'")


def test_tables_keyed_by_the_values_cover_exactly_the_choices():
    from noharm.bench.stress.rescore import VERIFY_ATOL
    from noharm.methods.selection import UTILITY_WEIGHTING

    assert set(UTILITY_WEIGHTING) == set(SELECTION_METRIC.choices)
    assert set(VERIFY_ATOL) == set(PRECISION.choices)


def test_a_default_outside_the_choices_is_refused():
    with pytest.raises(ValueError, match="default 'x' is not one of"):
        Setting("s", ("a", "b"), "x", "help")
