"""`noharm report` end to end on the fixed store: idempotent bytes, plots, leaderboard (also in Chromium),
bad input as one line with exit code 2."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from tests.test_analysis_store import (SEEDS, TASKS, analysis_collection, analysis_report,  # noqa: F401
                                       analysis_store, new_experiment)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file; README.md's regenerate command names the folder, so that name is masked first."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "README.md":
                data = re.sub(rb"--out \S+`", b"--out <folder>`", data)
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def test_second_report_changes_nothing(analysis_store, analysis_report, tmp_path, capsys):
    from noharm.bench.cli import main

    uri, _ = analysis_store
    out = tmp_path / "report"
    assert main(["report", "--experiment", "fixed", "--tracking-uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "30 evaluate, 36 compose, 5 stress run(s)" in printed and "1 FAILED run(s) ignored" in printed
    first = _hashes(out)
    assert main(["report", "--experiment", "fixed", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert _hashes(out) == first
    # The fixture's report (written through the Python API into another folder) has the same bytes.
    assert _hashes(analysis_report[1]) == first
    expected = {"README.md", "summary.csv", "tidy.parquet", "stress.parquet", "leaderboard.html", "leaderboard.md",
                "leaderboard.csv", "plots/cd-diagram.png", "plots/cd-diagram.svg",
                *(f"tables/{t}.{e}" for t in ("comparison", "ablation", "selection", "settings", "stress", "cost")
                  for e in ("md", "tex", "csv")),
                *(f"plots/{kind}-{slug}.{e}" for kind in ("groups", "pareto")
                  for slug in ("adult-income-sex", "digits-shift-binary-style_ink") for e in ("png", "svg")),
                *(f"plots/stress-{s}.{e}" for s in ("val-size", "label-shift") for e in ("png", "svg"))}
    assert set(first) == expected


def test_plots_carry_no_dates_or_versions(analysis_report):
    _, out = analysis_report
    for svg in (out / "plots").glob("*.svg"):
        text = svg.read_text()
        assert "<dc:date>" not in text and "Matplotlib v" not in text, svg.name
        assert "<svg" in text and "</svg>" in text
    for png in (out / "plots").glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in data, png.name


def test_pareto_front():
    from noharm.analysis.plots import pareto_front

    gap = [0.10, 0.05, 0.20, 0.05, 0.02, float("nan")]
    acc = [0.85, 0.80, 0.90, 0.78, 0.70, 0.99]
    # (0.02, .70) < (0.05, .80) < (0.10, .85) < (0.20, .90); (0.05, .78) is dominated by (0.05, .80); NaN skipped.
    assert pareto_front(gap, acc) == [4, 1, 0, 2]
    assert pareto_front([0.1, 0.1], [0.8, 0.8]) == [0, 1]


def test_leaderboard_follows_its_stated_rule(analysis_report, analysis_store):
    from statsmodels.stats.multitest import multipletests

    from tests.test_analysis_tables import _harm_tests

    report, _ = analysis_report
    _, truth = analysis_store
    ranks: dict[str, list[float]] = {}
    for task, (_, _, _, groups) in enumerate(TASKS):
        entries = sorted({e for (t, e, m, _) in truth.values if t == task and m == "auc" and "[" not in e})
        worst = [np.mean(np.min([truth.values[(task, e, "auc", g)] for g in groups], axis=0)) for e in entries]
        for e, r in zip(entries, rankdata(-np.array(worst), method="average")):
            ranks.setdefault(e, []).append(float(r))
    board = report.board.ranking.set_index("entry")
    assert set(board.index) == set(ranks)
    for e, rs in ranks.items():
        assert board.loc[e, "mean_rank"] == pytest.approx(np.mean(rs)), e
    order = list(report.board.ranking["entry"])
    keys = [(board.loc[e, "mean_rank"], board.loc[e, "harmed"], e) for e in order]
    assert keys == sorted(keys)
    # Harmed groups: (pair, group) cells with accuracy or AUC below ERM after Holm over every harm test of the report.
    keys, p, below = _harm_tests(truth)
    holm = multipletests(p, method="holm")[1]
    cells: dict[str, set] = {}
    for (task, entry, metric, group), q, neg in zip(keys, holm, below):
        if q < 0.05 and neg and "[" not in entry:
            cells.setdefault(entry, set()).add((task, group))
    for e in board.index:
        assert board.loc[e, "harmed"] == len(cells.get(e, ())), e
    assert board.loc["groupdro", "harmed"] >= 1 and board.loc["fairsde", "harmed"] == 0
    assert (board["harmed_raw"] >= board["harmed"]).all() and (board["harmed_raw"] > board["harmed"]).any()
    assert "Ranking rule: entries are every method's own row" in report.board.rule


class _Rows(HTMLParser):
    """Rows of table#leaderboard: (data-method, [cell texts], [link hrefs])."""

    def __init__(self):
        super().__init__()
        self.rows, self._in_table, self._row, self._cell = [], False, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "leaderboard":
            self._in_table = True
        elif self._in_table and tag == "tr" and "data-method" in a:
            self._row = (a["data-method"], [], [])
        elif self._row is not None and tag == "td":
            self._cell = []
        elif self._row is not None and tag == "a":
            self._row[2].append(a.get("href", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._in_table = False


def _chromium() -> str:
    found = shutil.which("chromium") or (shutil.which("/usr/bin/chromium"))
    if not found:
        pytest.skip("chromium not installed: the leaderboard page is checked in headless Chromium "
                    "(Debian: apt-get install chromium; .ci/run installs it)")
    return found


def test_leaderboard_page_renders_in_headless_chromium(analysis_report, analysis_store, tmp_path):
    browser = _chromium()
    report, out = analysis_report
    _, truth = analysis_store
    page = (out / "leaderboard.html").resolve()
    proc = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parser = _Rows()
    parser.feed(proc.stdout)
    ranking = report.board.ranking
    assert [r[0] for r in parser.rows] == list(ranking["entry"])
    for (method, cells, links), r in zip(parser.rows, ranking.itertuples(index=False)):
        assert cells[:3] == [str(r.position), r.entry, f"{r.mean_rank:.2f}"]
        assert cells[9:12] == [str(r.harmed), str(r.harmed_raw), str(r.tasks)]
        assert len(links) == len(TASKS) * (1 + len(SEEDS))  # per pair: the value and one link per seed
        for href in links:
            assert re.fullmatch(r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}", href), href
    # The ERM row's links point at the ERM runs the store holds, first seed first.
    erm = next(r for r in parser.rows if r[0] == "erm")
    want = [truth.run_ids[(t, "erm", s)] for t in range(len(TASKS)) for s in (SEEDS[0], *SEEDS)]
    assert [h.rsplit("/", 1)[1] for h in erm[2]] == want
    assert "mlflow ui --backend-store-uri" in proc.stdout


def test_report_without_stress_runs_skips_the_stress_table_with_a_note(analysis_collection, tmp_path, monkeypatch):
    import noharm.analysis.report as report_mod

    empty = dataclasses.replace(analysis_collection, stress=analysis_collection.stress.iloc[0:0])
    monkeypatch.setattr(report_mod, "collect", lambda experiment, uri: empty)
    monkeypatch.chdir(tmp_path)
    rep = report_mod.write_report("fixed", "sqlite:///unused.db", tmp_path / "r")
    assert not (tmp_path / "r" / "tables" / "stress.md").exists()
    assert not list((tmp_path / "r" / "plots").glob("stress-*"))
    readme = (tmp_path / "r" / "README.md").read_text()
    assert "Stress: harm rate against severity: not written (no stress runs in this experiment" in readme
    assert any("no stress runs" in n for n in rep.notes)


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "no MLflow experiment 'nope'"),
    (["--experiment", "fixed", "--alpha", "1.5"], "alpha must be in (0, 1), got 1.5"),
    (["--experiment", "fixed", "--rank-split", "shift:nowhere"],
     "--rank-split 'shift:nowhere': no worst-group AUC on that split in experiment 'fixed'; splits there: test, val"),
    (["--experiment", "fixed", "--rank-entries", "best"],
     "unknown --rank-entries 'best'; choose one of: all, methods, greedy, ip-gap"),
    (["--experiment", "fixed", "--out", "FILE"], "is a file; give a folder for the report"),
    (["--experiment", "fixed", "--tracking-uri", "sqlite:///MISSING/mlflow.db"], "no MLflow store at"),
])
def test_bad_input_is_one_line_and_exit_2(analysis_store, tmp_path, capsys, args, message):
    from noharm.bench.cli import main

    uri, _ = analysis_store
    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("FILE", str(tmp_path / "file.txt")).replace("MISSING", str(tmp_path / "none")) for a in args]
    if "--tracking-uri" not in args:
        args += ["--tracking-uri", uri]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("noharm: error: ") and message in err


def test_experiment_without_finished_evaluate_runs_is_refused(tmp_path, analysis_store):
    from noharm.analysis.collect import AnalysisError
    from noharm.analysis.report import write_report

    client, exp, name = new_experiment(analysis_store[0], "empty")
    run = client.create_run(exp, tags={"noharm.stage": "evaluate", "noharm.method": "erm"})
    client.set_terminated(run.info.run_id, "FAILED")
    with pytest.raises(AnalysisError, match="has no FINISHED evaluate runs \\(1 run\\(s\\), 1 FAILED\\)"):
        write_report(name, analysis_store[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()
