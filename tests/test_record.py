"""The MLflow record is defined once (analysis.record): names round-trip, and no other module spells them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from noharm.analysis import record as R

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("group", ["female", "Black / African American", "a.b", "65+ (old)", "x//y"])
def test_metric_names_round_trip_through_the_sanitiser(group):
    split, cand = "test", R.selected("ip-utility")
    name = R.metric_name(R.metric_key(split, cand, "acc", group))
    group_of = {R.metric_name(group): group}
    assert R.parse_metric(name, group_of) == (split, cand, "acc", group)
    assert R.parse_metric(R.metric_key(split, cand, "auc", "worst"), {}) == (split, cand, "auc", "worst")
    assert R.parse_metric(R.metric_key(split, cand, "acc"), {}) == (split, cand, "acc", "overall")
    assert R.parse_metric("cost/train_seconds", {}) == ("cost", "", "train_seconds", "overall")
    assert R.parse_metric("lr", {}) is None  # not part of the record's metric families


def test_primary_candidate_of_each_stage():
    assert R.primary_candidate(R.COMPOSE, "experts,erm,selected:greedy", "greedy") == "selected:greedy"
    assert R.primary_candidate(R.EVALUATE, "experts,centers", "") == "experts"
    assert R.primary_candidate(R.EVALUATE, "", "") == "model"
    assert R.untag({"noharm.stage": "evaluate", "mlflow.runName": "x"}) == {"stage": "evaluate"}


SPELLINGS = [r"[\"']noharm\.(stage|key|suite|method|dataset|seed|groups|candidates)[\"']", r"f[\"']noharm\.\{",
             r"[\"']selected:[\"{]", r"[\"'](stress|blind|predictions)\.parquet[\"']", r"[\"']diag/", r"[\"']/group:"]


def test_no_module_but_the_record_spells_the_record():
    """Writer and reader take the names from analysis.record; a second spelling would drift."""
    found = []
    for folder in ("bench", "analysis"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "record.py" or "perf" in path.parts:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if any(re.search(p, line) for p in SPELLINGS):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    # The report's own output file is not the MLflow artifact (same name, its own file).
    found = [f for f in found if not f.startswith("analysis/report.py") or '"stress.parquet", col.stress' not in f]
    assert found == []
