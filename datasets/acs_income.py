"""ACS Income: folktables' ACSIncome task on local ACS PUMS person files, read once into a cache.

The task as folktables defines it (`folktables/acs.py`, `ACSIncome`):
features AGEP, COW, SCHL, MAR, OCCP, POBP, RELP, WKHP, SEX, RAC1P; filter
`adult_filter`: AGEP > 16, PINCP > 100, WKHP > 0, PWGTP >= 1 (a missing value
fails its rule, as in pandas); target PINCP > 50,000; missing feature codes
become 0 (its postprocess). Each dropped row is counted under the first rule it
fails.

Files: the Census Bureau's person CSV of each state, `psam_pSS.csv` (2017 and
later; SS = FIPS code, e.g. `psam_p06.csv` for California) or `ssYYpST.csv`
(2014-2016), either directly under the root or in folktables' download layout
`<root>/<year>/<horizon>/`. Rows are read in chunks (only the columns the task
needs) and the kept rows are cached as Parquet (see `datasets/table_cache.py`).

Encoding (noharm's, not folktables', which hands raw codes to its models):
AGEP and WKHP standardised; the eight coded features one-hot, fitted on train,
keeping each feature's 63 most frequent codes plus one column for the rest
(OCCP has about 500 codes and POBP about 200).

Attributes: `sex` (SEX 1 Male, 2 Female), `race` (RAC1P 1 White / non-White),
`race9` (RAC1P's nine codes: White, Black, American Indian, Alaska Native, AIAN
other, Asian, Pacific Islander, Other, Two or more), `age` (17-24, 25-44,
45-64, 65-plus).

Natural shift (folktables' "Retiring Adult" shifts across states and years):
`test_state=TX,NY` also reads those states' files of the training year and
`test_year=2019` the training states' files of that year; each becomes a shift
split (`shift:TX`, `shift:2019`) that no decision reads. With several training
states, `shift=state:TX` holds one of them out the same way (columns `state`,
postal code, and `year`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noharm.datasets import register_dataset
from noharm.datasets.base import DatasetError
from noharm.datasets.image_dataset import int_option
from noharm.datasets.shifts import ShiftSpec, check_distinct_names, shift_name
from noharm.datasets.table_cache import load_or_build_table
from noharm.datasets.tabular import TabularFileDataset, TabularRows, check_values, keep_rows, numeric_column, require_columns

STATE_CODES = {
    "AL": 1, "AK": 2, "AZ": 4, "AR": 5, "CA": 6, "CO": 8, "CT": 9, "DE": 10, "FL": 12, "GA": 13, "HI": 15,
    "ID": 16, "IL": 17, "IN": 18, "IA": 19, "KS": 20, "KY": 21, "LA": 22, "ME": 23, "MD": 24, "MA": 25,
    "MI": 26, "MN": 27, "MS": 28, "MO": 29, "MT": 30, "NE": 31, "NV": 32, "NH": 33, "NJ": 34, "NM": 35,
    "NY": 36, "NC": 37, "ND": 38, "OH": 39, "OK": 40, "OR": 41, "PA": 42, "RI": 44, "SC": 45, "SD": 46,
    "TN": 47, "TX": 48, "UT": 49, "VT": 50, "VA": 51, "WA": 53, "WV": 54, "WI": 55, "WY": 56, "PR": 72,
}
FEATURES = ["AGEP", "COW", "SCHL", "MAR", "OCCP", "POBP", "RELP", "WKHP", "SEX", "RAC1P"]
NUMERIC = ["AGEP", "WKHP"]
CATEGORICAL = ["COW", "SCHL", "MAR", "OCCP", "POBP", "RELP", "SEX", "RAC1P"]
IDS = ["SERIALNO", "SPORDER", "ST"]
READ = [*IDS, *FEATURES, "PINCP", "PWGTP"]
ALWAYS_PRESENT = ["SPORDER", "ST", "AGEP", "SEX", "RAC1P", "PWGTP"]  # never blank in PUMS person files
INCOME_THRESHOLD = 50_000
RACE9 = {1: "White", 2: "Black", 3: "American Indian", 4: "Alaska Native", 5: "AIAN other", 6: "Asian",
         7: "Pacific Islander", 8: "Other", 9: "Two or more"}
AGE_BINS = [16, 24, 44, 64, np.inf]
AGE_NAMES = ["17-24", "25-44", "45-64", "65-plus"]
HORIZONS = ("1-Year", "5-Year")
STATE_OF_CODE = {code: state for state, code in STATE_CODES.items()}
# Columns a natural shift may move rows by; `test_state` / `test_year` read more files and shift by them.
SHIFT_COLUMNS = {"state": "postal code of the person's file (CA, TX, ...)", "year": "the file's survey year"}
CHUNK_ROWS = 100_000
# Rows of ACSIncome that folktables' paper (Ding et al., 2021) reports per (state, year, horizon).
DOCUMENTED_ROWS = {("CA", 2018, "1-Year"): 195_665}


def adult_filter(df: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """folktables' `adult_filter`, rule by rule; each dropped row is counted under the first rule it fails."""
    df = keep_rows(df, df["AGEP"] > 16, "AGEP <= 16", dropped)
    df = keep_rows(df, df["PINCP"] > 100, "PINCP <= 100 or missing", dropped)
    df = keep_rows(df, df["WKHP"] > 0, "WKHP 0 or missing", dropped)
    return keep_rows(df, df["PWGTP"] >= 1, "PWGTP < 1", dropped)


