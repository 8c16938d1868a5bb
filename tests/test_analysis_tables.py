"""Tables of the fixed store: byte-identical to the golden files, harm marks exactly where scipy says.

Regenerate the golden files after an intended change of the tables:

    NOHARM_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_analysis_tables.py -q

then review `git diff tests/golden/` before committing.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from tests.test_analysis_store import (COMPOSED, SEEDS, TASKS, analysis_collection, analysis_report,  # noqa: F401
                                       analysis_store, stress_rows)

GOLDEN = Path(__file__).parent / "golden" / "analysis"
TABLES = ("comparison", "ablation", "selection", "settings", "stress", "cost")
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def _check_golden(name: str, got: bytes) -> None:
    golden = GOLDEN / name
    if os.environ.get("NOHARM_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(got)
    assert golden.is_file(), f"no golden file {golden}; create it with NOHARM_UPDATE_GOLDEN=1 (see module docstring)"
    want = golden.read_bytes()
    if got != want:
        diff = "".join(difflib.unified_diff(want.decode().splitlines(True), got.decode().splitlines(True),
                                            f"golden/{name}", f"generated/{name}", n=1))
        pytest.fail(f"{name} differs from its golden file (NOHARM_UPDATE_GOLDEN=1 to accept):\n{diff[:4000]}")


@pytest.mark.parametrize("name", [f"{t}.{ext}" for t in TABLES for ext in ("md", "tex", "csv")])
def test_tables_are_byte_identical_to_golden_files(analysis_report, name):
    _, out = analysis_report
    _check_golden(name, (out / "tables" / name).read_bytes())


def test_leaderboard_markdown_matches_golden_apart_from_run_ids(analysis_report):
    _, out = analysis_report
    text = (out / "leaderboard.md").read_text()
    text = RUN_ID.sub("<run>", text)
    text = re.sub(r"sqlite:///\S+?mlflow\.db", "sqlite:///<store>/mlflow.db", text)
    _check_golden("leaderboard.md", text.encode())


def _md_sections(path: Path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{section title: (header, rows)} of a Markdown table file (cells split on unescaped pipes)."""
    out, title = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:]
        elif line.startswith("| ") and title is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if title not in out:
                out[title] = (cells, [])
            else:
                out[title][1].append(cells)
    return out


def _harm_tests(truth):
    """Every harm test of the report (non-ERM entry x task x group x metric, candidates too): keys, scipy's
    one-sided paired t-test p-values, and whether the entry is below ERM on average."""
    keys, p, below = [], [], []
    for (task, entry, metric, group), values in sorted(truth.values.items()):
        if entry == "erm" or metric not in ("acc", "auc"):
            continue
        erm = truth.values[(task, "erm", metric, group)]
        keys.append((task, entry, metric, group))
        # No difference on any seed is no evidence at all (p = 1, analysis.stats.paired_t_test; scipy says NaN).
        p.append(1.0 if np.all(values == erm) else st.ttest_rel(values, erm, alternative="less").pvalue)
        below.append(np.mean(values - erm) < 0)
    return keys, np.array(p), np.array(below)


def _expected_harm(truth, alpha: float = 0.05, correction: str | None = None):
    """{(task, entry, metric, group): harmed?} of the primary entries from scipy's paired t-test on the written
    numbers, corrected over the whole family with statsmodels when `correction` is given."""
    from statsmodels.stats.multitest import multipletests

    keys, p, below = _harm_tests(truth)
    if correction is not None:
        p = multipletests(p, method=correction)[1]
    return {k: bool(q < alpha and b) for k, q, b in zip(keys, p, below) if "[" not in k[1]}


def _marks(path: Path) -> dict[tuple, str]:
    """{(task, entry, metric, group): the cell's last character} of the comparison's per-group columns."""
    sections = _md_sections(path)
    seen = {}
    for task, (dataset, target, attribute, groups) in enumerate(TASKS):
        header, rows = sections[f"{dataset} ({target}) · groups by {attribute}"]
        for row in rows:
            entry = row[0]
            for col, cell in zip(header[1:], row[1:]):
                metric, _, group = col.partition(": ")
                if group in groups and entry != "erm":
                    seen[(task, entry, metric.lower(), group)] = cell[-1]
    return seen


def test_harm_mark_appears_exactly_where_the_paired_test_says(analysis_report, analysis_store):
    _, out = analysis_report
    _, truth = analysis_store
    expected = _expected_harm(truth)
    holm = _expected_harm(truth, correction="holm")
    marks = _marks(out / "tables" / "comparison.md")
    assert {k: m in "†‡" for k, m in marks.items()} == expected  # the raw verdict: either mark
    assert {k: m == "‡" for k, m in marks.items()} == holm  # the corrected one: the double dagger
    # The fixture makes raw and corrected verdicts differ: some groups are below ERM only without the correction.
    assert 0 < sum(holm.values()) < sum(expected.values())
    marked = [k for k, v in expected.items() if v]
    # The store is built so that the check can fail both ways: consistent harm is marked, and a group that is
    # below ERM on average but noisily so is not.
    assert len(marked) >= 6
    below_not_sure = [k for k, v in expected.items() if not v and
                      np.mean(truth.values[k] - truth.values[(k[0], "erm", k[2], k[3])]) < 0]
    assert below_not_sure


