"""Hyperparameters declared once: default value, valid range and search space.

One declaration serves the single run (defaults), `--set name=value`
overrides (typed and range-checked here), suite validation (the same check, so
a bad value fails at the door instead of in every trial), the Optuna/Ray Tune
search space and the docs (`noharm methods list`).

Two ranges, on purpose: `low`/`high` is where the *search* looks; `ge`/`gt`/`le`/`lt`
is what a value may be at all (a user may set `lr=1e-6`, outside the search, but
never `lr=0`). The search range must lie inside the valid range.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Mapping


_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


class HparamError(ValueError):
    """A bad hyperparameter name or value; the message says what is accepted."""


@dataclass(frozen=True)
class Param:
    default: Any
    search: bool = True

    def cast(self, name: str, raw: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def tune_domain(self):
        """The Ray Tune search domain (OptunaSearch converts it)."""
        raise NotImplementedError

    def search_record(self) -> dict[str, Any]:
        """The search domain as plain JSON (kind and bounds), recorded with every sweep run so a report can
        state each chosen setting's range without importing the methods."""
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Param):
    """A numeric hparam with an optional valid range: `ge` (>=), `gt` (>), `le` (<=), `lt` (<)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def bounds(self) -> list[tuple[str, float]]:
        """The declared limits as (operator, value), e.g. [(">=", 1)]."""
        ge = None if self.gt is not None and self.ge is not None and self.gt >= self.ge else self.ge
        le = None if self.lt is not None and self.le is not None and self.lt <= self.le else self.le
        return [(op, v) for op, v in ((">=", ge), (">", self.gt), ("<=", le), ("<", self.lt)) if v is not None]

    def admits(self, value: float) -> bool:
        return all(_COMPARE[op](value, v) for op, v in self.bounds())

    def check(self, name: str, value: Any) -> Any:
        """`value` if inside the valid range, else HparamError naming the range."""
        if not self.admits(value):
            raise HparamError(f"hparam {name!r} must be {self.range_text()}, got {value!r}")
        return value

    def range_text(self) -> str:
        return " and ".join(f"{op} {v:g}" for op, v in self.bounds())

    def check_declaration(self) -> None:
        """The default and the search range must be valid values (a declaration error, found at import)."""
        if not self.low <= self.high:
            raise HparamError(f"bad search range [{self.low}, {self.high}]")
        for label, value in (("default", self.default), ("search low", self.low), ("search high", self.high)):
            if (label == "default" or self.search) and not self.admits(value):
                raise HparamError(f"{label} {value!r} is outside the valid range ({self.range_text()})")

    def describe_range(self) -> str:
        return f", must be {self.range_text()}" if self.bounds() else ""


@dataclass(frozen=True)
class Float(Number):
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        self.check_declaration()

    def cast(self, name: str, raw: Any) -> float:
        if isinstance(raw, bool):
            raise HparamError(f"hparam {name!r} takes a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise HparamError(f"hparam {name!r} takes a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise HparamError(f"hparam {name!r} must be finite, got {raw!r}")
        return self.check(name, value)

    def describe(self) -> str:
        return (f"float, default {self.default:g}" + self.describe_range()
                + (f", searched in [{self.low:g}, {self.high:g}]" if self.search else ""))

    def tune_domain(self):
        from ray import tune

        return tune.uniform(self.low, self.high)

    def search_record(self) -> dict[str, Any]:
        return {"kind": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogFloat(Float):
    """A scale searched log-uniformly (its search range is positive; its valid range is what it declares)."""

    low: float = 1e-5
    high: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise HparamError(f"bad log search range [{self.low}, {self.high}]")
        self.check_declaration()

    def describe(self) -> str:
        return (f"float, default {self.default:g}" + self.describe_range()
                + (f", searched log-uniformly in [{self.low:g}, {self.high:g}]" if self.search else ""))

    def tune_domain(self):
        from ray import tune

        return tune.loguniform(self.low, self.high)

    def search_record(self) -> dict[str, Any]:
        return {"kind": "log-uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Int(Number):
    low: int = 0
    high: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        self.check_declaration()

    def cast(self, name: str, raw: Any) -> int:
        if isinstance(raw, bool):
            raise HparamError(f"hparam {name!r} takes an integer, got {raw!r}")
        try:
            as_float = float(raw)
        except (TypeError, ValueError):
            raise HparamError(f"hparam {name!r} takes an integer, got {raw!r}") from None
        if not as_float.is_integer():
            raise HparamError(f"hparam {name!r} takes an integer, got {raw!r}")
        return self.check(name, int(as_float))

    def describe(self) -> str:
        return (f"int, default {self.default}" + self.describe_range()
                + (f", searched in [{self.low}, {self.high}]" if self.search else ""))

    def tune_domain(self):
        from ray import tune

        # Tune's randint excludes the upper bound; ours is inclusive.
        return tune.lograndint(self.low, self.high + 1) if self.log else tune.randint(self.low, self.high + 1)

    def search_record(self) -> dict[str, Any]:
        return {"kind": "log-integer" if self.log else "integer", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Choice(Param):
    choices: tuple = ()

    def __post_init__(self) -> None:
        if self.default not in self.choices:
            raise HparamError(f"default {self.default!r} is not among {self.choices}")

    def cast(self, name: str, raw: Any) -> Any:
        for c in self.choices:
            if raw == c or (isinstance(raw, str) and raw == str(c)):
                return c
            if isinstance(c, bool) and isinstance(raw, str) and raw.lower() in ("true", "false"):
                if (raw.lower() == "true") == c:
                    return c
        raise HparamError(f"hparam {name!r} takes one of {list(self.choices)}, got {raw!r}")

    def describe(self) -> str:
        return f"one of {list(self.choices)}, default {self.default!r}" + ("" if self.search else " (not searched)")

    def tune_domain(self):
        from ray import tune

        return tune.choice(list(self.choices))

    def search_record(self) -> dict[str, Any]:
        return {"kind": "choice", "choices": list(self.choices)}


@dataclass(frozen=True)
class Text(Param):
    """A free-form string (e.g. a local file path); never searched."""

    search: bool = False

    def cast(self, name: str, raw: Any) -> str:
        return str(raw)

    def describe(self) -> str:
        return f"text, default {self.default!r}"

    def tune_domain(self):
        return self.default


def Bool(default: bool, search: bool = False) -> Choice:
    """A boolean hparam (a two-way Choice)."""
    return Choice(default, search=search, choices=(False, True))


def resolve(declared: Mapping[str, Param], overrides: Mapping[str, Any] | None = None, owner: str = "") -> dict[str, Any]:
    """Defaults with `overrides` applied; names and types checked against `declared`."""
    values = {name: p.default for name, p in declared.items()}
    for name, raw in (overrides or {}).items():
        if name not in declared:
            where = f" of method {owner!r}" if owner else ""
            raise HparamError(f"unknown hparam {name!r}{where}; valid: {', '.join(sorted(declared))}")
        values[name] = declared[name].cast(name, raw)
    return values


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """Parse `["lr=0.01", "epochs=3"]` (the CLI's `--set`) into a dict of raw strings."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise HparamError(f"--set expects name=value, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def search_space(declared: Mapping[str, Param], fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Ray Tune param space: searched hparams as domains; the rest, and those in `fixed`, as constants."""
    fixed_values = resolve(declared, fixed)
    return {
        name: fixed_values[name] if (name in (fixed or {}) or not p.search) else p.tune_domain()
        for name, p in declared.items()
    }
