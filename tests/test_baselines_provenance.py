"""Every reviewed baseline declares the reference code read and its departures; the CLI and docs/baselines.md show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from noharm.bench.cli import main
from noharm.methods import get_method
from noharm.methods.provenance import Provenance

REVIEWED = ("fscl", "gapreg", "dfr", "fin", "groupdro", "resample", "reweight", "fairmixup", "laftr", "adv-debias")
DOC = Path(__file__).resolve().parents[1] / "docs" / "baselines.md"


def doc_rows() -> dict[str, str]:
    """The rows of docs/baselines.md's first table (method | paper | reference | departures) by method name."""
    rows = {}
    for line in DOC.read_text().split("\n## ")[0].splitlines():
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
    return rows


@pytest.mark.parametrize("name", REVIEWED)
def test_declares_reference_and_departures(name):
    cls = get_method(name)
    assert issubclass(cls, Provenance)
    assert cls.reference and cls.departures
    summary = cls.summary()
    assert summary["reference"] == cls.reference and summary["departures"] == list(cls.departures)


@pytest.mark.parametrize("name", REVIEWED)
def test_docs_table_row_matches_the_code(name):
    cls = get_method(name)
    row = doc_rows()[name]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == cls.paper and cells[2] == cls.reference
    assert cells[3].split("<br>") == [f"• {d}" for d in cls.departures]


def test_docs_cover_the_other_reviewed_methods():
    rows = doc_rows()
    assert "sums each group's mean cross-entropy" in rows["decoupled"]
    assert "in-sample" in rows["group-threshold"]


def test_methods_list_verbose_shows_reference_and_each_departure(capsys):
    assert main(["methods", "list", "-v"]) == 0
    out = capsys.readouterr().out
    blocks, name = {}, None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = []
        elif line.strip():
            blocks[name].append(line.strip())
    for method in REVIEWED:
        cls = get_method(method)
        lines = blocks[method]
        assert f"reference code read: {cls.reference}" in lines
        for departure in cls.departures:
            assert f"departure: {departure}" in lines