def test_other_levels_and_tests_move_the_marks(analysis_collection, analysis_store):
    from noharm.analysis import tables

    _, truth = analysis_store
    def harm_marks(protocol):
        doc = tables.comparison(analysis_collection, protocol)
        marks = [c.mark for b in doc.blocks if not b.title.endswith("calibration") for r in b.rows for c in r[1:]]
        return sum(m != "" for m in marks), sum(m == "‡" for m in marks), tables.to_markdown(doc)

    loose, loose_adj, _ = harm_marks(tables.Protocol(alpha=0.25))
    strict, strict_adj, _ = harm_marks(tables.Protocol(alpha=0.05))
    bh, bh_adj, text = harm_marks(tables.Protocol(alpha=0.05, correction="bh"))
    assert loose == sum(_expected_harm(truth, 0.25).values()) > strict
    assert loose_adj == sum(_expected_harm(truth, 0.25, "holm").values())
    assert bh == strict and bh_adj == sum(_expected_harm(truth, 0.05, "fdr_bh").values()) >= strict_adj
    assert "Benjamini-Hochberg (false discovery rate) correction over all" in text
    # An exact sign-flip test over 3 seeds cannot go below p = 1/8: no group can be marked at 0.05.
    flip, _, text = harm_marks(tables.Protocol(test="sign-flip"))
    assert flip == 0 and "exact sign-flip permutation test" in text


def test_best_value_of_each_column_is_bold(analysis_report):
    _, out = analysis_report
    sections = _md_sections(out / "tables" / "comparison.md")
    for title, lower in (("adult (income) · groups by sex", False),
                         ("adult (income) · groups by sex: fairness and calibration", True)):
        header, rows = sections[title]
        for j, col in enumerate(header[1:], start=1):
            values = [float(re.match(r"\**([0-9.]+)", r[j]).group(1)) for r in rows]
            best = min(values) if col.endswith("gap") or lower else max(values)
            assert [r[j].startswith("**") for r in rows] == [v == best for v in values], (title, col)



def test_selection_table_counts_groups_below_erm(analysis_report, analysis_store):
    _, out = analysis_report
    _, truth = analysis_store
    data = pd.read_csv(out / "tables" / "selection.csv", comment="#")
    for task, (dataset, _, attribute, groups) in enumerate(TASKS):
        below = [sum(truth.values[(task, m, "acc", g)][s] < truth.values[(task, "erm", "acc", g)][s] for g in groups)
                 for m in COMPOSED for s in range(len(SEEDS))]
        row = data[(data["dataset"] == dataset) & (data["attribute"] == attribute)].set_index("strategy")
        assert row.loc["no selection (experts)", "groups_below_erm_per_run"] == pytest.approx(np.mean(below))
        assert row.loc["greedy", "groups_below_erm_per_run"] == 0  # greedy kept ERM wherever the expert lost
        assert row.loc["erm (reference)", "runs"] == len(SEEDS)
        assert row.loc["greedy", "runs"] == len(COMPOSED) * len(SEEDS)
        assert row.loc["no selection (experts)", "pairs"] == len(COMPOSED) * len(groups)


def test_stress_table_is_the_mean_over_stressed_runs(analysis_report):
    _, out = analysis_report
    data = pd.read_csv(out / "tables" / "stress.csv", comment="#")
    rows = pd.concat([stress_rows("fairsde", s, "val-size", (1000.0, 100.0, 20.0)) for s in (0, 1)])
    want = rows.groupby(["severity", "strategy"])["harm_rate"].mean()
    got = data[data["scenario"] == "val-size"].set_index(["severity", "strategy"])["harm_rate"]
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    # Severities keep the suite's order (1000, 100, 20), not a sorted one.
    assert list(dict.fromkeys(data[data["scenario"] == "val-size"]["severity"])) == [1000.0, 100.0, 20.0]


def test_no_stress_runs_gives_no_stress_table_but_a_note(analysis_collection):
    from noharm.analysis import tables

    col = dataclasses.replace(analysis_collection, stress=analysis_collection.stress.iloc[0:0])
    doc = tables.stress(col)
    assert doc.empty and "no stress runs in this experiment" in doc.notes[0]


def test_writers_escape_and_align():
    from noharm.analysis import tables

    assert tables.latex_escape("a_b & 5% #1 {x} ~ ^ ± †") == \
        r"a\_b \& 5\% \#1 \{x\} \textasciitilde{} \textasciicircum{} $\pm$ $^\dagger$"
    doc = tables.TableDoc("t", "T", "cap_tion", [tables.Block("b|c", ["name", "x"], [["a|b", tables.Cell(
        "0.5", "0.1", bold=True, mark="†")]], spans=[("", 1), ("X", 1)], short_columns=["name", "x"])],
        pd.DataFrame({"a": [0.1 + 0.2]}))
    md = tables.to_markdown(doc)
    assert "| a\\|b | **0.5 ± 0.1**† |" in md and "|:---|---:|" in md
    tex = tables.to_latex(doc)
    assert r"\textbf{0.5 $\pm$ 0.1}$^\dagger$" in tex and r"\caption{b|c. cap\_tion}" in tex
    assert r"\multicolumn{1}{c}{X}" in tex and "\\begin{tabular}{lr}" in tex
    csv = tables.to_csv(doc)
    assert csv.splitlines()[:3] == ["# T", "# cap_tion", "a"]
    assert pd.read_csv(io.StringIO(csv), comment="#")["a"].iloc[0] == pytest.approx(0.3)


def test_bad_protocol_is_one_clear_line():
    from noharm.analysis import tables

    with pytest.raises(ValueError, match="harm test level alpha must be in \\(0, 1\\), got 5"):
        tables.Protocol(alpha=5).validate()
    with pytest.raises(ValueError, match="unknown harm test 'wilcoxon'; choose one of: t, sign-flip"):
        tables.Protocol(test="wilcoxon").validate()


def test_comparison_csv_has_no_run_ids_so_it_can_be_golden(analysis_report):
    _, out = analysis_report
    for name in TABLES:
        for ext in ("md", "tex", "csv"):
            assert not RUN_ID.search((out / "tables" / f"{name}.{ext}").read_text()), (name, ext)
