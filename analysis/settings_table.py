"""The settings table: per dataset, grouping and method, the value each searched hyperparameter took, the range the
search drew it from, and the validation objective the search reached with it (on which seed and trial).

Read from the FINISHED search and evaluate runs (`Collection.trials` and `.params`): an evaluate run's params are the
settings it ran with; its `noharm.search_space` tag names the searched hyperparameters with their domains and its
`noharm.search_cell` tag the cell whose search chose them (another attribute's when a suite searches one attribute
per dataset). The search run that reached the objective is the best FINISHED search run of that cell holding the same
values (highest objective, ties to the lowest trial number: the sweep's own rule). Runs made before noharm recorded
those tags still get a table: the searched names are then the params that vary across the cell's search runs, and the
range says it was not recorded.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from noharm.analysis.collect import Collection
from noharm.analysis.tables import ERM, TASK, Block, Cell, TableDoc, task_slug

COLUMNS = ("dataset", "target", "attribute", "method", "param", "value", "range", "objective_metric", "objective",
           "search_seed", "search_trial", "search_trials", "searched_on")
NOT_RECORDED = "not recorded"
NOT_SEARCHED = "(nothing searched)"


def range_text(domain: dict | None) -> str:
    """`log-uniform [1e-05, 0.1]`, `integer [1, 8]`, `one of adamw, sgd` from a `noharm.search_space` domain."""
    if not domain:
        return NOT_RECORDED
    kind = domain.get("kind", "")
    if kind == "choice":
        return "one of " + ", ".join(str(c) for c in domain.get("choices", []))
    return f"{kind} [{domain.get('low'):g}, {domain.get('high'):g}]"


def value_text(value: str) -> str:
    """A param as logged (a string): numbers to 4 significant digits, the rest as they are."""
    try:
        number = float(value)
    except ValueError:
        return value
    if value.strip().lower() in ("true", "false") or not math.isfinite(number):
        return value
    return f"{number:.4g}"


def _space(text: str) -> dict | None:
    try:
        space = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return space if isinstance(space, dict) else None


def chosen_settings(col: Collection) -> pd.DataFrame:
    """One row per (dataset, target, attribute, method, searched hyperparameter) (COLUMNS); a method without a
    search gets one row with param NOT_SEARCHED."""
    trials, params = col.trials, col.params
    if trials.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    by_run = {run: dict(zip(p["param"], p["value"])) for run, p in params.groupby("run", sort=False)}
    evaluate = trials[trials["stage"] == "evaluate"].sort_values(["seed", "start_time", "run"], kind="mergesort")
    search = trials[trials["stage"] == "search"]
    rows = []
    for (dataset, target, attribute, method), runs in evaluate.groupby([*TASK, "method"], sort=True):
        first = runs.iloc[0]
        values = by_run.get(first["run"], {})
        space = _space(first["search_space"])
        mine = search[(search["dataset"] == dataset) & (search["target"] == target) & (search["method"] == method)]
        if first["search_cell"]:
            source = first["search_cell"].split("/")[1]
        elif (mine["attribute"] == attribute).any() or mine.empty:
            source = attribute
        else:
            others = sorted(mine["attribute"].unique())
            source = others[0] if len(others) == 1 else attribute
        cell = mine[mine["attribute"] == source]
        if space is not None:
            names = sorted(space)
        else:  # no tag: the params the cell's search runs varied
            names = sorted(k for k in {k for r in cell["run"] for k in by_run.get(r, {})}
                           if len({by_run.get(r, {}).get(k) for r in cell["run"]}) > 1)
        head = {"dataset": dataset, "target": target, "attribute": attribute, "method": method,
                "objective_metric": values.get("trial.objective", ""), "searched_on": source if names else ""}
        best = _best_search_run(cell, by_run, {k: values.get(k) for k in names}) if names else None
        found = {"objective": math.nan, "search_seed": None, "search_trial": None,
                 "search_trials": int(cell["search_trial"].nunique()) if names else 0}
        if best is not None:
            found.update(objective=float(best["objective"]), search_seed=int(best["seed"]),
                         search_trial=None if pd.isna(best["search_trial"]) else int(best["search_trial"]))
        if not names:
            rows.append({**head, "param": NOT_SEARCHED, "value": "", "range": "", **found})
        for name in names:
            rows.append({**head, "param": name, "value": values.get(name, ""),
                         "range": range_text((space or {}).get(name)), **found})
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    return out.astype({"search_seed": "Int64", "search_trial": "Int64", "search_trials": "int64"})


def _best_search_run(cell: pd.DataFrame, by_run: dict, chosen: dict):
    """The cell's search run with the chosen values and the highest objective (ties: lowest trial number)."""
    same = [r for r in cell.itertuples(index=False)
            if all(by_run.get(r.run, {}).get(k) == v for k, v in chosen.items())]
    if not same:
        return None
    best = max(same, key=lambda r: (r.objective if not math.isnan(r.objective) else -math.inf,
                                    -(r.search_trial if r.search_trial is not None and not pd.isna(r.search_trial)
                                      else math.inf)))
    return best._asdict()


