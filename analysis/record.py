"""The MLflow record of a noharm run, defined once.

The writer (`noharm.bench`: trials, compositions, stress runs) and the reader (`noharm.analysis.collect`,
the sweep's own table) both take the record's names from here: the tag prefix, the stage names, how a
metric is named, the `selected:` candidate prefix, and the artifacts with their columns. Change the
format here and both sides follow.

Metric names: `<split>/<candidate>/<metric>` for the whole split, `.../<metric>/group:<group>` per group,
`.../<metric>/worst` and `.../<metric>/gap` over groups; `diag/<candidate>/...` for the failure
signatures of experts; `cost/...` and `selection/...` describe the run. Group names inside metric names
pass through `metric_name` (MLflow's character set). `<split>` is `val`, `test`, or an out-of-domain
`shift:<name>` split (natural shift: scored like test, read by no decision), e.g. `shift:thin/experts/acc/gap`.
"""

from __future__ import annotations

import re
from typing import Mapping

TAG = "noharm."  # every tag noharm writes starts with this

# Stages: what a run is. A sweep's searches, its evaluations, compositions with a no-harm selector,
# and stress runs (`noharm stress`) re-scoring a finished evaluation under shift.
SEARCH, EVALUATE, COMPOSE, STRESS = "search", "evaluate", "compose", "stress"
SWEEP_STAGES = (SEARCH, EVALUATE, COMPOSE)
TABLE_STAGES = (EVALUATE, COMPOSE)  # the runs tables are built from

SPLITS = ("val", "test")  # the in-domain splits a run stores and scores
# Out-of-domain splits, `shift:<name>` (names: letters, digits, `_ . -`); every run scores each one the dataset
# holds. The datasets write the same prefix (noharm.datasets.base.SHIFT_PREFIX; tests/test_record.py ties them).
SHIFT_PREFIX = "shift:"
DIAG = "diag"  # metric head of the experts' failure signatures (analysis.diagnostics)
RUN_HEADS = ("cost", "selection")  # metric heads that describe the run, not a candidate
GROUP_MARK = "/group:"
AGGREGATES = ("worst", "gap")

SELECTED_PREFIX = "selected:"  # candidate of a composition: `selected:<strategy>`

# The search behind a run's settings (tags of search and evaluate runs, after TAG; read by the report's settings
# table). SEARCH_SPACE_TAG: JSON {name: domain} of the searched hyperparameters, each domain
# {"kind": "uniform" | "log-uniform" | "integer" | "log-integer" | "choice", "low", "high"} or
# {"kind": "choice", "choices": [...]}; SEARCH_CELL_TAG: `dataset/attribute/method` of the cell whose search chose
# them (another attribute's when a suite searches one attribute per dataset); SEARCH_TRIAL_TAG: a search run's
# trial number. OBJECTIVE_METRIC: the run's validation objective, higher is better.
SEARCH_SPACE_TAG, SEARCH_CELL_TAG, SEARCH_TRIAL_TAG = "search_space", "search_cell", "search_trial"
OBJECTIVE_METRIC = "objective"

# Artifacts of an evaluate / compose run, and of a stress run.
PREDICTIONS_ARTIFACT = "predictions.parquet"
CONFIG_ARTIFACT = "config.json"
MODEL_ARTIFACT = "model.pt"
STRESS_ARTIFACT = "stress.parquet"
BLIND_ARTIFACT = "blind.parquet"
BLIND_SCENARIO = "blind-routing"  # scenario tag of the stress run holding blind.parquet
# Columns every stress.parquet must hold (the stress runner writes more; the report reads these).
STRESS_COLUMNS = ("dataset", "attribute", "method", "seed", "scenario", "severity", "strategy", "harm_rate",
                  "max_harm", "gap", "worst_group", "changed_rate", "repeats")
BLIND_COLUMNS = ("dataset", "attribute", "method", "seed", "strategy", "group", "n", "routing_accuracy", "blind", "erm",
                 "harm", "harmed", "split")

# MLflow accepts letters, digits, `_ - . : /` and spaces in metric names.
_FORBIDDEN = re.compile(r"[^\w.\- :/]")


def untag(tags: Mapping[str, str]) -> dict[str, str]:
    """A run's noharm tags without the prefix (other tags dropped)."""
    return {k.removeprefix(TAG): v for k, v in tags.items() if k.startswith(TAG)}


def is_shift(split: str) -> bool:
    """True for an out-of-domain split, `shift:<name>`."""
    return isinstance(split, str) and split.startswith(SHIFT_PREFIX) and len(split) > len(SHIFT_PREFIX)


def shift_split(name: str) -> str:
    """The split of the out-of-domain domain `name`: `shift:<name>`."""
    return f"{SHIFT_PREFIX}{name}"


def shift_domain(split: str) -> str:
    """The domain name of a shift split (`shift:thin` -> `thin`)."""
    return split.removeprefix(SHIFT_PREFIX)


def is_scored(split: str) -> bool:
    """True for a split whose metrics are `<split>/<candidate>/...`: val, test or a shift split."""
    return split in SPLITS or is_shift(split)


def scored_splits(splits) -> list[str]:
    """The scored splits among `splits`, in record order: val, test, then the shift splits sorted."""
    present = set(splits)
    return [s for s in SPLITS if s in present] + sorted(s for s in present if is_shift(s))


def selected(strategy: str) -> str:
    """The candidate name of a composition with `strategy`."""
    return f"{SELECTED_PREFIX}{strategy}"


def metric_name(name: str) -> str:
    """`name` made acceptable to MLflow: every character outside letters, digits, `_ - . : /` and
    space becomes `_`, and path segments MLflow would normalise away (`.`, `..`, empty) too."""
    parts = _FORBIDDEN.sub("_", name).split("/")
    return "/".join("_" if p in ("", ".", "..") else p for p in parts)


def metric_key(split: str, candidate: str, metric: str, group: str | None = None) -> str:
    """The metric name of `metric` of `candidate` on `split`, per group when `group` is given
    (`worst`/`gap` are aggregates over groups, not groups)."""
    if group is None:
        return f"{split}/{candidate}/{metric}"
    if group in AGGREGATES:
        return f"{split}/{candidate}/{metric}/{group}"
    return f"{split}/{candidate}/{metric}{GROUP_MARK}{group}"


def parse_metric(name: str, group_of: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    """(split, candidate, metric, group) of an MLflow metric name, or None for names the tables ignore.

    `group_of` maps a sanitised group fragment back to the group's real name (from the run's
    `noharm.groups` tag); unknown fragments are kept as they are. `group` is `overall` for the whole
    split, `worst`/`gap` for the aggregates.
    """
    head, _, rest = name.partition("/")
    if is_scored(head) or head == DIAG:
        candidate, _, rest = rest.partition("/")
        if not candidate or not rest:
            return None
        split = head
    elif head in RUN_HEADS:
        split, candidate = head, ""
    else:
        return None
    if GROUP_MARK in rest:
        metric, _, fragment = rest.partition(GROUP_MARK)
        return split, candidate, metric, group_of.get(fragment, fragment)
    for agg in AGGREGATES:
        if rest.endswith(f"/{agg}"):
            return split, candidate, rest[: -len(agg) - 1], agg
    return split, candidate, rest, "overall"


def primary_candidate(stage: str, candidates: str, strategy: str) -> str:
    """The candidate a run stands for: the selected one of a composition, else the first declared one."""
    if stage == COMPOSE:
        return selected(strategy)
    first = candidates.split(",")[0].strip()
    return first or "model"
