"""No-harm selection applied to stored predictions: a method's candidate and ERM, mixed per group.

`compose` is a pure function of two predictions tables (the method's and a
pooled ERM run's, same dataset, attribute and seed): it measures each group's
validation metric under the method's candidate and under ERM, lets each
selection strategy choose per group, and adds one candidate per strategy,
`selected:<strategy>`, whose rows come from the method for the groups that keep
their expert and from ERM for the others (on every split, out-of-domain
`shift:<name>` splits included: the choice made on in-domain validation is
judged there, never made again). ERM's own scores are added as candidate `erm`.
Nothing is retrained.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from noharm.analysis import predictions as P
from noharm.analysis.metrics import accuracy_by_group, group_table
from noharm.analysis.record import SELECTED_PREFIX, SPLITS, scored_splits, selected
from noharm.bench.errors import ConfigError
from noharm.methods.selection import STRATEGIES, SelectionResult, select
from noharm.settings import SELECTION_METRIC

ERM_CANDIDATE = "erm"  # ERM's scores inside the composed table
ERM_SOURCE = "model"  # ERM's candidate in its own table
EXPERT_CANDIDATE = "experts"


def compose(method_preds: pd.DataFrame, erm_preds: pd.DataFrame, strategies: Sequence[str],
            metric: str = SELECTION_METRIC.default, candidate: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The method's predictions extended with `erm` and one `selected:<strategy>` candidate per strategy.

    `metric` ("accuracy" or "auc") is what the selection compares per group on
    validation. `candidate` is the method's candidate composed with ERM
    (default: `experts` when the table has it, else its first candidate).
    Returns (predictions, report): the report maps each strategy to a
    JSON-able dict with the choice per group, the solver status, the
    validation and test metric of the expert, ERM and the selected model per
    group, and a per-group no-harm flag on validation, test and every shift split.
    """
    if isinstance(strategies, str):
        strategies = [strategies]
    SELECTION_METRIC.check(metric, ConfigError)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown selection strateg{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}; "
                          f"choose from: {', '.join(STRATEGIES)}")
    erm = align(method_preds, erm_preds)
    cand = choose_candidate(method_preds, candidate)
    if ERM_SOURCE not in P.candidates(erm):
        raise ConfigError(f"ERM predictions lack candidate {ERM_SOURCE!r}; have: {', '.join(P.candidates(erm))}")
    names = group_ids_to_names(method_preds)

    raw_method, raw_erm = raw_proba(method_preds, cand), raw_proba(erm, ERM_SOURCE)
    y = method_preds["y"].to_numpy()
    gid = method_preds["group_id"].to_numpy()
    split = method_preds["split"].to_numpy()
    val = split == "val"
    measure = {s: split == s for s in scored_splits([*SPLITS, *np.unique(split)])}  # val, test, shift:<name>...
    expert_m = {s: per_group_metric(y[m], raw_method[m], gid[m], names, metric) for s, m in measure.items()}
    erm_m = {s: per_group_metric(y[m], raw_erm[m], gid[m], names, metric) for s, m in measure.items()}
    n_val = np.bincount(gid[val], minlength=len(names))
    # A group without validation rows has NaN metrics and keeps ERM; weight 1 only satisfies select's check.
    sizes = np.maximum(n_val, 1)

    new_scores: dict[str, np.ndarray] = {ERM_CANDIDATE: raw_erm}
    report: dict[str, Any] = {}
    for strategy in strategies:
        result = select(expert_m["val"], erm_m["val"], sizes, strategy, metric=metric)
        use_row = np.asarray(result.use_expert, dtype=bool)[gid]
        mixed = np.where(use_row[:, None], raw_method, raw_erm)
        new_scores[selected(strategy)] = mixed
        chosen = {s: per_group_metric(y[m], mixed[m], gid[m], names, metric) for s, m in measure.items()}
        report[strategy] = strategy_report(result, cand, metric, names, n_val, expert_m, erm_m, chosen)

    base = method_preds[list(P.KEY_COLUMNS)].reset_index(drop=True)
    added = P.build(base, new_scores).drop(columns=list(P.KEY_COLUMNS))
    # Composing again replaces earlier `erm` / `selected:*` columns of the same names.
    kept = method_preds.drop(columns=[c for c in method_preds.columns if c in added.columns]).reset_index(drop=True)
    return pd.concat([kept, added], axis=1), report


