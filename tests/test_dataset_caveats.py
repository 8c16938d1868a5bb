"""Data caveats are stated where an attribute is listed; german's `sex` (Grömping 2019) is one, so age leads."""

from __future__ import annotations

from pathlib import Path

import noharm.datasets.german as german_module
from noharm.bench.cli import main
from noharm.datasets import DATASETS

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "South German Credit Data: Correcting a Widely Used Data Set"


def listed_block(out: str, name: str) -> list[str]:
    """The lines `noharm datasets list` prints for one dataset."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}  ["))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[start:end]


def test_datasets_list_states_the_german_sex_caveat_with_its_reference(capsys):
    assert main(["datasets", "list"]) == 0
    block = listed_block(capsys.readouterr().out, "german")
    caveats = [line for line in block if line.startswith("    caveat:")]
    assert len(caveats) == 1 and caveats[0].startswith("    caveat:     sex: not what it claims:")
    assert "Grömping 2019" in caveats[0] and REFERENCE in caveats[0] and "lean on age" in caveats[0]
    attributes = next(line for line in block if line.startswith("    attributes:"))
    assert "see the caveat" in attributes


def test_every_caveat_names_a_declared_attribute():
    declared = {name: DATASETS.get(name) for name in DATASETS.names()}
    assert {n for n, cls in declared.items() if cls.caveats} >= {"german"}
    for name, cls in declared.items():
        assert set(cls.caveats) <= set(cls.attributes), name
        assert all(text.strip() for text in cls.caveats.values()), name
    assert DATASETS.get("german")().summary()["caveats"] == DATASETS.get("german").caveats


def test_docstring_and_readme_state_it_too():
    assert "Grömping (2019" in german_module.__doc__ and REFERENCE in german_module.__doc__
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    entry = readme[readme.index("- `german`: UCI Statlog German Credit"):]
    entry = " ".join(entry[:entry.index("\n- `")].split())  # the prose, unwrapped
    assert "Caveat: `sex` is not what it claims." in entry and "Grömping (2019" in entry and REFERENCE in entry


def test_the_tabular_suite_leans_on_age_for_german():
    from noharm.bench.sweep import grid
    from noharm.bench.sweep.suite import load_suite

    suite = load_suite(REPO / "bench" / "suites" / "tabular.yaml")
    entry = next(d for d in suite.datasets if d.name == "german")
    assert entry.attributes[0] == "age" and entry.search == ["age"]
    cells = [c for c in grid.cells(suite) if c.dataset == "german"]
    searched = {c.attribute for c in cells if c.searched}
    assert searched == {"age"}
    # Every other german cell takes its settings from the age search of the same method.
    assert all(c.search_from == f"german/age/{c.method}" for c in cells if not c.searched and c.search_from)
    assert {c.attribute for c in cells if c.search_from} == {"sex", "sex+age"}
