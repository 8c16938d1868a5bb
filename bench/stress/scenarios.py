"""Shift scenarios between validation and test, acting on stored predictions by reweighting samples.

A repeat of a scenario is a pair of integer multiplicities, one per validation
row and one per test row ([R, N] for R repeats, stored as `Weights`: only the
redrawn rows, every other row counting once): 0 drops a row, 1 keeps it,
k > 1 counts it k times (only when drawing with replacement). Each
scenario partitions a split into strata (groups, or (group, class) cells),
sets a target count per stratum from the severity, and draws that many rows:

- without replacement (`replace: false`, the default): the changed strata are
  random subsets of their rows and everything else is kept whole, so a
  severity that changes nothing gives one deterministic repeat;
- with replacement (`replace: true`): every stratum of both splits is drawn
  with replacement at its target size (untouched ones at their own size), so
  the repeats also carry the sampling noise of validation and test.

Scenarios (`kind`, what `severity` means):

- `val-group-fraction`: validation rows of the target group kept at fraction
  f of their number (round(f * n)); f in (0, 1].
- `val-size`: n validation rows per group (at most all of a group's rows
  without replacement); n a positive integer.
- `label-shift`: in `split` (default test), the target group's share of class
  `label` (default 1) moves by +severity (negative: down), clipped to [0, 1];
  the other classes keep their relative shares.
- `test-group-mix`: the target group makes up a share s in (0, 1) of test;
  the other groups keep their relative shares.
- `corruption`: the test images under `corruption` at severity 0..5 (0 =
  clean); no reweighting, the runner re-scores the stored models instead.

The target group (`group`) defaults to the smallest group on validation.
Randomness: repeats come in blocks of `BLOCK`; block b of severity index i of
a scenario draws from `SeedSequence([seed, crc32(name), i, b])`, so repeat r is
the same whatever the total number of repeats.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from noharm.bench.stress.corruptions import CORRUPTIONS, SEVERITIES as CORRUPTION_SEVERITIES, parameter
from noharm.bench.errors import ConfigError

BLOCK = 64  # repeats per random block


class ScenarioSkipped(Exception):
    """A scenario that cannot act on this run (e.g. image corruptions on tabular data); the message says why."""


@dataclass(frozen=True)
class SplitView:
    """What a scenario sees of one split: labels and group ids per row."""

    y: np.ndarray  # int [N]
    group: np.ndarray  # int [N] in 0..n_groups-1
    n_groups: int
    num_classes: int

    def counts(self, by: str) -> np.ndarray:
        """Rows per group [G] (`by="group"`) or per (group, class) cell [G, C] (`by="cell"`)."""
        if by == "group":
            return np.bincount(self.group, minlength=self.n_groups)
        cell = self.group * self.num_classes + self.y
        return np.bincount(cell, minlength=self.n_groups * self.num_classes).reshape(self.n_groups, self.num_classes)

    def strata(self, by: str) -> np.ndarray:
        """Stratum id per row, matching the flattened layout of `counts(by)`."""
        return self.group if by == "group" else self.group * self.num_classes + self.y

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Weights:
    """Multiplicities of one split for a block of repeats: `w[r, j]` for row `rows[j]`, 1 for every other row.

    Only the rows a scenario redraws are stored, so a shift of one group
    costs in proportion to that group, not to the split.
    """

    rows: np.ndarray  # int [M], row positions in the split
    w: np.ndarray  # float [R, M]

    @property
    def repeats(self) -> int:
        return self.w.shape[0]

    def dense(self, n_rows: int) -> np.ndarray:
        """The full [R, n_rows] multiplicities."""
        out = np.ones((self.repeats, n_rows))
        out[:, self.rows] = self.w
        return out

    def head(self, r: int) -> "Weights":
        """The first r repeats."""
        return Weights(rows=self.rows, w=self.w[:r])


@dataclass
class Draw:
    """Multiplicities of one block of repeats per split; None for a split kept whole."""

    val: Weights | None
    test: Weights | None

    @property
    def deterministic(self) -> bool:
        return self.val is None and self.test is None


@dataclass(frozen=True)
class Plan:
    """Target counts per stratum for each split (None: kept whole), and how strata are formed."""

    val: np.ndarray | None = None
    test: np.ndarray | None = None
    by: str = "group"


SCENARIOS: dict[str, type["Scenario"]] = {}


def register_scenario(kind: str):
    """Class decorator adding a scenario under `kind`."""

    def deco(cls):
        if kind in SCENARIOS and SCENARIOS[kind] is not cls:
            raise ValueError(f"scenario kind {kind!r} registered twice")
        cls.kind = kind
        SCENARIOS[kind] = cls
        return cls

    return deco


@dataclass(frozen=True)
class Scenario:
    """One seeded shift with a list of severities. Subclasses implement `plan`."""

    name: str
    severities: tuple[float, ...]
    replace: bool = False
    group: str | None = None  # target group name; None: the smallest on validation
    options: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = ""
    default_severities: ClassVar[tuple[float, ...]] = ()
    option_names: ClassVar[tuple[str, ...]] = ()
    rescores: ClassVar[bool] = False  # the runner re-scores models for this scenario

    def check_severity(self, severity: float) -> None:
        """Raise ConfigError on a severity this scenario cannot use."""

    def plan(self, val: SplitView, test: SplitView, severity: float, target: int) -> Plan:
        raise NotImplementedError

    def target_group(self, val: SplitView, group_names: tuple[str, ...]) -> int:
        """Id of the group the scenario shifts: the named one, else the smallest on validation."""
        if self.group is None:
            counts = val.counts("group")
            return int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        if self.group not in group_names:
            raise ScenarioSkipped(f"scenario {self.name!r}: group {self.group!r} is not a group of this run "
                                  f"({', '.join(group_names)})")
        return group_names.index(self.group)

    def draw(self, val: SplitView, test: SplitView, severity: float, target: int, rng: np.random.Generator,
             repeats: int) -> Draw:
        """Multiplicities of `repeats` repeats at `severity`, shifting group `target`."""
        plan = self.plan(val, test, severity, target)
        out = []
        for view, targets in ((val, plan.val), (test, plan.test)):
            full = view.counts(plan.by).ravel()
            if targets is None:
                targets = full
            targets = np.asarray(targets).ravel()
            if not self.replace and np.array_equal(targets, full):
                out.append(None)  # kept whole: unit weights, no randomness
                continue
            out.append(draw_strata(rng, view.strata(plan.by), targets, repeats, self.replace))
        return Draw(val=out[0], test=out[1])


def draw_strata(rng: np.random.Generator, strata: np.ndarray, targets: np.ndarray, repeats: int,
                replace: bool) -> Weights:
    """Multiplicities of `repeats` repeats: `targets[s]` rows of stratum s, with or without replacement.

    Without replacement, strata whose target equals their size are kept whole
    (not stored); a target larger than its stratum is an error (the
    scenarios cap their targets). With replacement every stratum is drawn.
    """
    order = np.argsort(strata, kind="stable")
    bounds = np.searchsorted(strata[order], np.arange(len(targets) + 1))
    rows_parts, w_parts = [], []
    for s, m in enumerate(targets):
        rows = order[bounds[s]:bounds[s + 1]]
        n, m = len(rows), int(m)
        if m > 0 and n == 0:
            raise ValueError(f"stratum {s} has no rows to draw {m} from")
        if not replace and m > n:
            raise ValueError(f"cannot draw {m} of {n} rows without replacement")
        if n == 0 or (not replace and m == n):
            continue  # nothing to draw, or kept whole
        if m == 0:
            w = np.zeros((repeats, n))
        elif replace:
            idx = rng.integers(0, n, size=(repeats, m))
            flat = (idx + n * np.arange(repeats)[:, None]).ravel()
            w = np.bincount(flat, minlength=repeats * n).reshape(repeats, n).astype(np.float64)
        else:
            # A uniform random m-subset per repeat: the m smallest of n uniform keys (O(n) partition).
            keys = rng.random((repeats, n))
            kth = np.partition(keys, m - 1, axis=1)[:, m - 1:m]
            w = (keys <= kth).astype(np.float64)
        rows_parts.append(rows)
        w_parts.append(w)
    if not rows_parts:
        return Weights(rows=np.zeros(0, np.int64), w=np.zeros((repeats, 0)))
    return Weights(rows=np.concatenate(rows_parts), w=np.concatenate(w_parts, axis=1))


def block_rng(seed: int, name: str, severity_index: int, block: int) -> np.random.Generator:
    """The generator of one block of repeats (see the module docstring)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), severity_index, block]))


