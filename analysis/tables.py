"""Comparison, ablation, selection, stress and cost tables from the tidy table; Markdown, LaTeX and CSV writers.

Every table is a pure function of a `Collection` (analysis.collect) and a
`Protocol` (interval level, harm test and its level). `summarise` is the shared
core: per (dataset, target, attribute, entry, metric, group) the mean over
seeds with a t-interval, ERM's mean on the same seeds, and the one-sided paired
test of "below ERM". Writers are deterministic: same collection, same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from noharm.analysis import stats
from noharm.analysis.collect import Collection, iter_tasks
from noharm.analysis.record import DIAG

TASK = ["dataset", "target", "attribute"]
METRICS = ("acc", "auc")
# Fairness and calibration of the whole split, lower is better (analysis.metrics.fairness_differences, ECE).
FAIRNESS_METRICS = ("dp_diff", "eopp_diff", "eodds_diff", "ece")
LOWER_IS_BETTER = frozenset(FAIRNESS_METRICS)
METRIC_NAMES = {"acc": "Acc", "auc": "AUC", "dp_diff": "DP diff", "eopp_diff": "EOpp diff", "eodds_diff": "EOdds diff",
                "ece": "ECE"}
AGGREGATES = ("overall", "worst", "gap")
SELECTOR_ORDER = ("greedy", "ip-gap", "ip-utility", "safe")
FAIRSDE_FAMILY = ("fairsde", "fairsde-no-disc", "fairsde-no-virt", "fairsde-no-div", "fairsde-nce",
                  "fairsde-nce-no-disc", "fairsde-nce-no-virt")
ERM = "erm"
COST_METRICS = {"wall_seconds": "wall (s)", "fit_seconds": "fit (s)",
                "train_samples_per_second": "train samples/s", "peak_memory_mb": "peak memory (MB)"}
DAGGER = "†"  # below ERM with confidence at level alpha, uncorrected only
DDAGGER = "‡"  # below ERM with confidence after the multiple-testing correction (hence also uncorrected)


@dataclass(frozen=True)
class Protocol:
    """How numbers are summarised: interval level over seeds, harm test and its significance level."""

    level: float = 0.95
    alpha: float = 0.05
    test: str = "t"
    correction: str = "holm"

    def validate(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"interval level must be in (0, 1), got {self.level}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"harm test level alpha must be in (0, 1), got {self.alpha}")
        if self.test not in stats.HARM_TESTS:
            raise ValueError(f"unknown harm test {self.test!r}; choose one of: {', '.join(stats.HARM_TESTS)}")
        stats.check_correction(self.correction)

    @property
    def test_name(self) -> str:
        return {"t": "one-sided paired t-test", "sign-flip": "one-sided exact sign-flip permutation test"}[self.test]

    def protocol_text(self) -> str:
        """The protocol sentence every caption carries."""
        return ("Splits are deterministic per seed and stratified by group and label. Thresholds, early stopping, "
                "hyperparameter search and model selection used the validation split only, never test.")

    @property
    def correction_name(self) -> str:
        """`Holm (family-wise error rate)`."""
        _, name, controls = stats.CORRECTIONS[self.correction]
        return f"{name} ({controls})"

    def harm_text(self, family: int | None = None) -> str:
        """What the harm marks mean; `family`: how many harm tests the correction ran over."""
        size = f"all {family} harm tests of this report" if family is not None else "all harm tests of the report"
        return (f"Harm: a group's test metric below pooled ERM's on the same seed. {DDAGGER} marks a group whose "
                f"metric is below ERM's with confidence after the {self.correction_name} correction over {size} "
                f"(every tabulated entry other than ERM x dataset/grouping x group x accuracy and AUC); {DAGGER} one "
                f"below ERM's only without correction ({self.test_name} over seeds, level {self.alpha:g}).")

    def interval_text(self, seeds: str = "seeds") -> str:
        return f"mean ± half-width of the {self.level:g}-level t-interval over {seeds}"


# ---- table documents and writers ------------------------------------------------------------------
@dataclass
class Cell:
    """A formatted number: text, optional ± half-width, bold (best in column), harm mark."""

    text: str
    pm: str = ""
    bold: bool = False
    mark: str = ""  # DAGGER or DDAGGER (a verdict against ERM), or ""


@dataclass
class Block:
    """One tabular: a title, header labels (with optional spanning groups) and rows of str or Cell."""

    title: str
    columns: list[str]
    rows: list[list[str | Cell]]
    spans: list[tuple[str, int]] = field(default_factory=list)  # LaTeX top header: (label, n columns)
    label: str = ""  # LaTeX \label suffix
    note: str = ""
    text_columns: int = 1  # leading label columns (left-aligned); the rest are numbers
    short_columns: list[str] | None = None  # LaTeX header under `spans` (the span names the metric)


@dataclass
class TableDoc:
    """A table of the report: caption (the protocol), blocks, and the long-form numbers for CSV."""

    name: str
    title: str
    caption: str
    blocks: list[Block]
    data: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.blocks


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def _md_cell(cell: str | Cell) -> str:
    if isinstance(cell, str):
        return _md_escape(cell)
    text = cell.text + (f" ± {cell.pm}" if cell.pm else "")
    if cell.bold:
        text = f"**{text}**"
    return text + cell.mark


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", DAGGER: r"$^\dagger$", DDAGGER: r"$^\ddagger$", "·": r"$\cdot$", "α": r"$\alpha$", "≥": r"$\geq$",
                  "≤": r"$\leq$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table (special characters and the few symbols the tables use)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _tex_cell(cell: str | Cell) -> str:
    if isinstance(cell, str):
        return latex_escape(cell)
    text = cell.text + (f" $\\pm$ {cell.pm}" if cell.pm else "")
    if cell.bold:
        text = f"\\textbf{{{text}}}"
    return text + latex_escape(cell.mark)


def to_markdown(doc: TableDoc) -> str:
    """The table as GitHub Markdown: title, caption, then one pipe table per block."""
    out = [f"# {doc.title}", "", doc.caption, ""]
    for note in doc.notes:
        out += [f"> {note}", ""]
    for block in doc.blocks:
        out += [f"## {block.title}", ""] if block.title else []
        out.append("| " + " | ".join(_md_escape(c) for c in block.columns) + " |")
        out.append("|" + "|".join(":---" if i < block.text_columns else "---:" for i in range(len(block.columns)))
                   + "|")
        for row in block.rows:
            out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        out.append("")
        if block.note:
            out += [block.note, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def to_latex(doc: TableDoc) -> str:
    """The table as LaTeX (booktabs, graphicx): one `table` float per block, the caption on each."""
    out = [f"% {doc.title}: generated by `noharm report`; needs \\usepackage{{booktabs,graphicx}}", ""]
    for block in doc.blocks:
        n = len(block.columns)
        n_text = min(block.text_columns, n)
        caption = (f"{block.title}. " if block.title else "") + doc.caption + (f" {block.note}" if block.note else "")
        out += ["\\begin{table}[ht]", "\\centering", "\\small",
                f"\\caption{{{latex_escape(caption)}}}",
                f"\\label{{tab:{doc.name}{('-' + block.label) if block.label else ''}}}",
                "\\resizebox{\\linewidth}{!}{%",
                f"\\begin{{tabular}}{{{'l' * n_text}{'r' * (n - n_text)}}}", "\\toprule"]
        if block.spans:
            heads, rules, col = [], [], 1
            for label, width in block.spans:
                if label:
                    heads.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(label)}}}")
                    rules.append(f"\\cmidrule(lr){{{col}-{col + width - 1}}}")
                else:
                    heads += [""] * width
                col += width
            out += [" & ".join(heads) + " \\\\", " ".join(rules)]
        header = block.short_columns if block.spans and block.short_columns else block.columns
        out.append(" & ".join(latex_escape(c) for c in header) + " \\\\")
        out.append("\\midrule")
        for row in block.rows:
            out.append(" & ".join(_tex_cell(c) for c in row) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}}", "\\end{table}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def to_csv(doc: TableDoc) -> str:
    """The long-form numbers as CSV, preceded by `# ` caption lines (read with `pd.read_csv(path, comment="#")`)."""
    head = "".join(f"# {line}\n" for line in (doc.title, doc.caption, *doc.notes))
    return head + doc.data.to_csv(index=False, float_format="%.10g", lineterminator="\n")


def write_table(doc: TableDoc, folder: str | Path) -> list[Path]:
    """`<name>.md`, `<name>.tex` and `<name>.csv` in `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        path = folder / f"{doc.name}.{ext}"
        path.write_text(render(doc), encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


# ---- the shared core: per-seed values against ERM ---------------------------------------------------
def task_title(dataset: str, target: str, attribute: str) -> str:
    """`adult (income) · groups by sex`."""
    return f"{dataset}{f' ({target})' if target else ''} · groups by {attribute}"


def task_slug(dataset: str, target: str, attribute: str) -> str:
    """A file- and label-safe name of a task: `adult-income-sex`."""
    raw = "-".join(p for p in (dataset, target, attribute) if p)
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in raw.replace("+", "_")).strip("-").lower()


def group_order(col: Collection) -> dict[tuple[str, str, str], list[str]]:
    """Each task's group names in group-id order (from the runs' `noharm.groups` tag, ERM's first)."""
    import json

    out: dict[tuple[str, str, str], list[str]] = {}
    runs = col.runs[(col.runs["status"] == "FINISHED") & (col.runs["groups"] != "")]
    runs = runs.assign(_erm=(runs["method"] != ERM)).sort_values(["_erm", "start_time", "run"], kind="mergesort")
    for r in runs.itertuples():
        key = (r.dataset, r.target, r.attribute)
        if key not in out:
            try:
                out[key] = [str(g) for g in json.loads(r.groups)]
            except ValueError:
                continue
    for key in iter_tasks(col.tidy):  # runs without the tag: whatever groups the metrics name
        if key not in out:
            t = col.tidy
            names = t[(t["dataset"] == key[0]) & (t["target"] == key[1]) & (t["attribute"] == key[2])
                      & (t["split"] == "test") & ~t["group"].isin(AGGREGATES)]["group"]
            out[key] = sorted(names.unique())
    return out


def entry_sort_key(stage: str, method: str, strategy: str, primary: bool, candidate: str) -> tuple:
    """ERM first, then methods by name; within a method its own row, other candidates, then its selectors."""
    strat = SELECTOR_ORDER.index(strategy) if strategy in SELECTOR_ORDER else len(SELECTOR_ORDER)
    return (method != ERM, method, stage != "evaluate", not primary, strat, strategy, candidate)


def ordered_entries(frame: pd.DataFrame) -> list[str]:
    """The distinct entries of a frame in table order."""
    cols = ["entry", "stage", "method", "strategy", "primary", "candidate"]
    uniq = frame[cols].drop_duplicates("entry")
    keyed = sorted(uniq.itertuples(index=False),
                   key=lambda r: entry_sort_key(r.stage, r.method, r.strategy, bool(r.primary), r.candidate))
    return [r.entry for r in keyed]


def group_positions(frame: pd.DataFrame, keys: Sequence[str]) -> Iterable[tuple[tuple, np.ndarray]]:
    """(key, row positions) of each group of `frame.groupby(keys, sort=True)`, in its order, rows in frame order.

    The groups of `groupby` without a DataFrame per group: slicing one out costs ~100 us, and the report
    iterates over ~14,000 groups (summaries and plot intervals) to use three or four columns of each.
    """
    codes = frame.groupby(keys, sort=True).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    order = order[codes[order] >= 0]  # rows with a missing key belong to no group, as in groupby
    if not len(order):
        return []
    starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
    columns = [frame[k].to_numpy() for k in keys]
    return [(tuple(c[order[a]] for c in columns), order[a:b]) for a, b in zip(starts, [*starts[1:], len(order)])]


def paired_values(tidy: pd.DataFrame, metrics: Sequence[str] = METRICS, split: str = "test") -> pd.DataFrame:
    """Per-seed values of every tabulated entry next to ERM's (`erm`) on the same task, seed, metric and group."""
    t = tidy[(tidy["split"] == split) & (tidy["entry"] != "") & tidy["metric"].isin(metrics)]
    ref = t[(t["stage"] == "evaluate") & (t["method"] == ERM) & t["primary"]]
    ref = ref[[*TASK, "seed", "metric", "group", "value"]].rename(columns={"value": "erm"})
    return t.merge(ref, on=[*TASK, "seed", "metric", "group"], how="left")


REPORT_METRICS = (*METRICS, *FAIRNESS_METRICS)
HARM, FAIRNESS = "harm", "fairness"  # the two families of tests against ERM that the correction runs over


def _family(metric: str, group: str) -> str:
    if metric in METRICS and group not in AGGREGATES:
        return HARM  # a group's accuracy or AUC below ERM's
    if metric in LOWER_IS_BETTER and group == "overall":
        return FAIRNESS  # a parity difference or calibration error above ERM's
    return ""


def summarise(tidy: pd.DataFrame, protocol: Protocol = Protocol(), metrics: Sequence[str] = REPORT_METRICS,
              split: str = "test") -> pd.DataFrame:
    """Per (task, entry, metric, group): n seeds, mean, t-interval, ERM mean, mean difference, and the one-sided
    paired test (over seeds) that the entry is worse than ERM: below it for accuracy and AUC, above it for the
    parity differences and ECE (lower is better).

    Two families of tests, each corrected as a whole with `protocol.correction` (`p_adjusted`): `harm`, a real
    group's accuracy or AUC (not overall / worst / gap) of a non-ERM entry, with the verdicts `harmed`
    (p < alpha, uncorrected) and `harmed_adj` (adjusted p < alpha); and `fairness`, an entry's DP / EOpp / EOdds
    difference or ECE, with `worse` and `worse_adj`. `runs` lists the entry's run ids in seed order.
    """
    protocol.validate()
    pv = paired_values(tidy, metrics, split)
    keys = [*TASK, "entry", "stage", "method", "strategy", "candidate", "primary", "metric", "group"]
    rows = []
    pv = pv.sort_values("seed", kind="mergesort")
    seeds, runs = pv["seed"].to_numpy(), pv["run"].to_numpy()
    value, erm_value = pv["value"].to_numpy(), pv["erm"].to_numpy()
    at_metric, at_group = keys.index("metric"), keys.index("group")
    for key, at in group_positions(pv, keys):
        values, erm = value[at], erm_value[at]
        ci = stats.t_interval(values, protocol.level)
        is_ref = key[keys.index("method")] == ERM and key[keys.index("stage")] == "evaluate"
        sign = -1.0 if key[at_metric] in LOWER_IS_BETTER else 1.0  # "worse" is below ERM after the sign
        p = math.nan if is_ref or np.isnan(erm).all() else stats.harm_p_value(sign * values, sign * erm,
                                                                             protocol.test)
        diff = values - erm
        diff_mean = float(np.nanmean(diff)) if (~np.isnan(diff)).any() else math.nan
        rows.append({**dict(zip(keys, key)), "n": ci.n, "mean": ci.mean, "low": ci.low, "high": ci.high,
                     "half_width": ci.half_width, "erm_mean": float(np.nanmean(erm)) if (~np.isnan(erm)).any()
                     else math.nan, "diff_mean": diff_mean, "p_value": p,
                     "family": "" if is_ref else _family(key[at_metric], key[at_group]), "sign": sign,
                     "seeds": ",".join(str(s) for s in seeds[at]), "runs": ",".join(runs[at])})
    out = pd.DataFrame(rows, columns=[*keys, "n", "mean", "low", "high", "half_width", "erm_mean", "diff_mean",
                                      "p_value", "family", "sign", "seeds", "runs"])
    out.insert(out.columns.get_loc("family"), "p_adjusted", math.nan)
    for family in (HARM, FAIRNESS):
        mask = (out["family"] == family).to_numpy()
        out.loc[mask, "p_adjusted"] = stats.adjust_p_values(out.loc[mask, "p_value"], protocol.correction)
    worse_way = (out["sign"] * out["diff_mean"]) < 0
    for name, family in (("harmed", HARM), ("worse", FAIRNESS)):
        member = (out["family"] == family) & worse_way
        out[name] = member & (out["p_value"] < protocol.alpha)
        out[f"{name}_adj"] = member & (out["p_adjusted"] < protocol.alpha)
    return out.drop(columns="sign")


def family_size(summary: pd.DataFrame, family: str = HARM) -> int:
    """How many tests of `family` the correction ran over (the finite p-values)."""
    return int(((summary["family"] == family) & summary["p_value"].notna()).sum())


def verdict_mark(row) -> str:
    """DDAGGER when worse than ERM after correction, DAGGER when only without it, else ""."""
    if row["harmed_adj"] or row["worse_adj"]:
        return DDAGGER
    return DAGGER if row["harmed"] or row["worse"] else ""


def below_erm_counts(tidy: pd.DataFrame, metric: str = "acc", split: str = "test") -> pd.DataFrame:
    """Per (task, entry, seed, run): how many groups have `metric` on `split` below ERM's on that seed."""
    pv = paired_values(tidy, (metric,), split)
    pv = pv[~pv["group"].isin(AGGREGATES)]
    pv = pv.assign(below=(pv["value"] < pv["erm"]).astype(int), known=pv["erm"].notna())
    out = pv.groupby([*TASK, "entry", "stage", "method", "strategy", "candidate", "primary", "seed", "run"],
                     sort=True).agg(below=("below", "sum"), groups=("group", "nunique"), known=("known", "all"))
    return out.reset_index()


SEED_COLUMNS = [(m, g) for m in METRICS for g in AGGREGATES] + [(m, "overall") for m in FAIRNESS_METRICS]


def per_seed(tidy: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per (task, primary entry, seed): the headline metrics on `split` at full precision (`acc`,
    `acc_worst`, `acc_gap`, `auc`, ..., `dp_diff`, `eopp_diff`, `eodds_diff`, `ece`) and the groups whose accuracy
    is below ERM's on that seed: what a rerun is compared with, number for number."""
    keys = [*TASK, "entry", "method", "strategy", "candidate", "seed"]
    t = tidy[(tidy["split"] == split) & (tidy["entry"] != "") & tidy["primary"]]
    t = t[pd.Series(list(zip(t["metric"], t["group"])), index=t.index).isin(SEED_COLUMNS)]
    if t.empty:
        return pd.DataFrame(columns=keys)
    wide = t.pivot_table(index=keys, columns=["metric", "group"], values="value", aggfunc="first")
    wide.columns = [m if g == "overall" else f"{m}_{g}" for m, g in wide.columns]
    order = [m if g == "overall" else f"{m}_{g}" for m, g in SEED_COLUMNS]
    wide = wide.reindex(columns=[c for c in order if c in wide.columns]).reset_index()
    counts = below_erm_counts(tidy, "acc", split)
    counts = counts[counts["primary"] & counts["known"]][keys + ["below"]].rename(columns={"below": "groups_below_erm"})
    out = wide.merge(counts, on=keys, how="left")
    return out.sort_values(keys, kind="mergesort").reset_index(drop=True)


# ---- formatting helpers --------------------------------------------------------------------------
def fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def number_cell(mean: float, half_width: float, digits: int = 3) -> Cell:
    if mean is None or math.isnan(mean):
        return Cell("–")
    return Cell(fmt(mean, digits), "" if half_width is None or math.isnan(half_width) else fmt(half_width, digits))


def bold_best(rows: list[list[str | Cell]], columns: Iterable[int], lower_better: Iterable[int] = ()) -> None:
    """Bold the best displayed value of each numeric column (ties: all of them); needs two or more values."""
    lower = set(lower_better)
    for j in columns:
        vals = [(i, float(r[j].text)) for i, r in enumerate(rows) if isinstance(r[j], Cell) and r[j].text != "–"]
        if len(vals) < 2:
            continue
        best = (min if j in lower else max)(v for _, v in vals)
        for i, v in vals:
            if v == best:
                rows[i][j].bold = True


def _task_frame(frame: pd.DataFrame, task: tuple[str, str, str]) -> pd.DataFrame:
    return frame[(frame["dataset"] == task[0]) & (frame["target"] == task[1]) & (frame["attribute"] == task[2])]


def _seed_note(n_by_entry: dict[str, int]) -> tuple[int, dict[str, int]]:
    top = max(n_by_entry.values()) if n_by_entry else 0
    return top, {e: n for e, n in n_by_entry.items() if n < top}


def _label(entry: str, short: dict[str, int]) -> str:
    return f"{entry} (n={short[entry]})" if entry in short else entry


def _seeds_text(tidy: pd.DataFrame) -> str:
    seeds = sorted(tidy["seed"].unique()) if len(tidy) else []
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(str(s) for s in seeds)})"


def reference_text(col: Collection) -> str:
    """The ERM reference's recipe for captions: same budget as the methods, searched settings per task."""
    ref = col.reference
    head = ("Reference: pooled ERM on the same seeds, with the epochs and batch size the suite gives every method on "
            "that dataset and its own hyperparameters searched on validation like any method's")
    if ref.empty:
        return head + "."
    parts = []
    for task in iter_tasks(ref):
        part = _task_frame(ref, task)
        values = part.groupby("param", sort=True)["value"].agg(lambda v: "|".join(dict.fromkeys(v)))
        parts.append(f"{task_title(*task)}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return head + "; per task (settings not listed: ERM's declared defaults): " + "; ".join(parts) + "."


def expert_signatures(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per (task, entry): the experts' worst-group validation balanced accuracy (mean over seeds), runs with a
    failure signature (a group predicted as one class or with collapsed features, analysis.diagnostics), runs."""
    d = tidy[(tidy["split"] == DIAG) & (tidy["stage"] == "evaluate") & tidy["primary"]]
    cols = [*TASK, "entry", "bal_acc_worst", "flagged_runs", "runs"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    keys = [*TASK, "entry", "seed"]
    bal = d[d["metric"] == "bal_acc"].groupby(keys)["value"].min().rename("bal_acc_worst")
    flag = d[d["metric"] == "flagged_groups"].groupby(keys)["value"].max().rename("flagged")
    per_run = pd.concat([bal, flag], axis=1).reset_index()
    out = per_run.groupby([*TASK, "entry"], sort=True).agg(
        bal_acc_worst=("bal_acc_worst", "mean"), flagged_runs=("flagged", lambda v: int((v > 0).sum())),
        runs=("seed", "nunique")).reset_index()
    return out[cols]


# ---- 1. comparison ------------------------------------------------------------------------------
def comparison(col: Collection, protocol: Protocol = Protocol(), summary: pd.DataFrame | None = None) -> TableDoc:
    """Per task two blocks: a row per method (its primary candidate) and per selector composition; first overall,
    each group, worst group and gap for accuracy and AUC, harm marked per group; then the parity differences and
    calibration error, marked where worse than ERM's. Best in bold."""
    summary = summarise(col.tidy, protocol) if summary is None else summary
    groups = group_order(col)
    n_fair = family_size(summary, FAIRNESS)
    caption = (f"Test accuracy and AUC, {protocol.interval_text(_seeds_text(col.tidy))}; best per column in "
               f"bold (gap: lowest). {protocol.harm_text(family_size(summary))} Fairness blocks: demographic-parity "
               f"(DP), equal-opportunity (EOpp) and equalized-odds (EOdds) differences between groups and the "
               f"expected calibration error (ECE, 15 bins), lower is better; {DDAGGER} / {DAGGER} mark a value above "
               f"ERM's with confidence with / without the {protocol.correction_name} correction over all {n_fair} "
               f"such tests ({protocol.test_name} over seeds, level {protocol.alpha:g}). {protocol.protocol_text()} "
               f"Rows: each method's primary candidate and each no-harm selector composed with it (method + "
               f"strategy); (n=k): fewer seeds. {reference_text(col)}")
    blocks, notes = [], []
    s = summary[summary["primary"]]
    for task in iter_tasks(s):
        part = _task_frame(s, task)
        gnames = groups.get(task, [])
        entries = ordered_entries(part)
        top, short = _seed_note(part.groupby("entry")["n"].max().to_dict())
        idx = part.set_index(["entry", "metric", "group"])
        spans, kinds = [("", 1)], []
        for m in METRICS:
            cols = ["overall", *gnames, "worst", "gap"]
            spans.append((METRIC_NAMES[m], len(cols)))
            kinds += [(m, c) for c in cols]
        rows = _metric_rows(entries, short, idx, kinds)
        gap_cols = [1 + i for i, (_, g) in enumerate(kinds) if g == "gap"]
        bold_best(rows, range(1, 1 + len(kinds)), lower_better=gap_cols)
        if ERM not in entries:
            notes.append(f"{task_title(*task)}: no ERM runs, so no harm marks")
        md_cols = ["method"] + [f"{METRIC_NAMES[m]}: {g}" for m, g in kinds]
        blocks.append(Block(task_title(*task), md_cols, rows, spans=spans, label=task_slug(*task),
                            short_columns=["method"] + [g for _, g in kinds]))
        fair = [(m, "overall") for m in FAIRNESS_METRICS if (m, "overall") in set(zip(part["metric"], part["group"]))]
        if fair:
            rows = _metric_rows(entries, short, idx, fair)
            bold_best(rows, range(1, 1 + len(fair)), lower_better=range(1, 1 + len(fair)))
            blocks.append(Block(f"{task_title(*task)}: fairness and calibration",
                                ["method", *[METRIC_NAMES[m] for m, _ in fair]], rows,
                                label=f"{task_slug(*task)}-fairness"))
    # Run ids change whenever a store is rebuilt; the CSV keeps what the numbers are, the tidy table the ids.
    data = summary[summary["primary"]].drop(columns=["primary", "runs"]).reset_index(drop=True)
    return TableDoc("comparison", "Comparison against pooled ERM", caption, blocks, data, notes)


def _metric_rows(entries: list[str], short: dict[str, int], idx: pd.DataFrame,
                 kinds: list[tuple[str, str]]) -> list[list[str | Cell]]:
    """A row per entry: its label, then mean ± half-width with the verdict mark of each (metric, group)."""
    rows = []
    for e in entries:
        row: list[str | Cell] = [_label(e, short)]
        for m, g in kinds:
            if (e, m, g) in idx.index:
                r = idx.loc[(e, m, g)]
                cell = number_cell(r["mean"], r["half_width"])
                cell.mark = verdict_mark(r)
            else:
                cell = Cell("–")
            row.append(cell)
        rows.append(row)
    return rows


# ---- 2. ablation ---------------------------------------------------------------------------------
ABLATION_COLUMNS = [("acc", "overall"), ("acc", "worst"), ("acc", "gap"), ("auc", "overall"), ("auc", "worst"),
                    ("auc", "gap")]


def _harm_counts(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (task, entry): groups harmed with confidence in accuracy or AUC, without (`harmed`) and with
    (`harmed_adj`) the multiple-testing correction, and the number of groups."""
    g = summary[summary["metric"].isin(METRICS) & ~summary["group"].isin(AGGREGATES)]
    per_group = g.groupby([*TASK, "entry", "group"])[["harmed", "harmed_adj"]].any().reset_index()
    return per_group.groupby([*TASK, "entry"]).agg(harmed=("harmed", "sum"), harmed_adj=("harmed_adj", "sum"),
                                                   groups=("group", "nunique")).reset_index()


def ablation(col: Collection, protocol: Protocol = Protocol(), summary: pd.DataFrame | None = None,
             family: Sequence[str] = FAIRSDE_FAMILY) -> TableDoc:
    """FairSDE and its variants (each loss off): every candidate (experts without selection, centres, routed)
    and every selector, next to ERM."""
    summary = summarise(col.tidy, protocol) if summary is None else summary
    caption = (f"Ablation of FairSDE: each variant switches one loss off (no-disc: discrimination loss, no-virt: "
               f"virtual-sample loss, no-div: diversity loss; fairsde-nce: the diversity loss in InfoNCE form, a "
               f"variant beyond the authors' code); 'experts' is the per-group experts without selection, "
               f"other rows its other candidates and each no-harm selector. Test metrics, "
               f"{protocol.interval_text(_seeds_text(col.tidy))}; best per column in bold (gap: lowest). 'harmed' "
               f"counts groups whose accuracy or AUC is below ERM's with confidence ({protocol.test_name}, level "
               f"{protocol.alpha:g}), 'harmed {protocol.correction}' those still below after the "
               f"{protocol.correction_name} correction over all {family_size(summary)} harm tests of the report. "
               f"'val bal. acc' is the experts' worst-group validation balanced accuracy (0.5: an expert that "
               f"predicts one class) and 'flagged' the runs in which some group's expert predicted a single class or "
               f"its features collapsed (analysis/diagnostics.py). {protocol.protocol_text()} {reference_text(col)}")
    part_all = summary[summary["method"].isin([*family, ERM]) & ~((summary["method"] == ERM) & ~summary["primary"])]
    part_all = part_all[~((part_all["method"] == ERM) & (part_all["stage"] != "evaluate"))]
    blocks = []
    present = [m for m in family if m in set(summary["method"])]
    if not present:
        return TableDoc("ablation", "Ablation: FairSDE and its variants", caption, [], part_all.iloc[0:0],
                        [f"no runs of {', '.join(family)} in this experiment: no ablation table"])
    harm = _harm_counts(part_all).set_index([*TASK, "entry"])
    signatures = expert_signatures(col.tidy).set_index([*TASK, "entry"])
    for task in iter_tasks(part_all):
        part = _task_frame(part_all, task)
        if not set(part["method"]) & set(family):
            continue
        idx = part.set_index(["entry", "metric", "group"])
        meta = part.drop_duplicates("entry").set_index("entry")
        rows = []
        for e in ordered_entries(part):
            r0 = meta.loc[e]
            model = ("experts" if r0["candidate"] == "experts" else r0["candidate"]) if r0["stage"] == "evaluate" \
                else f"selected: {r0['strategy']}"
            if r0["method"] == ERM:
                model = "pooled (reference)"
            row: list[str | Cell] = [r0["method"], model]
            for m, g in ABLATION_COLUMNS:
                row.append(number_cell(idx.loc[(e, m, g)]["mean"], idx.loc[(e, m, g)]["half_width"])
                           if (e, m, g) in idx.index else Cell("–"))
            h = harm.loc[(*task, e)] if (*task, e) in harm.index else None
            for key in ("harmed", "harmed_adj"):
                row.append(Cell("–" if h is None or r0["method"] == ERM else f"{int(h[key])}/{int(h['groups'])}"))
            sig = signatures.loc[(*task, e)] if (*task, e) in signatures.index else None
            row.append(Cell("–") if sig is None else Cell(fmt(float(sig["bal_acc_worst"]))))
            row.append(Cell("–") if sig is None else Cell(f"{int(sig['flagged_runs'])}/{int(sig['runs'])}"))
            rows.append(row)
        bold_best(rows, range(2, 2 + len(ABLATION_COLUMNS)),
                  lower_better=[2 + i for i, (_, g) in enumerate(ABLATION_COLUMNS) if g == "gap"])
        harm_cols = ["harmed", f"harmed {protocol.correction}"]
        columns = ["variant", "model", *[f"{METRIC_NAMES[m]} {g}" for m, g in ABLATION_COLUMNS], *harm_cols,
                   "val bal. acc", "flagged"]
        blocks.append(Block(task_title(*task), columns, rows,
                            spans=[("", 2), ("Accuracy", 3), ("AUC", 3), ("", 2), ("Experts", 2)],
                            label=task_slug(*task), text_columns=2,
                            short_columns=["variant", "model", *[g for _, g in ABLATION_COLUMNS], *harm_cols,
                                           "val bal. acc", "flagged"]))
    data = part_all[part_all["group"].isin(AGGREGATES) & part_all["metric"].isin(METRICS)].drop(columns=["runs"])
    data = data.reset_index(drop=True)
    return TableDoc("ablation", "Ablation: FairSDE and its variants", caption, blocks, data)


# ---- 3. selection --------------------------------------------------------------------------------
NO_SELECTION = "no selection (experts)"


def experts_taken(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per (task, strategy): (run, group) choices of the compose runs that kept the expert, and all choices."""
    u = tidy[(tidy["split"] == "selection") & (tidy["metric"] == "use_expert") & ~tidy["group"].isin(AGGREGATES)]
    cols = [*TASK, "strategy", "experts_taken", "choices"]
    if u.empty:
        return pd.DataFrame(columns=cols)
    out = u.groupby([*TASK, "strategy"], sort=True)["value"].agg(experts_taken="sum", choices="count")
    return out.reset_index()[cols]


def _taken(taken: pd.DataFrame, task: tuple, row: str) -> dict[str, int]:
    hit = _task_frame(taken, task)
    hit = hit[hit["strategy"] == row]
    return {"experts_taken": int(hit["experts_taken"].sum()), "choices": int(hit["choices"].sum())}


def _flagged(signatures: pd.DataFrame, task: tuple, rows: pd.DataFrame, row: str) -> dict[str, int]:
    """Flagged / total runs of the wrapped methods' experts (only the no-selection row shows them)."""
    if row != NO_SELECTION or signatures.empty:
        return {"flagged_runs": 0, "signature_runs": 0}
    sig = _task_frame(signatures, task)
    sig = sig[sig["entry"].isin(set(rows["entry"]))]
    return {"flagged_runs": int(sig["flagged_runs"].sum()), "signature_runs": int(sig["runs"].sum())}


def selection(col: Collection, protocol: Protocol = Protocol(), summary: pd.DataFrame | None = None) -> TableDoc:
    """Strategies x tasks: test accuracy gap, worst-group accuracy and groups harmed, over every method the
    selectors wrap (their compositions against ERM), next to the same methods without selection and ERM."""
    summary = summarise(col.tidy, protocol) if summary is None else summary
    caption = (f"No-harm selection strategies (rows) on each dataset and grouping (columns): each strategy picks, "
               f"per group, the method's expert or pooled ERM using validation metrics only, never test. Numbers "
               f"are test values, mean over every wrapped method and {_seeds_text(col.tidy)}; "
               f"'{NO_SELECTION}' is the same methods' experts for every group. Groups below ERM: per run, how many "
               f"groups have test accuracy below ERM's on the same seed (mean over runs). Harmed with confidence: "
               f"(method, group) pairs whose accuracy is below ERM's by a {protocol.test_name} over seeds at level "
               f"{protocol.alpha:g}, out of all pairs, without and with the {protocol.correction_name} correction "
               f"over all {family_size(summary)} harm tests of the report. '{ORACLE}': per run and group the better "
               f"of the method's expert and ERM on test (ties: ERM), an upper bound that no decision uses (it reads "
               f"test), showing how much the validation-based choice leaves behind. Flagged experts: runs of the "
               f"wrapped methods in which some group's expert predicted a single class or had collapsed features on validation "
               f"(analysis/diagnostics.py); a selector facing such an expert can only keep ERM for that group. "
               f"{protocol.protocol_text()} {reference_text(col)}")
    s = summary[summary["primary"]]
    composed = s[s["stage"] == "compose"]
    if composed.empty:
        return TableDoc("selection", "No-harm selection", caption, [], s.iloc[0:0],
                        ["no compose runs (selectors) in this experiment: no selection table"])
    counts = below_erm_counts(col.tidy)
    counts = counts[counts["primary"]]
    wrapped = composed[[*TASK, "method"]].drop_duplicates()
    # The strategy of each row: a selector, or the wrapped methods' own experts, or ERM.
    base = s[s["stage"] == "evaluate"].merge(wrapped, on=[*TASK, "method"])
    rows_src = pd.concat([
        s[(s["method"] == ERM) & (s["stage"] == "evaluate")].assign(row="erm (reference)"),
        base.assign(row=NO_SELECTION),
        composed.assign(row=composed["strategy"]),
    ], ignore_index=True)
    cnt = pd.concat([
        counts[(counts["method"] == ERM) & (counts["stage"] == "evaluate")].assign(row="erm (reference)"),
        counts[counts["stage"] == "evaluate"].merge(wrapped, on=[*TASK, "method"]).assign(row=NO_SELECTION),
        counts[counts["stage"] == "compose"].assign(row=counts["strategy"]),
    ], ignore_index=True)
    strategies = sorted(composed["strategy"].unique(),
                        key=lambda x: (SELECTOR_ORDER.index(x) if x in SELECTOR_ORDER else 99, x))
    row_order = ["erm (reference)", NO_SELECTION, *strategies]
    tasks = iter_tasks(rows_src)
    signatures = expert_signatures(col.tidy)
    taken = experts_taken(col.tidy)
    records = []
    for task in tasks:
        rs, cs = _task_frame(rows_src, task), _task_frame(cnt, task)
        for row in row_order:
            r, c = rs[rs["row"] == row], cs[cs["row"] == row]
            if r.empty:
                continue
            gap = r[(r["metric"] == "acc") & (r["group"] == "gap")]
            worst = r[(r["metric"] == "acc") & (r["group"] == "worst")]
            grp = r[(r["metric"] == "acc") & ~r["group"].isin(AGGREGATES)]
            records.append({**dict(zip(TASK, task)), "strategy": row, "methods": int(r["method"].nunique()),
                            "runs": int(len(c)),
                            "acc_gap": float(gap["mean"].mean()) if len(gap) else math.nan,
                            "acc_worst": float(worst["mean"].mean()) if len(worst) else math.nan,
                            "groups_below_erm_per_run": float(c["below"].mean()) if len(c) else math.nan,
                            "harmed_pairs": int(grp["harmed"].sum()), "harmed_pairs_adj": int(grp["harmed_adj"].sum()),
                            "pairs": int(len(grp)), **_flagged(signatures, task, r, row), **_taken(taken, task, row)})
    records += oracle_rows(col.tidy, protocol)
    row_order.append(ORACLE)
    data = pd.DataFrame(records)
    titles = [task_title(*t) for t in tasks]
    blocks = []
    for key, title, digits, lower in (("acc_gap", "Test accuracy gap (lower is better)", 3, True),
                                      ("acc_worst", "Worst-group test accuracy", 3, False),
                                      ("groups_below_erm_per_run", "Groups below ERM per run (test accuracy)", 2,
                                       True),
                                      ("harmed_pairs", "Harmed with confidence, uncorrected ((method, group) "
                                                       "pairs)", 0, True),
                                      ("harmed_pairs_adj", f"Harmed with confidence, {protocol.correction_name} "
                                                           f"corrected ((method, group) pairs)", 0, True),
                                      ("experts_taken", "Experts taken ((run, group) choices where the selector "
                                                        "kept the expert)", 0, False),
                                      ("flagged_runs", "Flagged experts (runs with a group at one class or "
                                                       "collapsed, on validation)", 0, True)):
        rows = []
        for row in row_order:
            line: list[str | Cell] = [row]
            for t in tasks:
                hit = data[(data["strategy"] == row) & (data["dataset"] == t[0]) & (data["target"] == t[1])
                           & (data["attribute"] == t[2])]
                if hit.empty:
                    line.append(Cell("–"))
                elif key in ("harmed_pairs", "harmed_pairs_adj"):
                    line.append(Cell(f"{int(hit.iloc[0][key])}/{int(hit.iloc[0]['pairs'])}"))
                elif key == "experts_taken":
                    n = int(hit.iloc[0]["choices"])
                    line.append(Cell("–" if n == 0 else f"{int(hit.iloc[0]['experts_taken'])}/{n}"))
                elif key == "flagged_runs":
                    runs = hit.iloc[0]["signature_runs"]
                    line.append(Cell("–" if runs == 0 else f"{int(hit.iloc[0]['flagged_runs'])}/{int(runs)}"))
                else:
                    line.append(Cell(fmt(float(hit.iloc[0][key]), digits)))
            if any(isinstance(c, Cell) and c.text != "–" for c in line[1:]):
                rows.append(line)
        if key in ("acc_gap", "acc_worst"):
            contenders = [r for r in rows if r[0] != ORACLE]  # the oracle reads test: no competitor
            bold_best(contenders, range(1, len(titles) + 1), lower_better=range(1, len(titles) + 1) if lower else ())
        blocks.append(Block(title, ["strategy", *titles], rows, label=key.replace("_", "-")))
    return TableDoc("selection", "No-harm selection", caption, blocks, data)


ORACLE = "oracle (test, upper bound)"


def oracle_rows(tidy: pd.DataFrame, protocol: Protocol = Protocol()) -> list[dict]:
    """The selection table's oracle row per task: per compose run and group, the better test accuracy of the wrapped
    method's expert candidate and ERM (both copied into every composition), summarised like the strategies."""
    t = tidy[(tidy["stage"] == "compose") & (tidy["split"] == "test") & (tidy["metric"] == "acc")
             & ~tidy["group"].isin(AGGREGATES) & (tidy["entry"] == "")]
    if t.empty:
        return []
    # Every strategy's composition of a (method, seed) carries the same two copies: one of them is enough.
    t = t.drop_duplicates([*TASK, "method", "seed", "group", "candidate"])
    t = t.assign(kind=np.where(t["candidate"] == ERM, "erm", "expert"))
    wide = t.pivot_table(index=[*TASK, "method", "seed", "group"], columns="kind", values="value").reset_index()
    wide = wide.dropna(subset=["erm", "expert"])
    wide["oracle"] = np.where(wide["expert"] > wide["erm"], wide["expert"], wide["erm"])
    runs = wide.groupby([*TASK, "method", "seed"]).agg(gap=("oracle", lambda v: v.max() - v.min()),
                                                       worst=("oracle", "min"))
    records = []
    for task in iter_tasks(wide):
        w = _task_frame(wide, task)
        r = _task_frame(runs.reset_index(), task)
        per_method = r.groupby("method")[["gap", "worst"]].mean()
        harmed = 0
        for _, pair in w.groupby(["method", "group"]):
            p = stats.harm_p_value(pair["oracle"].to_numpy(), pair["erm"].to_numpy(), protocol.test)
            harmed += int(not math.isnan(p) and p < protocol.alpha and (pair["oracle"] - pair["erm"]).mean() < 0)
        records.append({**dict(zip(TASK, task)), "strategy": ORACLE, "methods": int(w["method"].nunique()),
                        "runs": int(len(r)), "acc_gap": float(per_method["gap"].mean()),
                        "acc_worst": float(per_method["worst"].mean()),
                        "groups_below_erm_per_run": float((w["oracle"] < w["erm"]).groupby(
                            [w["method"], w["seed"]]).sum().mean()),
                        "harmed_pairs": harmed, "harmed_pairs_adj": harmed,
                        "pairs": int(w[["method", "group"]].drop_duplicates().shape[0]),
                        "flagged_runs": 0, "signature_runs": 0,
                        "experts_taken": int((w["expert"] > w["erm"]).sum()), "choices": int(len(w))})
    return records


# ---- 4. stress -----------------------------------------------------------------------------------
def stress(col: Collection) -> TableDoc:
    """Harm rate against severity, per scenario (blocks) and selector (columns), over every stressed run."""
    caption = ("Stress tests of the no-harm selectors under shift between validation and test (scenarios in "
               "bench/stress/scenarios.py). Harm rate: share of repeats in which some group's test accuracy falls "
               "below ERM's by more than the suite's tolerance; mean over every stressed (dataset, grouping, method, "
               "seed) run. Selection uses the (shifted) validation split only.")
    st = col.stress
    if st.empty:
        return TableDoc("stress", "Stress: harm rate against severity", caption, [], st,
                        ["no stress runs in this experiment (run `noharm stress --experiment NAME`): "
                         "no stress table or curves"])
    data = stress_summary(st)
    blocks = []
    for scenario in data["scenario"].unique():
        part = data[data["scenario"] == scenario]
        strategies = list(dict.fromkeys(part["strategy"]))
        rows = []
        for sev in dict.fromkeys(part["severity"]):
            line: list[str | Cell] = [f"{sev:g}"]
            for strat in strategies:
                hit = part[(part["severity"] == sev) & (part["strategy"] == strat)]
                line.append(Cell(fmt(float(hit.iloc[0]["harm_rate"]))) if len(hit) else Cell("–"))
            rows.append(line)
        n = int(part["runs"].max())
        blocks.append(Block(f"{scenario} ({n} run{'s' if n != 1 else ''})", ["severity", *strategies], rows,
                            label=task_slug(scenario, "", "")))
    return TableDoc("stress", "Stress: harm rate against severity", caption, blocks, data)


def stress_summary(st: pd.DataFrame) -> pd.DataFrame:
    """Per (scenario, severity, strategy), in the order the stress runner wrote them: mean harm rate over runs
    with its t-interval, mean and largest harm, mean share of changed choices, runs, repeats."""
    order = st.drop_duplicates(["scenario", "severity", "strategy"])[["scenario", "severity", "strategy"]]
    rows = []
    for r in order.itertuples(index=False):
        part = st[(st["scenario"] == r.scenario) & (st["severity"] == r.severity) & (st["strategy"] == r.strategy)]
        ci = stats.t_interval(part["harm_rate"])
        rows.append({"scenario": r.scenario, "severity": float(r.severity), "strategy": r.strategy,
                     "runs": int(len(part)), "harm_rate": ci.mean, "harm_rate_low": ci.low, "harm_rate_high": ci.high,
                     "max_harm_mean": float(part["max_harm"].mean()), "max_harm_max": float(part["max_harm"].max()),
                     "changed_rate": float(part["changed_rate"].mean()), "repeats": int(part["repeats"].sum())})
    return pd.DataFrame(rows)


# ---- 5. cost -------------------------------------------------------------------------------------
def cost(col: Collection) -> TableDoc:
    """Wall time, fit time, training throughput and peak memory per method (evaluate runs), per dataset."""
    t = col.tidy
    c = t[(t["split"] == "cost") & (t["stage"] == "evaluate") & (t["group"] == "overall")
          & t["metric"].isin(list(COST_METRICS))]
    caption = ("Cost per trial (one evaluate run: fit on train with early stopping on validation, then scoring "
               "every split), mean over groupings and seeds, on the machine the sweep ran on. Peak memory: the "
               "trial process's peak (GPU memory when on a GPU).")
    if c.empty:
        return TableDoc("cost", "Cost per method", caption, [], c, ["no cost metrics in this experiment"])
    agg = c.groupby(["dataset", "method", "metric"])["value"].agg(["mean", "count"]).reset_index()
    runs = c.groupby(["dataset", "method"])["run"].nunique()
    data = agg.pivot_table(index=["dataset", "method"], columns="metric", values="mean").reset_index()
    data.columns.name = None
    data.insert(2, "runs", [int(runs.loc[(d, m)]) for d, m in zip(data["dataset"], data["method"])])
    blocks = []
    for dataset in sorted(data["dataset"].unique()):
        part = data[data["dataset"] == dataset]
        methods = sorted(part["method"], key=lambda m: (m != ERM, m))
        rows = []
        for m in methods:
            r = part[part["method"] == m].iloc[0]
            line: list[str | Cell] = [m, Cell(str(int(r["runs"])))]
            for key in COST_METRICS:
                v = float(r[key]) if key in r.index else math.nan
                digits = 0 if key == "train_samples_per_second" else (2 if key.endswith("seconds") else 1)
                line.append(Cell("–" if math.isnan(v) else f"{v:,.{digits}f}"))
            rows.append(line)
        blocks.append(Block(dataset, ["method", "runs", *COST_METRICS.values()], rows, label=task_slug(dataset, "", "")))
    return TableDoc("cost", "Cost per method", caption, blocks, data)