def person_file_name(state: str, year: int) -> str:
    """The Census Bureau's person file of one state and year (the names folktables expects)."""
    if year >= 2017:
        return f"psam_p{STATE_CODES[state]:02d}.csv"
    return f"ss{str(year)[-2:]}p{state.lower()}.csv"


def parse_states(value: Any, option: str = "state") -> list[str]:
    """Postal codes from "CA", "CA,TX" or a list; one DatasetError line for an unknown code."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    states = [str(s).strip().upper() for s in items if str(s).strip()]
    unknown = [s for s in states if s not in STATE_CODES]
    if not states or unknown:
        raise DatasetError(f"acs-income: unknown {option} {unknown[0] if unknown else value!r}; use postal codes "
                           f"such as CA or CA,TX (one of: {', '.join(STATE_CODES)})")
    if len(set(states)) != len(states):
        raise DatasetError(f"acs-income: {option} lists {value!r} with a repeat")
    return states


def parse_years(value: Any) -> list[int]:
    """Survey years from "2019", "2017,2019" or a list (test_year); one DatasetError line for a bad one."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    years = [int_option("acs-income", "test_year", str(y).strip(), 2014, 2100) for y in items if str(y).strip()]
    if not years:
        raise DatasetError(f"acs-income: test_year {value!r} names no year; e.g. test_year=2019")
    return years