def align(method_preds: pd.DataFrame, erm_preds: pd.DataFrame) -> pd.DataFrame:
    """ERM's rows in the method's row order, after checking both describe the same samples.

    Raises ConfigError naming what differs: the samples, their split (another
    seed), their labels (another dataset or target) or their groups (another
    attribute).
    """
    for label, df in (("method", method_preds), ("ERM", erm_preds)):
        missing = [c for c in P.KEY_COLUMNS if c not in df.columns]
        if missing:
            raise ConfigError(f"{label} predictions lack columns {missing}; expected the analysis.predictions format")
        if df["sample_id"].duplicated().any():
            dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
            raise ConfigError(f"{label} predictions repeat sample_id {_show(dup)}; each sample must appear once")
    # ERM may hold more rows (its training split stored, or an older run): only the method's rows are used.
    if len(method_preds) > len(erm_preds):
        raise ConfigError(f"ERM predictions have {len(erm_preds)} rows, the method's {len(method_preds)}: "
                          "they are for another dataset, attribute or seed")
    ids = method_preds["sample_id"].to_numpy()
    if not np.array_equal(ids, erm_preds["sample_id"].to_numpy()):
        indexed = erm_preds.set_index("sample_id")
        absent = pd.Index(ids).difference(indexed.index)
        if len(absent):
            raise ConfigError(f"ERM predictions lack {len(absent)} of the method's samples (e.g. sample_id {_show(absent[0])}): "
                              "they are for another dataset or subset")
        erm_preds = indexed.loc[ids].reset_index()
    erm_preds = erm_preds.reset_index(drop=True)
    checks = (("split", "another split/seed"), ("y", "another dataset/target (labels differ)"),
              ("group", "another attribute (groups differ)"), ("group_id", "another attribute (group ids differ)"))
    for col, meaning in checks:
        a, b = method_preds[col].to_numpy(), erm_preds[col].to_numpy()
        differ = np.flatnonzero(a != b)
        if len(differ):
            i = differ[0]
            raise ConfigError(f"ERM predictions are for {meaning}: {col} differs on {len(differ)} of {len(a)} rows "
                              f"(e.g. sample_id {_show(ids[i])}: {_show(a[i])} vs ERM {_show(b[i])})")
    return erm_preds


def choose_candidate(preds: pd.DataFrame, candidate: str | None) -> str:
    """The candidate to compose: the one asked for, else `experts` if present, else the first."""
    own = [c for c in P.candidates(preds) if c != ERM_CANDIDATE and not c.startswith(SELECTED_PREFIX)]
    if not own:
        raise ConfigError("method predictions hold no candidate to compose")
    if candidate is None:
        return EXPERT_CANDIDATE if EXPERT_CANDIDATE in own else own[0]
    if candidate not in own:
        raise ConfigError(f"no candidate {candidate!r} in the method's predictions; have: {', '.join(own)}")
    return candidate


def group_ids_to_names(preds: pd.DataFrame) -> list[str]:
    """Group names indexed by group id (ids must be 0..G-1)."""
    names = P.group_names(preds)
    ids = np.sort(preds["group_id"].unique())
    if not np.array_equal(ids, np.arange(len(ids))) or len(names) != len(ids):
        raise ConfigError(f"group ids must be 0..G-1 with one name each, got ids {ids.tolist()[:10]} for names {names[:10]}")
    return names


def raw_proba(preds: pd.DataFrame, candidate: str) -> np.ndarray:
    """The candidate's stored probability columns as they are (float64 [N, C]), class order."""
    prefix = f"{P.PROBA_PREFIX}{candidate}/"
    cols = sorted((c for c in preds.columns if c.startswith(prefix) and c[len(prefix):].isdigit()),
                  key=lambda c: int(c[len(prefix):]))
    if not cols:
        raise ConfigError(f"no candidate {candidate!r} in predictions; have: {', '.join(P.candidates(preds))}")
    return preds[cols].to_numpy(dtype=np.float64)


def per_group_metric(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, names: list[str], metric: str) -> np.ndarray:
    """[G] accuracy or AUC per group; NaN for a group without rows (or, for AUC, with one class)."""
    proba = proba / proba.sum(axis=1, keepdims=True)  # float32 storage rounding
    if metric == "accuracy":
        return accuracy_by_group(proba.argmax(axis=1) == y, groups, len(names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class groups: NaN AUC, which keeps ERM
        table = group_table(y, proba, groups, names)
    return table.loc[names, "auc"].to_numpy(dtype=np.float64)


def strategy_report(result: SelectionResult, candidate: str, metric: str, names: list[str], n_val: np.ndarray,
                    expert_m: dict[str, np.ndarray], erm_m: dict[str, np.ndarray],
                    chosen: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON-able summary of one strategy's choice (NaN written as None)."""
    use = np.asarray(result.use_expert, dtype=bool)

    def per_group(values) -> dict[str, float | None]:
        return {n: _num(v) for n, v in zip(names, values)}

    return {
        "candidate": candidate,
        "metric": metric,
        "status": result.status,
        "use_expert": {n: bool(u) for n, u in zip(names, use)},
        "n_experts": int(use.sum()),
        "val_gap": _num(result.gap),
        "val_utility": _num(result.utility),
        "n_val": {n: int(k) for n, k in zip(names, n_val)},
        **{split: {"expert": per_group(expert_m[split]), "erm": per_group(erm_m[split]),
                   "selected": per_group(chosen[split])} for split in chosen},
        "no_harm": {split: {n: no_harm(u, s, e) for n, u, s, e in zip(names, use, chosen[split], erm_m[split])}
                    for split in chosen},
    }


def no_harm(use_expert: bool, selected: float, erm: float) -> bool | None:
    """True when the selected model is no worse than ERM for the group; None when that cannot be told.

    A group that keeps ERM has ERM's very predictions, so it is unharmed even
    where its metric is undefined.
    """
    if not use_expert:
        return True
    if math.isnan(selected) or math.isnan(erm):
        return None
    return bool(selected >= erm)


def _num(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _show(v: Any) -> str:
    """repr of a plain Python value (numpy scalars shown as 3, 'val', not np.int64(3))."""
    return repr(v.item() if isinstance(v, np.generic) else v)
