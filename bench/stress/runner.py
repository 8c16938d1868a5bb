"""The stress engine: scenario x severity x repeat -> selection on shifted validation -> harm on shifted test.

Everything is computed from per-sample correctness (argmax == y) of the
method's expert candidate and of pooled ERM, so thousands of repeats need no
model. A block of repeats is a pair of multiplicity arrays [R, N] (see
`bench.stress.scenarios`). Every row falls in a small cell (its group, whether
the expert and ERM are right, and for blind routing its predicted group and
whether that group's expert is right); per-cell sums for all repeats of a
block come from one `analysis.metrics.accuracy_by_group` call on 2-D input,
and every statistic (per-group accuracies, the discordant pairs of `safe`,
blind routing) is a sum of cells. Selection (`bench.stress.selection`) and
scoring then cost a few [R, G] operations per selector.

Selectors: `erm`, `experts`, `greedy`, `ip-gap`, `ip-utility`, `safe`, and
`blind` / `blind:<strategy>`: the strategy's per-group choice (greedy for
plain `blind`), applied on test by each sample's *predicted* group, which
needs routing data (a predicted group and the predicted group's expert score
per sample).

Per (scenario, severity, selector) the summary gives: `harm_rate`, the share of
repeats in which some group's test accuracy is below ERM's by more than
`tolerance` (with a 95% Wilson interval); `max_harm`, the largest such drop
over repeats and groups (0 when none); `gap` and `worst_group`, the mean over
repeats of the selected model's test accuracy gap and worst-group accuracy;
`changed_rate`, the share of repeats whose choice differs from the choice on
the unshifted validation set; plus ERM's own gap and worst group, overall
accuracies, the mean number of experts taken and, for blind selectors, the
routing accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from noharm.analysis.metrics import accuracy_by_group
from noharm.bench.errors import ConfigError
from noharm.bench.stress.scenarios import BLOCK, Scenario, ScenarioSkipped, SplitView, Weights, block_rng
from noharm.bench.stress.selection import CHOOSERS, MAX_ENUMERATE_GROUPS, ValStats, choose
from noharm.methods.selection import SAFE_DELTA

BLIND = "blind"
# Columns of the tidy table, in order (the first ones are the agreed interface).
COLUMNS = ("dataset", "attribute", "method", "seed", "scenario", "severity", "strategy", "harm_rate", "max_harm",
           "gap", "worst_group", "changed_rate", "repeats", "harm_rate_low", "harm_rate_high", "mean_harm",
           "n_experts", "overall", "erm_gap", "erm_worst_group", "erm_overall", "routing_accuracy", "target_group",
           "kind", "tolerance")


@dataclass
class SplitData:
    """Per-sample inputs of one split: labels, true groups, correctness of the expert and of ERM.

    `pred_group` (the router's group) and `routed` (whether the predicted
    group's expert is right) are present when blind routing was scored.
    """

    y: np.ndarray
    group: np.ndarray
    expert: np.ndarray  # bool
    erm: np.ndarray  # bool
    sample_id: np.ndarray
    pred_group: np.ndarray | None = None
    routed: np.ndarray | None = None

    def view(self, n_groups: int, num_classes: int) -> SplitView:
        return SplitView(y=self.y, group=self.group, n_groups=n_groups, num_classes=num_classes)

    @property
    def has_routing(self) -> bool:
        return self.pred_group is not None and self.routed is not None


@dataclass
class StressData:
    """Validation and test inputs of one finished run (method vs its ERM), plus identifying tags."""

    val: SplitData
    test: SplitData
    group_names: tuple[str, ...]
    num_classes: int
    tags: dict[str, object] = field(default_factory=dict)  # dataset, attribute, method, seed

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    @classmethod
    def from_predictions(cls, method_preds: pd.DataFrame, erm_preds: pd.DataFrame, candidate: str | None = None,
                         pred_group: np.ndarray | None = None, routed_proba: np.ndarray | None = None,
                         tags: dict[str, object] | None = None) -> "StressData":
        """Build from a method's and its ERM's predictions tables (checked to describe the same samples).

        `pred_group` (int [N], -1 where unknown) and `routed_proba` ([N, C]) are
        optional routing data aligned with `method_preds`' rows.
        """
        from noharm.bench.compose import ERM_SOURCE, align, choose_candidate, group_ids_to_names, raw_proba

        erm = align(method_preds, erm_preds)
        cand = choose_candidate(method_preds, candidate)
        names = tuple(group_ids_to_names(method_preds))
        pe, pr = raw_proba(method_preds, cand), raw_proba(erm, ERM_SOURCE)
        y = method_preds["y"].to_numpy(np.int64)
        group = method_preds["group_id"].to_numpy(np.int64)
        split = method_preds["split"].to_numpy()
        ids = method_preds["sample_id"].to_numpy()
        if (pred_group is None) != (routed_proba is None):
            raise ConfigError("blind routing needs both the predicted groups and the routed experts' scores")
        if pred_group is not None and (len(pred_group) != len(y) or len(routed_proba) != len(y)):
            raise ConfigError(f"routing data has {len(pred_group)} rows, the predictions {len(y)}")

        def part(name: str) -> SplitData:
            m = split == name
            if not m.any():
                raise ConfigError(f"predictions have no {name} rows; stress tests need validation and test predictions")
            routing = {}
            if pred_group is not None:
                h = np.asarray(pred_group)[m]
                if (h < 0).any() or (h >= len(names)).any():
                    raise ConfigError(f"routing data lacks a predicted group for some {name} rows")
                routing = {"pred_group": h.astype(np.int64), "routed": routed_proba[m].argmax(1) == y[m]}
            return SplitData(y=y[m], group=group[m], expert=pe[m].argmax(1) == y[m], erm=pr[m].argmax(1) == y[m],
                             sample_id=ids[m], **routing)

        return cls(val=part("val"), test=part("test"), group_names=names, num_classes=pr.shape[1], tags=dict(tags or {}))


@dataclass
class StressSettings:
    """How the scenarios are run: repeats, seed, harm tolerance, safe level, selectors."""

    repeats: int = 500
    seed: int = 0
    tolerance: float = 0.005
    delta: float = SAFE_DELTA
    selectors: tuple[str, ...] = ("greedy", "ip-gap", "ip-utility", "safe", BLIND)
    max_enumerate: int = MAX_ENUMERATE_GROUPS

    def validate(self, where: str = "stress settings") -> None:
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"{where}: repeats must be a positive integer, got {self.repeats!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"{where}: tolerance is an accuracy drop in [0, 1), got {self.tolerance!r}")
        if not 0.0 < self.delta < 0.5:
            raise ConfigError(f"{where}: delta (the level of `safe`) must be in (0, 0.5), got {self.delta!r}")
        if not self.selectors:
            raise ConfigError(f"{where}: selectors must name at least one selector")
        for s in self.selectors:
            base_of(s, where)


def base_of(selector: str, where: str = "stress settings") -> tuple[str, bool]:
    """(choosing strategy, whether it is applied blind) of a selector name."""
    blind = selector == BLIND or selector.startswith(f"{BLIND}:")
    base = "greedy" if selector == BLIND else selector.split(":", 1)[1] if blind else selector
    if base not in CHOOSERS:
        raise ConfigError(f"{where}: unknown selector {selector!r}; choose from: {', '.join(CHOOSERS)}, {BLIND}, "
                          f"or {BLIND}:<strategy>")
    return base, blind


def cell_sums(cells: np.ndarray, n_bins: int, weights: Weights | None) -> np.ndarray:
    """Weighted rows per cell for every repeat of a block: [R, n_bins] (R = 1 when `weights` is None).

    Rows outside `weights.rows` count once; the redrawn rows' per-cell sums
    come from `accuracy_by_group` on the [R, M] multiplicities (a per-cell
    mean, times the cell's row count). Multiplicities are integers, so the
    sums are rounded to remove float error.
    """
    whole = np.bincount(cells, minlength=n_bins).astype(np.float64)
    if weights is None:
        return whole[None, :]
    sub = cells[weights.rows]
    unit = np.bincount(sub, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore"):
        means = accuracy_by_group(weights.w, sub, n_bins)
    drawn = np.where(unit > 0, np.rint(means * unit), 0.0)
    return whole[None, :] - unit[None, :] + drawn


def val_cells(split: SplitData, n_groups: int) -> np.ndarray:
    """Cell per validation row: (group, expert right, ERM right), flattened as [G, 2, 2]."""
    return (split.group * 2 + split.expert) * 2 + split.erm


def test_cells(split: SplitData, n_groups: int, blind: bool) -> np.ndarray:
    """Cell per test row: (group, [predicted group,] expert right, ERM right[, routed expert right])."""
    if not blind:
        return val_cells(split, n_groups)
    return (((split.group * n_groups + split.pred_group) * 2 + split.expert) * 2 + split.erm) * 2 + split.routed


def val_stats(split: SplitData, weights: Weights | None, n_groups: int) -> ValStats:
    """Per-repeat validation statistics of the expert and ERM, [R, G] each."""
    s = cell_sums(val_cells(split, n_groups), n_groups * 4, weights).reshape(-1, n_groups, 2, 2)  # [R, G, e, r]
    n = s.sum(axis=(2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return ValStats(n=n, expert=np.where(n > 0, s[:, :, 1, :].sum(axis=2) / n, np.nan),
                        erm=np.where(n > 0, s[:, :, :, 1].sum(axis=2) / n, np.nan), b=s[:, :, 1, 0], c=s[:, :, 0, 1])


@dataclass
class TestStats:
    """Per-repeat test sums: per group [R, G]; per (true, predicted) group [R, G, G] for blind routing."""

    n: np.ndarray
    expert: np.ndarray
    erm: np.ndarray
    routed: np.ndarray | None = None  # rows whose predicted group's expert is right, by (true, predicted)
    erm_cell: np.ndarray | None = None  # rows ERM gets right, by (true, predicted)
    n_cell: np.ndarray | None = None


def test_stats(split: SplitData, weights: Weights | None, n_groups: int, blind: bool) -> TestStats:
    """Per-repeat test sums of the expert, ERM and (when `blind`) the routed experts."""
    g = n_groups
    if not blind:
        s = cell_sums(test_cells(split, g, False), g * 4, weights).reshape(-1, g, 2, 2)  # [R, G, e, r]
        return TestStats(n=s.sum(axis=(2, 3)), expert=s[:, :, 1, :].sum(axis=2), erm=s[:, :, :, 1].sum(axis=2))
    s = cell_sums(test_cells(split, g, True), g * g * 8, weights).reshape(-1, g, g, 2, 2, 2)  # [R, G, H, e, r, t]
    per_group = s.sum(axis=2)  # [R, G, e, r, t]
    return TestStats(n=per_group.sum(axis=(2, 3, 4)), expert=per_group[:, :, 1].sum(axis=(2, 3)),
                     erm=per_group[:, :, :, 1].sum(axis=(2, 3)), routed=s[..., 1].sum(axis=(3, 4)),
                     erm_cell=s[:, :, :, :, 1].sum(axis=(3, 4)), n_cell=s.sum(axis=(3, 4, 5)))


@dataclass
class Accumulator:
    """Per-repeat outcomes of one selector, gathered over blocks."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, **values: np.ndarray) -> None:
        for k, v in values.items():
            self.parts.setdefault(k, []).append(np.asarray(v, dtype=np.float64))

    def get(self, key: str) -> np.ndarray:
        return np.concatenate(self.parts[key])


def _nanmean(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if len(finite) else math.nan


def evaluate_block(vs: ValStats, ts: TestStats, selectors: Sequence[str], unshifted: dict[str, np.ndarray],
                   settings: StressSettings, acc: dict[str, Accumulator]) -> None:
    """Choose on `vs`, score on `ts`, and add every repeat's outcome to `acc` (per selector)."""
    r = max(vs.n.shape[0], ts.n.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        tn = np.broadcast_to(ts.n, (r, ts.n.shape[1]))
        te = np.broadcast_to(np.where(ts.n > 0, ts.expert / ts.n, np.nan), tn.shape)
        tr = np.broadcast_to(np.where(ts.n > 0, ts.erm / ts.n, np.nan), tn.shape)
    present = tn > 0
    erm_gap, erm_worst = _gap_worst(tr)
    erm_overall = np.nansum(tr * tn, axis=1) / tn.sum(axis=1)
    chosen: dict[str, np.ndarray] = {}
    for selector in selectors:
        base, blind = base_of(selector)
        if base not in chosen:
            chosen[base] = np.broadcast_to(choose(base, vs, delta=settings.delta,
                                                  max_enumerate=settings.max_enumerate), tn.shape)
        use = chosen[base]
        routing = np.full(r, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            if blind:
                # Predicted group h takes its expert where use[h]; sum over h per true group g.
                mixed = np.where(use[:, None, :], ts.routed, ts.erm_cell).sum(axis=2)
                comp = np.where(present, np.broadcast_to(mixed, tn.shape) / tn, np.nan)
                diag = np.broadcast_to(np.diagonal(ts.n_cell, axis1=1, axis2=2).sum(axis=1), (r,))
                routing = diag / tn.sum(axis=1)
            else:
                comp = np.where(use, te, tr)
        harm = np.where(present, tr - comp, np.nan)
        worst_harm = np.where(present.any(axis=1), np.nanmax(np.where(present, harm, -np.inf), axis=1), np.nan)
        gap, worst = _gap_worst(comp)
        acc.setdefault(selector, Accumulator()).add(
            harmed=worst_harm > settings.tolerance, harm=np.maximum(worst_harm, 0.0), gap=gap, worst=worst,
            changed=(use != unshifted[base][None, :]).any(axis=1), n_experts=use.sum(axis=1),
            overall=np.nansum(comp * tn, axis=1) / tn.sum(axis=1), erm_gap=erm_gap, erm_worst=erm_worst,
            erm_overall=erm_overall, routing=routing,
        )


def _gap_worst(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(values)
    hi = np.where(finite, values, -np.inf).max(axis=1)
    lo = np.where(finite, values, np.inf).min(axis=1)
    ok = finite.any(axis=1)
    return np.where(ok, hi - lo, np.nan), np.where(ok, lo, np.nan)


def wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(a: Accumulator) -> dict[str, float]:
    harmed = a.get("harmed")
    n = len(harmed)
    low, high = wilson(float(harmed.sum()), n)
    harm = a.get("harm")
    return {
        "harm_rate": float(harmed.mean()), "max_harm": float(np.nanmax(harm)) if np.isfinite(harm).any() else math.nan,
        "gap": _nanmean(a.get("gap")), "worst_group": _nanmean(a.get("worst")),
        "changed_rate": float(a.get("changed").mean()), "repeats": n, "harm_rate_low": low, "harm_rate_high": high,
        "mean_harm": _nanmean(harm), "n_experts": _nanmean(a.get("n_experts")), "overall": _nanmean(a.get("overall")),
        "erm_gap": _nanmean(a.get("erm_gap")), "erm_worst_group": _nanmean(a.get("erm_worst")),
        "erm_overall": _nanmean(a.get("erm_overall")), "routing_accuracy": _nanmean(a.get("routing")),
    }


# test split data for (scenario, severity), or None when it cannot be scored (the scenario is then skipped)
Rescorer = Callable[[Scenario, float], SplitData]


def unshifted_choices(data: StressData, selectors: Sequence[str], settings: StressSettings) -> dict[str, np.ndarray]:
    """Each base strategy's choice [G] on the whole, unshifted validation set."""
    vs = val_stats(data.val, None, data.n_groups)
    return {base: choose(base, vs, delta=settings.delta, max_enumerate=settings.max_enumerate)[0]
            for base in {base_of(s)[0] for s in selectors}}


def run_scenarios(data: StressData, scenarios: Sequence[Scenario], settings: StressSettings,
                  rescore: Rescorer | None = None, log: Callable[[str], None] = lambda msg: None,
                  ) -> tuple[pd.DataFrame, list[str]]:
    """Run every scenario at every severity; returns (tidy table, reasons of skipped scenarios).

    Blind selectors are dropped (with a reason) when `data` has no routing;
    rescoring scenarios are skipped when `rescore` is None.
    """
    settings.validate()
    selectors = list(settings.selectors)
    skipped: list[str] = []
    blind_wanted = [s for s in selectors if base_of(s)[1]]
    if blind_wanted and not (data.val.has_routing and data.test.has_routing):
        skipped.append(f"selectors {', '.join(blind_wanted)}: no blind routing data for this run")
        selectors = [s for s in selectors if not base_of(s)[1]]
    if not selectors:
        return pd.DataFrame(columns=list(COLUMNS)), skipped
    blind = any(base_of(s)[1] for s in selectors)
    unshifted = unshifted_choices(data, selectors, settings)
    rows = []
    for scenario in scenarios:
        try:
            rows += _run_one(data, scenario, settings, selectors, unshifted, blind, rescore, log)
        except ScenarioSkipped as why:
            skipped.append(f"scenario {scenario.name}: {why}")
    return pd.DataFrame(rows, columns=list(COLUMNS)), skipped


def _run_one(data: StressData, scenario: Scenario, settings: StressSettings, selectors: list[str],
             unshifted: dict[str, np.ndarray], blind: bool, rescore: Rescorer | None,
             log: Callable[[str], None]) -> list[dict]:
    G, C = data.n_groups, data.num_classes
    val_view = data.val.view(G, C)
    target = scenario.target_group(val_view, data.group_names)
    rows = []
    for i, severity in enumerate(scenario.severities):
        test = data.test
        if scenario.rescores:
            if rescore is None:
                raise ScenarioSkipped("re-scoring needs the stored models (model.pt) and the dataset")
            test = rescore(scenario, severity)
            if blind and not test.has_routing:
                raise ScenarioSkipped("the re-scored test split has no routing data")
        test_view = test.view(G, C)
        acc: dict[str, Accumulator] = {}
        whole: dict[str, object] = {}  # statistics of a split kept whole, computed once

        def stats_val(w):
            if w is not None:
                return val_stats(data.val, w, G)
            if "val" not in whole:
                whole["val"] = val_stats(data.val, None, G)
            return whole["val"]

        def stats_test(w):
            if w is not None:
                return test_stats(test, w, G, blind)
            if "test" not in whole:
                whole["test"] = test_stats(test, None, G, blind)
            return whole["test"]

        done, block = 0, 0
        while done < settings.repeats:
            rng = block_rng(settings.seed, scenario.name, i, block)
            draw = scenario.draw(val_view, test_view, severity, target, rng, BLOCK)
            if draw.deterministic:
                evaluate_block(stats_val(None), stats_test(None), selectors, unshifted, settings, acc)
                break  # every repeat would be identical: one outcome
            take = min(BLOCK, settings.repeats - done)
            wv = None if draw.val is None else draw.val.head(take)
            wt = None if draw.test is None else draw.test.head(take)
            evaluate_block(stats_val(wv), stats_test(wt), selectors, unshifted, settings, acc)
            done += take
            block += 1
        for selector in selectors:
            rows.append({**_tag_columns(data), "scenario": scenario.name, "severity": float(severity),
                         "strategy": selector, **summarise(acc[selector]), "target_group": data.group_names[target],
                         "kind": scenario.kind, "tolerance": settings.tolerance})
        log(f"{scenario.name} severity {severity:g}: " + ", ".join(
            f"{s} {acc[s].get('harmed').mean():.3f}" for s in selectors) + " harm rate")
    return rows


def _tag_columns(data: StressData) -> dict[str, object]:
    return {k: data.tags.get(k) for k in ("dataset", "attribute", "method", "seed")}


def with_test(data: StressData, test: SplitData) -> StressData:
    """`data` with its test split replaced (e.g. by re-scored, corrupted predictions)."""
    return replace(data, test=test)