def _round(x) -> np.ndarray:
    # Half away from zero, so targets do not depend on numpy's banker's rounding.
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


@register_scenario("val-group-fraction")
class ValGroupFraction(Scenario):
    """Validation rows of one group subsampled to a fraction f."""

    default_severities = (1.0, 0.5, 0.25, 0.1, 0.05)

    def check_severity(self, severity: float) -> None:
        if not 0.0 < severity <= 1.0:
            raise ConfigError(f"scenario {self.name!r}: severity is the kept fraction of the group's validation rows, "
                              f"in (0, 1]; got {severity}")

    def plan(self, val, test, severity, target):
        counts = val.counts("group").copy()
        counts[target] = min(counts[target], _round(severity * counts[target]))
        return Plan(val=counts)


@register_scenario("val-size")
class ValSize(Scenario):
    """n validation rows per group."""

    default_severities = (1000, 300, 100, 50, 20)

    def check_severity(self, severity: float) -> None:
        if severity < 1 or severity != int(severity):
            raise ConfigError(f"scenario {self.name!r}: severity is validation rows per group, a positive integer; "
                              f"got {severity}")

    def plan(self, val, test, severity, target):
        counts = val.counts("group")
        n = int(severity)
        return Plan(val=np.full_like(counts, n) if self.replace else np.minimum(counts, n))


