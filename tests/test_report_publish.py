"""What a researcher publishes from `noharm report`: portable files (no path of the machine that made them), a
leaderboard.md that reads at 120 columns, the settings table, the oracle row, and the search record the sweep leaves
for them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_analysis_store import (COMPOSED, SEEDS, TASKS, analysis_report, analysis_store,  # noqa: F401
                                       SEARCH_SPACE, SEARCH_TRIALS)


def _files_mentioning(folder: Path, text: str) -> list[str]:
    needle = text.encode()
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("inside", [True, False], ids=["store-inside-the-project", "store-elsewhere"])
def test_report_files_hold_no_absolute_path_of_this_machine(analysis_store, tmp_path, monkeypatch, inside):
    from noharm.analysis.collect import sqlite_path
    from noharm.bench.cli import main

    uri, _ = analysis_store
    store = sqlite_path(uri)
    project = store.parent.parent if inside else tmp_path / "project"
    project.mkdir(exist_ok=True)
    monkeypatch.chdir(project)
    out = project / "results" / f"report-{inside}"
    assert main(["report", "--experiment", "fixed", "--tracking-uri", uri, "--out", str(out)]) == 0
    for path in (str(store.parent), str(out), str(project), str(tmp_path)):
        assert _files_mentioning(out, path) == [], path
    readme = (out / "README.md").read_text()
    shown = re.search(r"mlflow ui --backend-store-uri (sqlite:///\S+?)`", readme).group(1)
    # The `mlflow ui` line and the regenerate command work from the folder the report was made in.
    assert (project / shown.removeprefix("sqlite:///")).resolve() == store.resolve()
    assert shown.startswith("sqlite:///..") != inside
    command = re.search(r"Regenerate from that folder with `(noharm report [^`]+)`", readme).group(1).split()
    again = project / "results" / "again"
    args = [a if a != command[command.index("--out") + 1] else str(again) for a in command[2:]]
    assert main(["report", *args]) == 0 and (again / "leaderboard.md").read_bytes() == \
        (out / "leaderboard.md").read_bytes()


def test_leaderboard_markdown_reads_at_120_columns_without_links(analysis_report):
    from noharm.analysis.leaderboard import MAX_WIDTH, PAIRS_PER_TABLE, to_markdown

    report, out = analysis_report
    text = (out / "leaderboard.md").read_text()
    assert max(len(line) for line in text.splitlines()) <= MAX_WIDTH
    assert "http" not in text and "](" not in text and "leaderboard.html" in text
    assert "plots/cd-diagram.png" in text and "Friedman test (scipy): chi-square(" in text
    # Many pairs: the per-pair ranks split into tables of PAIRS_PER_TABLE columns, every line still short.
    board, col = report.board, report.collection
    many = [(f"data{i}", "y", "attribute-with-a-long-name") for i in range(3 * PAIRS_PER_TABLE)]
    one = board.cells[board.cells["dataset"] == board.tasks[0][0]]
    cells = pd.concat([one.assign(dataset=d, target=t, attribute=a) for d, t, a in many], ignore_index=True)
    wide = to_markdown(type(board)(**{**board.__dict__, "tasks": many, "cells": cells}), col, "sqlite:///x.db")
    assert max(len(line) for line in wide.splitlines()) <= MAX_WIDTH
    # The longest entry name of the shipped methods, at position 49 with two-digit harm counts, still fits.
    long = board.ranking.assign(entry="fairsde-nce-no-disc + ip-utility", position=49, harmed=12, harmed_raw=14)
    text = to_markdown(type(board)(**{**board.__dict__, "ranking": long}), col, "sqlite:///results/mlflow.db")
    assert max(len(line) for line in text.splitlines()) <= MAX_WIDTH
    assert wide.count("| # | entry | P") == 3


def test_leaderboard_csv_holds_the_ranking_and_its_statistics(analysis_report):
    report, out = analysis_report
    csv = pd.read_csv(out / "leaderboard.csv", comment="#")
    board = report.board
    assert list(csv["entry"]) == list(board.ranking["entry"])
    np.testing.assert_allclose(csv["mean_rank"], board.ranking["mean_rank"])
    test = board.test
    assert f"CD = {test.cd:.2f}" in board.statistics and f"p = {test.p_value:.3g}" in board.statistics
    # The fixture: 2 pairs and 11 entries, so the CD exceeds the widest possible spread of mean ranks, and says so.
    assert (test.n_blocks, test.k) == (2, 11) and test.cd > test.k - 1
    assert "no pair of entries can differ significantly" in board.statistics


def test_settings_table_states_the_chosen_values_ranges_and_the_objective(analysis_report):
    _, out = analysis_report
    data = pd.read_csv(out / "tables" / "settings.csv", comment="#")
    rows = data[(data["dataset"] == "adult") & (data["method"] == "groupdro")].set_index("param")
    best = max(SEARCH_TRIALS, key=lambda t: t[3])
    assert rows.loc["lr", "value"] == best[1] and rows.loc["eta", "value"] == best[2]
    assert rows.loc["lr", "range"] == "log-uniform [1e-05, 0.1]"
    assert rows.loc["eta", "range"] == "log-uniform [0.001, 0.1]"
    assert rows.loc["lr", "objective"] == best[3] and rows.loc["lr", "search_trial"] == best[0]
    assert rows.loc["lr", "search_trials"] == len(SEARCH_TRIALS) and rows.loc["lr", "search_seed"] == 0
    assert set(rows.index) == set(SEARCH_SPACE)
    # Cells without a search say so instead of inventing ranges.
    assert set(data[data["dataset"] == "digits-shift"]["param"]) == {"(nothing searched)"}


def test_oracle_row_is_the_better_of_expert_and_erm_per_group_on_test(analysis_report, analysis_store):
    _, out = analysis_report
    _, truth = analysis_store
    data = pd.read_csv(out / "tables" / "selection.csv", comment="#").set_index(["dataset", "strategy"])
    for task, (dataset, _, _, groups) in enumerate(TASKS):
        worst, gaps, taken = [], [], 0
        for method in COMPOSED:
            expert = np.stack([truth.values[(task, method, "acc", g)] for g in groups], axis=1)
            erm = np.stack([truth.values[(task, "erm", "acc", g)] for g in groups], axis=1)
            best = np.where(expert > erm, expert, erm)
            worst.append(best.min(axis=1).mean())
            gaps.append((best.max(axis=1) - best.min(axis=1)).mean())
            taken += int((expert > erm).sum())
        row = data.loc[(dataset, "oracle (test, upper bound)")]
        assert row["acc_worst"] == pytest.approx(np.mean(worst)) and row["acc_gap"] == pytest.approx(np.mean(gaps))
        assert (row["experts_taken"], row["choices"]) == (taken, len(COMPOSED) * len(SEEDS) * len(groups))
        assert row["groups_below_erm_per_run"] == 0 and row["harmed_pairs"] == 0
        # An upper bound: no strategy's worst group beats it.
        assert row["acc_worst"] >= data.xs(dataset)["acc_worst"].drop("oracle (test, upper bound)").max()


def test_sweep_runs_record_the_search_space_and_the_cell_searched(tmp_path):
    from noharm.bench.sweep import grid
    from noharm.bench.sweep.searcher import search_tags
    from noharm.bench.sweep.suite import load_suite
    from noharm.methods import get_method

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndatasets:\n  - {name: german, attributes: [sex, age], search: [sex]}\n"
                     "methods: [erm, groupdro]\nhparams: {epochs: 2}\nseeds: [0]\nsearch: {trials: 2}\n"
                     "selectors: []\n")
    cells = {c.id: c for c in grid.cells(load_suite(suite))}
    tags = search_tags(cells["german/age/groupdro"])
    assert tags["search_cell"] == "german/sex/groupdro"  # age reuses the settings searched on sex
    space = json.loads(tags["search_space"])
    declared = get_method("groupdro").hparams
    assert "epochs" not in space and set(space) == set(grid.searchable("groupdro", {"epochs": 2}))
    for name, domain in space.items():
        assert domain == declared[name].search_record()
    assert {"kind": "log-uniform", "low": declared["lr"].low, "high": declared["lr"].high} == space["lr"]
    assert search_tags(cells["german/sex/erm"])["search_cell"] == "german/sex/erm"


def test_leaderboard_ranks_the_chosen_entries_on_the_chosen_split(analysis_report):
    from noharm.analysis import leaderboard, tables

    report, _ = analysis_report
    tidy = report.collection.tidy
    test_summary = tables.summarise(tidy)
    methods = leaderboard.build(test_summary, entries="methods")
    assert set(methods.ranking["entry"]) == {"erm", "groupdro", "decoupled", "fairsde", "fairsde-no-disc"}
    greedy = leaderboard.build(test_summary, entries="greedy")
    assert set(greedy.ranking["entry"]) == set(methods.ranking["entry"]) | {f"{m} + greedy" for m in COMPOSED}
    assert greedy.test.k == 8 and greedy.test.cd < report.board.test.cd  # fewer entries, a smaller CD
    # Ranked on validation: the values are validation's (the fixture writes val = test + 0.002).
    on_val = leaderboard.build(tables.summarise(tidy, split="val"), split="val")
    both = on_val.ranking.set_index("entry")["rank_value"] - report.board.ranking.set_index("entry")["rank_value"]
    np.testing.assert_allclose(both.to_numpy(), 0.002, atol=1e-9)
    assert "on the 'val' split" in on_val.rule


def test_an_entry_missing_a_pair_is_listed_apart_not_ranked(analysis_report):
    from noharm.analysis import leaderboard, tables

    report, _ = analysis_report
    summary = tables.summarise(report.collection.tidy)
    gone = (summary["entry"] == "groupdro") & (summary["dataset"] == "digits-shift")
    board = leaderboard.build(summary[~gone])
    assert "groupdro" not in set(board.ranking["entry"]) and board.test.k == report.board.test.k - 1
    assert list(board.unranked.itertuples(index=False, name=None)) == [("groupdro", 1)]
    text = leaderboard.to_markdown(board, report.collection, "sqlite:///x.db")
    assert "Not ranked (missing some dataset/grouping pairs" in text and "groupdro (1 of 2)" in text
