"""The natural-shift table and plot on a tidy table with known numbers: harm out of domain where scipy's paired test
says, experts kept on validation that lost to ERM out of domain counted per (run, group), the in/out gap per group."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from noharm.analysis import shift as S
from noharm.analysis.collect import TIDY_COLUMNS
from noharm.analysis.tables import Protocol, to_csv, to_latex, to_markdown, write_table

SEEDS = (0, 1, 2, 3)
TASK = ("adult", "income", "sex")
SPLIT = "shift:far"
# (test, shift) accuracy per group; seeds add small noise of their own.
ERM = {"Female": (0.80, 0.70), "Male": (0.86, 0.78)}
EXPERTS = {"Female": (0.83, 0.62), "Male": (0.85, 0.775)}  # Female: better in domain, far worse out of it
GROUPDRO = {"Female": (0.79, 0.71), "Male": (0.86, 0.79)}


def _noise(*key) -> float:
    return float(np.random.default_rng(abs(hash(key)) % 2**32).normal(0, 0.004))


def _rows(run, stage, method, strategy, candidate, entry, primary, seed, values):
    out = []
    for g, (test, shift) in values.items():
        for split, v in (("test", test), (SPLIT, shift), ("val", test)):
            out.append((run, stage, *TASK, method, strategy, candidate, entry, primary, seed, split, g, "acc",
                        v + _noise(method, candidate, g, split, seed)))
    for split in ("test", SPLIT):
        vals = [r[-1] for r in out if r[11] == split]
        out.append((run, stage, *TASK, method, strategy, candidate, entry, primary, seed, split, "worst", "acc",
                    min(vals)))
    return out


@pytest.fixture(scope="module")
def tidy() -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        rows += _rows(f"erm{seed}", "evaluate", "erm", "", "model", "erm", True, seed, ERM)
        rows += _rows(f"dec{seed}", "evaluate", "decoupled", "", "experts", "decoupled", True, seed, EXPERTS)
        rows += _rows(f"dro{seed}", "evaluate", "groupdro", "", "model", "groupdro", True, seed, GROUPDRO)
        # greedy keeps the Female expert (better on validation) and ERM for Male, on every seed.
        kept = {"Female": EXPERTS["Female"], "Male": ERM["Male"]}
        run = f"greedy{seed}"
        rows += _rows(run, "compose", "decoupled", "greedy", "selected:greedy", "decoupled + greedy", True, seed, kept)
        rows += _rows(run, "compose", "decoupled", "greedy", "erm", "", False, seed, ERM)
        rows += [(run, "compose", *TASK, "decoupled", "greedy", "selected:greedy", "decoupled + greedy", True, seed,
                  "selection", g, "use_expert", float(g == "Female")) for g in ERM]
    # The composed Female values are the expert's, the composed Male values ERM's: same noise keys as theirs.
    frame = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    for g, source in (("Female", "decoupled"), ("Male", "erm")):
        for split in ("test", SPLIT, "val"):
            for seed in SEEDS:
                at = (frame["strategy"] == "greedy") & frame["primary"] & (frame["group"] == g) \
                    & (frame["split"] == split) & (frame["seed"] == seed)
                src = (frame["method"] == source) & (frame["stage"] == "evaluate") & (frame["group"] == g) \
                    & (frame["split"] == split) & (frame["seed"] == seed)
                frame.loc[at, "value"] = frame.loc[src, "value"].to_numpy()
    return frame


def values(tidy, entry, split, group):
    t = tidy[(tidy["entry"] == entry) & (tidy["split"] == split) & (tidy["group"] == group)]
    return t.sort_values("seed")["value"].to_numpy()


def test_harm_out_of_domain_is_scipys_one_sided_paired_test(tidy):
    summary = S.shift_summary(tidy, Protocol())
    row = summary[(summary["entry"] == "decoupled + greedy") & (summary["group"] == "Female")].iloc[0]
    want = st.ttest_rel(values(tidy, "decoupled + greedy", SPLIT, "Female"), values(tidy, "erm", SPLIT, "Female"),
                        alternative="less").pvalue
    assert row["p_value"] == pytest.approx(want) and row["harmed"] and row["shift"] == SPLIT
    assert row["mean"] == pytest.approx(values(tidy, "decoupled + greedy", SPLIT, "Female").mean())
    assert row["test_mean"] - row["mean"] == pytest.approx(row["drop"]) and row["drop"] > 0.19
    assert row["test_diff"] > 0.02  # better than ERM in domain ...
    assert row["diff_mean"] < -0.07  # ... and below it out of domain
    male = summary[(summary["entry"] == "decoupled + greedy") & (summary["group"] == "Male")].iloc[0]
    assert not male["harmed"] and male["diff_mean"] == pytest.approx(0.0)  # ERM's own predictions
    # The report's correction (Holm by default) over every non-ERM real-group test of the table (3 entries x 2 groups).
    tested = summary[~summary["group"].isin(["overall", "worst", "gap"]) & (summary["method"] != "erm")]
    assert tested["p_value"].notna().sum() == 6 and tested["p_adjusted"].notna().sum() == 6
    p = np.sort(tested["p_value"].to_numpy())
    assert tested["p_adjusted"].min() == pytest.approx(min(1.0, 6 * p[0]))
    assert (tested["p_adjusted"] >= tested["p_value"] - 1e-15).all()
    erm = summary[summary["entry"] == "erm"]
    assert erm["p_value"].isna().all() and erm["drop"].notna().all()


def test_experts_kept_on_validation_that_lost_out_of_domain_are_counted_per_run_and_group(tidy):
    kept = S.kept_and_lost(tidy)
    greedy = kept[kept["strategy"] == "greedy"]
    assert len(greedy) == 2 * len(SEEDS)
    assert greedy.loc[greedy["group"] == "Female", "kept"].all() and not greedy.loc[greedy["group"] == "Male", "kept"].any()
    assert greedy["lost"].sum() == len(SEEDS) and greedy["lost_test"].sum() == 0
    rates = S.loss_rates(kept).set_index("strategy")
    assert rates.loc["greedy", ["kept", "lost", "lost_test", "choices"]].tolist() == [4, 4, 0, 8]
    # Clopper-Pearson for 4 of 4: [0.025^(1/4), 1].
    assert rates.loc["greedy", "lost_low"] == pytest.approx(0.025 ** 0.25) and rates.loc["greedy", "lost_high"] == 1
    # Without selection the experts serve every group: Female loses out of domain on every seed, Male on some.
    own = rates.loc[S.NO_SELECTION]
    assert own["kept"] == 8 and own["lost"] >= 4 and own["methods"] == 1  # groupdro is not wrapped


def test_the_table_renders_the_summary_and_the_per_group_detail(tidy, tmp_path):
    doc = S.natural_shift(tidy, Protocol())
    assert not doc.empty and [b.title.split(": ")[-1] for b in doc.blocks] == ["selection out of domain",
                                                                                "accuracy per group"]
    md = to_markdown(doc)
    assert "adult (income) · groups by sex · shift:far" in md
    line = next(l for l in md.splitlines() if l.startswith("| greedy |"))
    assert "| 4/8 | 4/4 (1.00, 0.40–1.00) | 0/4 | 1 / 1 (of 2) |" in line
    detail = next(l for l in md.splitlines() if l.startswith("| decoupled + greedy |"))
    assert detail.split("|")[2].strip().endswith("‡")  # Female out of domain: below ERM after the correction
    assert "\\ddagger" in to_latex(doc)
    bh = S.natural_shift(tidy, Protocol(correction="bh"))
    assert "Benjamini-Hochberg" in bh.caption and "raw / bh (of pairs)" in to_markdown(bh)
    assert "groupdro" not in md.split("accuracy per group")[-1]  # not wrapped: in the CSV only
    data = pd.read_csv(pd.io.common.StringIO(to_csv(doc)), comment="#")
    assert {"p_value", "p_adjusted", "harmed_adj", "drop", "kept_runs", "lost_runs"} <= set(data.columns)
    assert set(data["entry"]) == {"erm", "decoupled", "groupdro", "decoupled + greedy"}
    written = write_table(doc, tmp_path)
    assert sorted(p.name for p in written) == ["shift.csv", "shift.md", "shift.tex"]


def test_no_shift_split_gives_an_empty_table_with_a_note(tidy):
    doc = S.natural_shift(tidy[tidy["split"] != SPLIT])
    assert doc.empty and "no shift:<name> splits" in doc.notes[0]


def test_the_plot_is_written_twice_to_the_same_bytes(tidy, tmp_path):
    summary = S.shift_summary(tidy)
    first = S.shift_plot(summary, TASK, SPLIT, tmp_path / "a")
    second = S.shift_plot(summary, TASK, SPLIT, tmp_path / "b")
    assert [p.name for p in first] == ["shift-adult-income-sex-far.png", "shift-adult-income-sex-far.svg"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    assert S.shift_plot(summary, TASK, "shift:none", tmp_path) == []
    assert not math.isnan(summary["test_diff"].dropna().iloc[0])