@register_dataset("acs-income")
class ACSIncome(TabularFileDataset):
    description = "ACS Income (local ACS PUMS person files): folktables' ACSIncome task, income > 50,000"
    citation = "Ding, Hardt, Miller & Schmidt (2021), Retiring Adult, NeurIPS; US Census Bureau ACS PUMS"
    targets = {"income": "PINCP > 50,000"}
    default_target = "income"
    size_note = "one state-year per file (California 2018 1-Year: about 196k rows after the filter); 60/20/20 split"
    attributes = {
        "sex": "Female / Male",
        "race": "White / non-White",
        "race9": "the nine RAC1P codes",
        "age": "17-24 / 25-44 / 45-64 / 65-plus",
    }
    numeric = NUMERIC
    categorical = CATEGORICAL
    max_categories = 64
    class_names = ["<=50K", ">50K"]
    source_hint = ("download the person CSV of the state from www2.census.gov/programs-surveys/acs/data/pums/"
                   "<year>/<horizon>/csv_p<st>.zip and unzip it there")

    shift_columns = SHIFT_COLUMNS
    attribute_columns = ("SEX", "RAC1P", "AGEP", "PINCP")

    def __init__(self, root: str | None = None, target: str | None = None, state: Any = "CA", year: Any = 2018,
                 horizon: str = "1-Year", cache_dir: str | os.PathLike | None = None, test_state: Any = None,
                 test_year: Any = None, **options: Any):
        super().__init__(root=root, target=target, **options)
        self.states = parse_states(state)
        self.year = int_option(self.name, "year", year, 2014, 2100)
        if horizon not in HORIZONS:
            raise DatasetError(f"acs-income: unknown horizon {horizon!r}; choose one of: {', '.join(HORIZONS)}")
        self.horizon = horizon
        self.cache_dir = Path(str(cache_dir)).expanduser() if cache_dir else None
        self.test_states = parse_states(test_state, "test_state") if test_state not in (None, "") else []
        self.test_years = parse_years(test_year) if test_year not in (None, "") else []
        if self.test_states or self.test_years:
            if self.shift_specs:
                raise DatasetError("acs-income: give either shift= or test_state/test_year, not both")
            clash = [s for s in self.test_states if s in self.states] + [y for y in self.test_years if y == self.year]
            if clash:
                raise DatasetError(f"acs-income: {clash[0]} is both a training and a test "
                                   f"{'state' if isinstance(clash[0], str) else 'year'}; a shift split holds other "
                                   "domains than training")
            check_distinct_names([(f"test value {v!r}", shift_name(v)) for v in [*self.test_states, *self.test_years]],
                                 self.name)
            self.shift_specs = [ShiftSpec(column, tuple(str(v) for v in values)) for column, values in
                                (("state", self.test_states), ("year", self.test_years)) if values]
        # Filled by `load`: where the kept rows are cached and whether this load built them.
        self.table_cache_folder: Path | None = None
        self.table_cache_built: bool | None = None

    @classmethod
    def shift_help(cls) -> str:
        return ("test_state=TX[,NY...] / test_year=2019[,...] (other states' or years' files), or "
                + super().shift_help())

    def parts(self) -> list[tuple[list[str], int]]:
        """The (states, year) file groups to read: the training ones, each test state at the training year,
        the training states at each test year."""
        return [(self.states, self.year), *(([s], self.year) for s in self.test_states),
                *((self.states, y) for y in self.test_years)]

    def candidates_for(self, state: str, year: int | None = None) -> list[Path]:
        """Where one state's file may be: folktables' layout first, then directly under the root."""
        year = self.year if year is None else year
        name = person_file_name(state, year)
        return [self.root_path / str(year) / self.horizon / name, self.root_path / name]

    def source_files(self, states: list[str] | None = None, year: int | None = None) -> list[Path]:
        """Each state's person file (default: the training states and year), or one DatasetError line naming
        where the first missing one was looked for."""
        files = []
        year = self.year if year is None else year
        for state in self.states if states is None else states:
            found = [p for p in self.candidates_for(state, year) if p.is_file()]
            if not found:
                looked = " or ".join(str(p) for p in self.candidates_for(state, year))
                raise DatasetError(f"{self.name}: missing {looked} ({state} {year} {self.horizon}); "
                                   f"{self.source_hint}")
            files.append(found[0])
        return files

    def candidates(self) -> list[Path]:
        return self.candidates_for(self.states[0])

    def source_file(self) -> Path:
        return self.source_files()[0]

    def validate_files(self) -> None:
        super().validate_files()
        for states, year in self.parts():
            self.source_files(states, year)

    def read_rows(self) -> TabularRows:
        parts, notes, dropped = [], [], {}
        for states, year in self.parts():
            rows, part_notes, part_dropped = self._cached_rows(states, year)
            parts.append(rows.assign(_year=year))
            notes += part_notes
            for reason, n in part_dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        table = pd.DataFrame({
            "sample_id": rows["SERIALNO"].astype(str) + "-" + rows["SPORDER"].astype(np.int64).astype(str),
            "y": (rows["PINCP"] > INCOME_THRESHOLD).astype(np.int64),
            "sex": rows["SEX"].map({1: "Male", 2: "Female"}),
            "race": np.where(rows["RAC1P"] == 1, "White", "non-White"),
            "race9": rows["RAC1P"].astype(np.int64).map(RACE9),
            "age": pd.cut(rows["AGEP"], AGE_BINS, labels=AGE_NAMES).astype(str),
        })
        if table["sample_id"].duplicated().any():
            raise DatasetError(f"{self.name}: person {table['sample_id'][table['sample_id'].duplicated()].iloc[0]} "
                               f"appears twice; is the same state given twice?")
        features = rows[FEATURES].fillna(0)  # folktables' postprocess: missing codes become 0
        features[CATEGORICAL] = features[CATEGORICAL].astype(np.int64)
        domains = pd.DataFrame({"state": rows["ST"].astype(np.int64).map(STATE_OF_CODE),
                                "year": rows["_year"].astype(str)})
        return TabularRows(table=table, features=features, dropped=dropped, notes=notes, domains=domains)

    def _cached_rows(self, states: list[str], year: int) -> tuple[pd.DataFrame, list[str], dict[str, int]]:
        """The kept rows of one (states, year) file group, read once into the table cache; notes; drops."""
        files = self.source_files(states, year)
        settings = {"task": "ACSIncome", "filter": "adult_filter/1", "columns": READ,
                    "states": states, "year": year, "horizon": self.horizon}
        cached = load_or_build_table(files, settings, lambda: self._read_files(files, states), self.name,
                                     self.cache_dir)
        if (states, year) == (self.states, self.year):
            self.table_cache_folder, self.table_cache_built = cached.folder, cached.built
        rows = cached.rows
        n_source = len(rows) + sum(v for k, v in cached.dropped.items())
        notes = [f"{'+'.join(states)} {year} {self.horizon}: {len(rows)} of {n_source} person rows "
                 f"kept by folktables' ACSIncome filter",
                 f"table cache {'built' if cached.built else 'reused'}: {cached.folder}"]
        documented = DOCUMENTED_ROWS.get((states[0], year, self.horizon)) if len(states) == 1 else None
        if documented is not None:
            notes.append(f"folktables' paper reports {documented} rows for this state and year")
        return rows, notes, dict(cached.dropped)

    def _read_files(self, files: list[Path], states: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
        """Every file in chunks of the needed columns, checked and filtered (the cache's builder)."""
        dropped: dict[str, int] = {}
        parts = []
        for state, path in zip(states, files):
            with open(path, newline="") as f:
                header = f.readline().strip().split(",")
            require_columns([h.strip('"') for h in header], READ, self.name, path.name)
            reader = pd.read_csv(path, usecols=READ, dtype=str, keep_default_na=False, na_values=[""],
                                 chunksize=CHUNK_ROWS)
            for chunk in reader:
                parts.append(self._check_chunk(chunk, state, path.name, dropped))
        rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=READ)
        return rows[READ], dropped

    def _check_chunk(self, chunk: pd.DataFrame, state: str, file: str, dropped: dict[str, int]) -> pd.DataFrame:
        if chunk["SERIALNO"].isna().any():
            check_values(chunk, "SERIALNO", chunk["SERIALNO"].dropna().unique(), self.name, file)
        for column in [c for c in READ if c != "SERIALNO"]:
            chunk[column] = numeric_column(chunk, column, self.name, file, allow_missing=column not in ALWAYS_PRESENT)
        check_values(chunk, "ST", [STATE_CODES[state]], self.name, file)
        check_values(chunk, "SEX", [1, 2], self.name, file)
        check_values(chunk, "RAC1P", list(RACE9), self.name, file)
        return adult_filter(chunk, dropped)