def settings(col: Collection) -> TableDoc:
    """The settings table: a block per dataset, a row per (searched attribute, method, searched hyperparameter)."""
    data = chosen_settings(col)
    caption = ("Chosen settings: per dataset and method, the value of each searched hyperparameter, the range the "
               "search drew it from (Optuna's TPE over the method's declared space; trial 0 runs the declared "
               "defaults), and the validation objective the search reached with it, on the search seed (higher is "
               "better; gaps negated). The search ran on the attribute in 'searched on'; 'used for' lists every "
               "grouping that ran with these settings. Settings not listed are fixed by the suite, the dataset's "
               "declared budget or the method's defaults (MLflow params of each run). Chosen on validation only, "
               "never test.")
    if data.empty:
        return TableDoc("settings", "Chosen settings", caption, [], data,
                        ["no FINISHED search or evaluate runs with params: no settings table"])
    blocks = []
    for (dataset, target), part in data.groupby(["dataset", "target"], sort=True):
        rows: list[list[str | Cell]] = []
        keyed = part.assign(_erm=part["method"] != ERM).sort_values(["_erm", "method", "searched_on", "param"],
                                                                     kind="mergesort")
        for (method, source), cell in keyed.groupby(["method", "searched_on"], sort=False):
            used = ", ".join(sorted(cell["attribute"].unique(), key=lambda a: (a != source, a)))
            first = cell[cell["attribute"] == (source or cell["attribute"].iloc[0])]
            first = first if len(first) else cell
            for i, r in enumerate(first.drop_duplicates("param").itertuples(index=False)):
                if i == 0:
                    objective = "–" if math.isnan(r.objective) else f"{r.objective:.4f}"
                    where = ("–" if pd.isna(r.search_seed) else
                             f"seed {r.search_seed}, trial {'?' if pd.isna(r.search_trial) else r.search_trial} "
                             f"of {r.search_trials}")
                    lead = [method, source or "–", used]
                else:
                    objective, where, lead = "", "", ["", "", ""]
                rows.append([*lead, r.param, Cell(value_text(str(r.value)) if r.value != "" else "–"),
                             r.range or "–", Cell(objective), Cell(where)])
        metric = next((m for m in part["objective_metric"] if m), "objective")
        title = f"{dataset}{f' ({target})' if target else ''}"
        blocks.append(Block(title, ["method", "searched on", "used for", "setting", "chosen", "search range",
                                    metric, "search"], rows, label=task_slug(dataset, target, ""), text_columns=6))
    notes = []
    if (data["range"] == NOT_RECORDED).any():
        notes.append("search ranges not recorded: these runs predate the noharm.search_space tag; the settings listed "
                     "are the params the search varied")
    return TableDoc("settings", "Chosen settings", caption, blocks, data, notes)
