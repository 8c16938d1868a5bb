"""Every Python block of README.md runs, so a plugin author can copy them as they stand.

The first line of a ```python block says what it is:
- `# file: mypkg/<module>.py`: a module of the README's example plugin package, pip-installed (into a
  temporary folder) with the entry points of the README's ```toml block;
- `# run`: a script run, in a fresh interpreter, with that package installed;
- `# not run: <reason>`: shown for reading only.
A block with none of the three fails here, so a new example is either run or says why it cannot be.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugin_install import env_with, install_package

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
FILE, RUN, NOT_RUN = "file", "run", "not run"
MARKERS = {FILE: re.compile(r"# file: (\w+(?:/\w+)*\.py)$"), RUN: re.compile(r"# run$"),
           NOT_RUN: re.compile(r"# not run: \S.*$")}


@dataclass
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()


def blocks(markdown: str, lang: str) -> list[Block]:
    """The fenced blocks of one language, with the line of their opening fence."""
    return [Block(m.group(1), markdown.count("\n", 0, m.start()) + 1, m.group(2))
            for m in FENCE.finditer(markdown) if m.group(1) == lang]


def kind_of(block: Block) -> str:
    """FILE, RUN or NOT_RUN from the block's first line; one clear message for an unmarked block."""
    for kind, pattern in MARKERS.items():
        if pattern.fullmatch(block.first_line):
            return kind
    raise ValueError(f"README.md line {block.line}: a ```python block must start with `# file: mypkg/<module>.py`, "
                     f"`# run` or `# not run: <reason>`; it starts with {block.first_line!r}")


def entry_points(markdown: str) -> dict[str, dict[str, str]]:
    """The `noharm.*` entry points the README's TOML blocks declare: {group: {name: module}}."""
    out: dict[str, dict[str, str]] = {}
    for block in blocks(markdown, "toml"):
        declared = tomllib.loads(block.text).get("project", {}).get("entry-points", {})
        for group, items in declared.items():
            if group.startswith("noharm."):
                out.setdefault(group, {}).update(items)
    return out


TEXT = README.read_text(encoding="utf-8")
PYTHON = blocks(TEXT, "python")


def test_every_python_block_is_marked_run_or_not():
    kinds = [kind_of(b) for b in PYTHON]  # raises, naming the line, on an unmarked block
    assert kinds.count(FILE) >= 2 and kinds.count(RUN) >= 1  # the method, the dataset, and their use


@pytest.mark.parametrize("first_line", ["# methods/focal.py", "import numpy as np", "# file: mypkg/x.txt",
                                        "# not run:", "# running"])
def test_an_unmarked_block_is_refused(first_line):
    with pytest.raises(ValueError, match=r"README.md line 7: a ```python block must start with"):
        kind_of(Block("python", 7, first_line + "\nx = 1\n"))


def test_the_example_modules_are_the_entry_points_and_use_noharm_names():
    modules = {MARKERS[FILE].fullmatch(b.first_line).group(1): b.text for b in PYTHON if kind_of(b) == FILE}
    declared = entry_points(TEXT)
    assert set(declared) == {"noharm.methods", "noharm.datasets"}
    named = {v.replace(".", "/") + ".py" for items in declared.values() for v in items.values()}
    assert named == set(modules)
    for path, text in modules.items():
        imported = re.findall(r"^(?:from|import) (\S+)", text, re.M)
        assert all(m.startswith("noharm.") or m.split(".")[0] in sys.stdlib_module_names
                   or m.split(".")[0] in ("numpy", "pandas", "torch") for m in imported), (path, imported)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The README's example package, installed through its entry points; returns (env, work folder)."""
    tmp = tmp_path_factory.mktemp("readme")
    files = {MARKERS[FILE].fullmatch(b.first_line).group(1): b.text for b in PYTHON if kind_of(b) == FILE}
    site = install_package(tmp, "mypkg", files, entry_points(TEXT))
    return env_with(site), tmp


def cli(env, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "noharm.bench.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_the_example_method_and_dataset_are_listed(plugin):
    env, _ = plugin
    methods = cli(env, "methods", "list", "-v")
    assert methods.returncode == 0 and "could not load" not in methods.stderr, methods.stderr
    assert "focal  Focal loss: down-weights easy samples" in methods.stdout
    assert "gamma: float, default 2, searched log-uniformly in [0.5, 5]" in methods.stdout
    datasets = cli(env, "datasets", "list")
    assert datasets.returncode == 0 and "could not load" not in datasets.stderr, datasets.stderr
    assert "mydata  [tabular]  synthetic example: two features, label, sex" in datasets.stdout


def test_the_example_dataset_splits_by_seed_and_stratum(plugin):
    env, _ = plugin
    probe = textwrap.dedent("""
        import json
        from noharm.datasets import get_dataset
        d = get_dataset("mydata")
        a, b, c = d.load(0), d.load(0), d.load(1)
        t = a.table
        shares = t.groupby(["sex", "y"])["split"].value_counts(normalize=True).round(2).to_dict()
        print(json.dumps({"same": bool(t.equals(b.table)), "moved": int((t["split"] != c.table["split"]).sum()),
                          "n": len(t), "x": list(a.x.shape), "shares": sorted(set(shares.values()))}))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["same"] and out["moved"] > 100 and out["n"] == 1000 and out["x"] == [1000, 2]
    assert out["shares"] == [0.2, 0.6]  # 60/20/20 inside every (sex, label) stratum


def test_the_run_blocks_run_against_the_installed_example(plugin):
    env, tmp = plugin
    runs = [b for b in PYTHON if kind_of(b) == RUN]
    for block in runs:
        proc = subprocess.run([sys.executable, "-c", block.text], capture_output=True, text=True, env=env,
                              cwd=tmp, timeout=600)
        assert proc.returncode == 0, f"README.md line {block.line}:\n{proc.stderr[-3000:]}"
    # The last one trains focal on mydata: the pooled model learns the majority group's rule.
    acc, worst = map(float, re.fullmatch(r"test accuracy (\S+), worst group (\S+)\n", proc.stdout).groups())
    assert 0.75 < acc <= 1 and 0 < worst < acc


def test_the_readme_trial_command_runs(plugin, tmp_path):
    env, _ = plugin
    proc = cli(env, "trial", "--dataset", "mydata", "--attribute", "sex", "--method", "focal", "--set", "gamma=1",
               "--set", "epochs=2", "--quiet", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved_hparams"]["gamma"] == 1.0 and config["dataset"] == "mydata"
    assert "focal on mydata (sex), seed 0" in proc.stdout