@register_scenario("label-shift")
class LabelShift(Scenario):
    """One group's prior of class `label` moved by +severity in `split` (test by default)."""

    default_severities = (0.0, 0.1, 0.2, 0.3)
    option_names = ("split", "label")

    @property
    def split(self) -> str:
        return self.options.get("split", "test")

    @property
    def label(self) -> int:
        return int(self.options.get("label", 1))

    def check_severity(self, severity: float) -> None:
        if not -1.0 < severity < 1.0:
            raise ConfigError(f"scenario {self.name!r}: severity is a change of a class share, in (-1, 1); got {severity}")

    def plan(self, val, test, severity, target):
        view = val if self.split == "val" else test
        if not 0 <= self.label < view.num_classes:
            raise ScenarioSkipped(f"scenario {self.name!r}: label {self.label} is not a class (0..{view.num_classes - 1})")
        cells = view.counts("cell")
        targets = cells.copy()
        targets[target] = shifted_counts(cells[target], self.label, severity, self.replace)
        return Plan(val=targets, by="cell") if self.split == "val" else Plan(test=targets, by="cell")


def shifted_prior(counts: np.ndarray, label: int, severity: float) -> np.ndarray:
    """Class shares of one group after moving class `label`'s share by `severity` (clipped to [0, 1]).

    The other classes share the rest in their original proportions; classes
    with no rows stay at 0 (nothing to draw them from).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return np.zeros_like(counts)
    prior = counts / total
    others = counts.copy()
    others[label] = 0.0
    q_label = float(np.clip(prior[label] + severity, 0.0, 1.0))
    if counts[label] == 0:
        q_label = 0.0  # cannot raise a class that has no rows
    if others.sum() == 0:
        q_label = 1.0  # nothing else to draw
    q = others / others.sum() * (1.0 - q_label) if others.sum() > 0 else np.zeros_like(counts)
    q[label] = q_label
    return q


def shifted_counts(counts: np.ndarray, label: int, severity: float, replace: bool) -> np.ndarray:
    """Per-class target counts of one group realising `shifted_prior`.

    With replacement the group keeps its size. Without, the group is as large
    as its rows allow: M = min over classes of n_c / q_c.
    """
    counts = np.asarray(counts, dtype=np.int64)
    q = shifted_prior(counts, label, severity)
    if replace:
        return _round(q * counts.sum())
    used = q > 0
    size = min(int(counts.sum()), int(math.floor(np.min(counts[used] / q[used]) + 1e-9))) if used.any() else 0
    return np.minimum(counts, _round(q * size))


@register_scenario("test-group-mix")
class TestGroupMix(Scenario):
    """Test group proportions changed: the target group makes up a share s of test."""

    default_severities = (0.05, 0.1, 0.25, 0.5, 0.75)

    def check_severity(self, severity: float) -> None:
        if not 0.0 < severity < 1.0:
            raise ConfigError(f"scenario {self.name!r}: severity is the target group's share of test, in (0, 1); "
                              f"got {severity}")

    def plan(self, val, test, severity, target):
        return Plan(test=mixed_counts(test.counts("group"), target, severity, self.replace))


def mixed_counts(counts: np.ndarray, target: int, share: float, replace: bool) -> np.ndarray:
    """Per-group target counts giving group `target` a share `share`, the others their relative shares."""
    counts = np.asarray(counts, dtype=np.int64)
    n_t, rest = int(counts[target]), int(counts.sum() - counts[target])
    if n_t == 0 or rest == 0:
        raise ScenarioSkipped("test-group-mix needs rows of the target group and of some other group in test")
    size = int(counts.sum()) if replace else int(math.floor(min(n_t / share, rest / (1 - share)) + 1e-9))
    m_t = int(_round(share * size))
    out = _round(counts * (size - m_t) / rest)
    out[target] = m_t
    return out if replace else np.minimum(out, counts)


@register_scenario("corruption")
class Corruption(Scenario):
    """Test images under one corruption at severity 0..5; the models are re-scored (images only)."""

    default_severities = (0, *CORRUPTION_SEVERITIES)
    option_names = ("corruption",)
    rescores = True

    @property
    def corruption(self) -> str:
        return self.options["corruption"]

    def check_severity(self, severity: float) -> None:
        if severity != int(severity):
            raise ConfigError(f"scenario {self.name!r}: corruption severity must be an integer 0..5, got {severity}")
        parameter(self.corruption, int(severity))

    def plan(self, val, test, severity, target):
        return Plan()  # no reweighting: the shift is in the re-scored test predictions


def make_scenarios(spec: dict[str, Any], where: str) -> list[Scenario]:
    """Scenarios from one suite entry (a `corruption` entry with a list `corruptions` gives one per corruption).

    Raises ConfigError naming `where` (e.g. "stress.yaml: scenarios[2]") on unknown keys or values.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a scenario is a mapping with at least `kind`, got {spec!r}")
    kind = spec.get("kind")
    if kind not in SCENARIOS:
        raise ConfigError(f"{where}: unknown scenario kind {kind!r}; choose one of: {', '.join(SCENARIOS)}")
    cls = SCENARIOS[kind]
    allowed = {"kind", "name", "severities", "replace", "group", *cls.option_names}
    if kind == "corruption":
        allowed.add("corruptions")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for scenario {kind!r}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    severities = spec.get("severities", cls.default_severities)
    if not isinstance(severities, (list, tuple)) or not severities or \
            not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in severities):
        raise ConfigError(f"{where}: severities must be a non-empty list of numbers, got {severities!r}")
    replace = spec.get("replace", False)
    if not isinstance(replace, bool):
        raise ConfigError(f"{where}: replace must be true or false, got {replace!r}")
    group = spec.get("group")
    if group is not None and not isinstance(group, str):
        raise ConfigError(f"{where}: group must be a group name (a string), got {group!r}")
    options = {k: spec[k] for k in cls.option_names if k in spec}
    if kind == "label-shift":
        if options.get("split", "test") not in ("val", "test"):
            raise ConfigError(f"{where}: label-shift split must be val or test, got {options['split']!r}")
        if not isinstance(options.get("label", 1), int) or options.get("label", 1) < 0:
            raise ConfigError(f"{where}: label must be a class index (an integer >= 0), got {options['label']!r}")
    variants: list[tuple[str, dict[str, Any]]]
    if kind == "corruption":
        names = spec.get("corruptions", [options.get("corruption")] if "corruption" in options else list(CORRUPTIONS))
        if isinstance(names, str):
            names = [names]
        bad = [n for n in names if n not in CORRUPTIONS]
        if bad or not names:
            raise ConfigError(f"{where}: unknown corruption(s) {bad or names}; choose from: {', '.join(CORRUPTIONS)}")
        base = spec.get("name", "corruption")
        variants = [(f"{base}-{n}", {**options, "corruption": n}) for n in names]
    else:
        variants = [(spec.get("name", kind), options)]
    out = []
    for name, opts in variants:
        scenario = cls(name=str(name), severities=tuple(float(s) for s in severities), replace=replace, group=group,
                       options=opts)
        for s in scenario.severities:
            scenario.check_severity(s)
        out.append(scenario)
    return out
