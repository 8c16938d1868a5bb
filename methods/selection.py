"""No-harm selection: per group, keep the expert or fall back to pooled ERM.

Pure functions of per-group validation metrics (no torch, no predictions):
`select(expert, erm, sizes, strategy)` returns which groups use their expert.

Strategies (registry `STRATEGIES`, name -> function; `methods.selection_batch` holds, beside it, their
forms over many problems at once, for the stress repeats):

- `erm`, `experts`: trivial choices, for ablation.
- `greedy`: a group takes its expert only when the expert is strictly better.
- `ip-gap`: minimise the gap max_a v_a - min_a v_a of the chosen values v_a
  subject to no harm (v_a >= ERM's value for every group); ties go to the
  larger utility, then to fewer experts.
- `ip-utility`: maximise utility (size-weighted mean for accuracy, plain mean
  for AUC) subject to no harm and a gap no larger than ERM's; ties go to fewer
  experts.

Both integer programs are solved exactly with PuLP/CBC, lexicographically in
stages (each stage fixes the previous optimum and optimises the next key), with
O(G) variables and constraints. Values equal within `TOL` count as ties.

A group whose expert or ERM value is NaN (e.g. the AUC of a group with one
class on validation) keeps ERM under every choosing strategy: there is no
evidence that the expert helps it. Such groups count in the gap and utility
only through a finite ERM value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from noharm.settings import SELECTION_METRIC

# Objective values closer than this are ties (metrics live in [0, 1]).
TOL = 1e-9
# metric (a `SELECTION_METRIC` choice) -> how groups are weighted in the utility.
UTILITY_WEIGHTING = {"accuracy": "size", "auc": "mean"}


@dataclass(frozen=True)
class SelectionResult:
    """Which groups use their expert, and what that choice gives on the metric it was made on."""

    use_expert: tuple[bool, ...]
    values: tuple[float, ...]  # the chosen model's metric, per group
    status: str  # solver status ("Optimal", or why it fell back to ERM), "greedy" or "trivial"
    gap: float  # max - min of the finite values
    utility: float  # weighted mean of the finite values
    strategy: str

    @property
    def n_experts(self) -> int:
        return sum(self.use_expert)


@dataclass(frozen=True)
class SelectionProblem:
    """Validated per-group inputs of a strategy (float64 arrays of one length)."""

    expert: np.ndarray
    erm: np.ndarray
    sizes: np.ndarray
    metric: str

    @property
    def n_groups(self) -> int:
        return len(self.erm)

    @property
    def comparable(self) -> np.ndarray:
        """Groups where both values are known; only these may take their expert."""
        return np.isfinite(self.expert) & np.isfinite(self.erm)

    @property
    def improves(self) -> np.ndarray:
        """Groups whose expert is strictly better than ERM (the only experts worth taking)."""
        with np.errstate(invalid="ignore"):
            return self.comparable & (self.expert > self.erm)

    def values(self, use_expert: np.ndarray) -> np.ndarray:
        return np.where(use_expert, self.expert, self.erm)

    def weights(self, values: np.ndarray) -> np.ndarray:
        """Utility weights over the finite values (zero elsewhere), summing to one."""
        finite = np.isfinite(values)
        raw = self.sizes if UTILITY_WEIGHTING[self.metric] == "size" else np.ones_like(self.sizes)
        w = np.where(finite, raw, 0.0)
        total = w.sum()
        return w / total if total > 0 else w

    def gap(self, values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        return float(finite.max() - finite.min()) if len(finite) else math.nan

    def utility(self, values: np.ndarray) -> float:
        finite = np.isfinite(values)
        if not finite.any():
            return math.nan
        return float(np.sum(self.weights(values)[finite] * values[finite]))


# A strategy maps a problem to (use_expert [G] bool, status).
Strategy = Callable[[SelectionProblem], tuple[np.ndarray, str]]
STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator adding a strategy to `STRATEGIES` under `name`."""

    def deco(fn: Strategy) -> Strategy:
        if name in STRATEGIES and STRATEGIES[name] is not fn:
            raise ValueError(f"selection strategy {name!r} registered twice")
        STRATEGIES[name] = fn
        return fn

    return deco


def select(expert: Sequence[float], erm: Sequence[float], sizes: Sequence[float], strategy: str,
           metric: str = SELECTION_METRIC.default) -> SelectionResult:
    """Choose, per group, the expert or pooled ERM from validation metrics.

    `expert[a]` and `erm[a]` are group a's validation metric under its expert
    and under pooled ERM (higher is better; NaN when undefined), `sizes[a]` its
    number of validation rows. `metric` ("accuracy" or "auc") sets the utility:
    size-weighted mean for accuracy, plain mean for AUC.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    problem = make_problem(expert, erm, sizes, metric)
    use, status = STRATEGIES[strategy](problem)
    use = np.asarray(use, dtype=bool)
    values = problem.values(use)
    return SelectionResult(
        use_expert=tuple(bool(u) for u in use), values=tuple(float(v) for v in values), status=status,
        gap=problem.gap(values), utility=problem.utility(values), strategy=strategy,
    )


def make_problem(expert: Sequence[float], erm: Sequence[float], sizes: Sequence[float], metric: str) -> SelectionProblem:
    """Check the inputs (one clear ValueError per problem) and pack them as float arrays."""
    SELECTION_METRIC.check(metric)
    arrays = {}
    for name, seq in (("expert", expert), ("erm", erm), ("sizes", sizes)):
        try:
            arr = np.asarray(seq, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"selection input {name!r} must be a sequence of numbers, got {seq!r}") from None
        if arr.ndim != 1:
            raise ValueError(f"selection input {name!r} must be one value per group, got shape {arr.shape}")
        arrays[name] = arr
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"selection inputs need one value per group each, got lengths {lengths}")
    if lengths["erm"] == 0:
        raise ValueError("selection needs at least one group, got none")
    for name in ("expert", "erm"):
        bad = np.flatnonzero(np.isinf(arrays[name]))
        if len(bad):
            raise ValueError(f"{name} metric of group {int(bad[0])} is {arrays[name][bad[0]]}; use a finite value or NaN")
    sizes_arr = arrays["sizes"]
    bad = np.flatnonzero(~(np.isfinite(sizes_arr) & (sizes_arr > 0)))
    if len(bad):
        raise ValueError(f"size of group {int(bad[0])} is {sizes_arr[bad[0]]}; sizes must be positive validation counts")
    return SelectionProblem(expert=arrays["expert"], erm=arrays["erm"], sizes=sizes_arr, metric=metric)


@register_strategy("erm")
def _all_erm(problem: SelectionProblem) -> tuple[np.ndarray, str]:
    return np.zeros(problem.n_groups, bool), "trivial"


@register_strategy("experts")
def _all_experts(problem: SelectionProblem) -> tuple[np.ndarray, str]:
    # The method as it is, without selection (NaN groups included): the ablation's reference.
    return np.ones(problem.n_groups, bool), "trivial"


@register_strategy("greedy")
def _greedy(problem: SelectionProblem) -> tuple[np.ndarray, str]:
    return problem.improves.copy(), "greedy"


# --- exact integer programs -------------------------------------------------

def _solve(prob) -> str:
    """Solve with CBC quietly; the LpStatus name, or why the solver failed (never raises)."""
    import pulp

    try:
        prob.solve(pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0))
    except pulp.PulpSolverError as err:
        return f"Error: {err}"
    return pulp.LpStatus.get(prob.status, str(prob.status))


def _fallback(problem: SelectionProblem, status: str) -> tuple[np.ndarray, str]:
    # All-ERM is always feasible and harms no group: the safe answer when a solve fails.
    return np.zeros(problem.n_groups, bool), f"{status} (fell back to ERM)"


class _Program:
    """The shared model: a binary x_a per improvable group, v_a = erm_a + x_a (expert_a - erm_a).

    Groups that cannot improve are constants; `hi`/`lo` bound every value from
    above/below, so max - min is `hi - lo` at the optimum (2 constraints per group).
    """

    def __init__(self, problem: SelectionProblem, sense: int):
        import pulp

        self.problem = problem
        self.free = np.flatnonzero(problem.improves)
        fixed = problem.erm[~problem.improves]
        fixed = fixed[np.isfinite(fixed)]
        self.prob = pulp.LpProblem("selection", sense)
        self.x = [pulp.LpVariable(f"x{a}", cat="Binary") for a in self.free]
        self.hi = pulp.LpVariable("hi", lowBound=float(fixed.max()) if len(fixed) else None)
        self.lo = pulp.LpVariable("lo", upBound=float(fixed.min()) if len(fixed) else None)
        for a, x in zip(self.free, self.x):
            value = float(problem.erm[a]) + float(problem.expert[a] - problem.erm[a]) * x
            self.prob += self.hi >= value, f"hi{a}"
            self.prob += self.lo <= value, f"lo{a}"
        # Utility weights are those of the all-finite value set the program ranges over.
        w = problem.weights(problem.erm)
        self.gain = pulp.lpSum(float(w[a] * (problem.expert[a] - problem.erm[a])) * x for a, x in zip(self.free, self.x))
        self.count = pulp.lpSum(self.x)
        self.gap = self.hi - self.lo

    def optimise(self, objective, sense: int) -> str:
        self.prob.sense = sense
        self.prob.setObjective(objective)
        return _solve(self.prob)

    def chosen(self) -> np.ndarray:
        use = np.zeros(self.problem.n_groups, bool)
        for a, x in zip(self.free, self.x):
            use[a] = x.varValue is not None and x.varValue > 0.5
        return use


def _lexicographic(problem: SelectionProblem, stages, gap_limit: float | None = None) -> tuple[np.ndarray, str]:
    """Optimise `stages` in order, each time fixing the previous optimum within TOL.

    Each stage is (key, sense) with key in {"gap", "gain", "count"}; the optimum
    of a stage is measured on the decoded choice (exact arithmetic), not on the
    solver's objective value.
    """
    import pulp

    if not problem.improves.any():
        return np.zeros(problem.n_groups, bool), "Optimal"  # no expert beats ERM anywhere
    prog = _Program(problem, pulp.LpMinimize)
    if gap_limit is not None:
        prog.prob += prog.gap <= gap_limit + TOL, "gap_limit"
    exprs = {"gap": prog.gap, "gain": prog.gain, "count": prog.count}
    use = np.zeros(problem.n_groups, bool)
    for i, (key, sense) in enumerate(stages):
        status = prog.optimise(exprs[key], sense)
        if status != "Optimal":
            return _fallback(problem, status)
        use = prog.chosen()
        if i + 1 < len(stages):
            best = _measure(problem, use, key)
            bound = best + TOL if sense == pulp.LpMinimize else best - TOL
            cons = exprs[key] <= bound if sense == pulp.LpMinimize else exprs[key] >= bound
            prog.prob += cons, f"stage{i}_{key}"
    if gap_limit is not None and problem.gap(problem.values(use)) > gap_limit + TOL:
        return _fallback(problem, "Infeasible")  # solver tolerance let a too-wide gap through
    return use, "Optimal"


def _measure(problem: SelectionProblem, use: np.ndarray, key: str) -> float:
    values = problem.values(use)
    if key == "gap":
        return problem.gap(values)
    if key == "count":
        return float(use.sum())
    w = problem.weights(problem.erm)
    free = problem.improves
    return float(np.sum(w[free & use] * (problem.expert - problem.erm)[free & use]))


@register_strategy("ip-gap")
def _ip_gap(problem: SelectionProblem) -> tuple[np.ndarray, str]:
    import pulp

    return _lexicographic(problem, [("gap", pulp.LpMinimize), ("gain", pulp.LpMaximize), ("count", pulp.LpMinimize)])


@register_strategy("ip-utility")
def _ip_utility(problem: SelectionProblem) -> tuple[np.ndarray, str]:
    import pulp

    erm_gap = problem.gap(problem.erm)
    limit = 0.0 if math.isnan(erm_gap) else erm_gap
    return _lexicographic(problem, [("gain", pulp.LpMaximize), ("count", pulp.LpMinimize)], gap_limit=limit)


# --- statistically safe selection (`safe`) ------------------------------------
#
# `safe` takes a group's expert only when its accuracy advantage over ERM on the
# *same* validation samples holds with confidence 1 - delta. The evidence is
# paired: per group, b = samples the expert gets right and ERM wrong, c = the
# reverse. Under "no advantage" (P(b-type) <= P(c-type)), b given b + c is at
# most Binomial(b + c, 1/2), so the exact one-sided sign test (McNemar's exact
# test) rejects with probability <= delta: a group without a true advantage
# takes its expert at most a delta share of the time.

SAFE_DELTA = 0.05  # default level of `safe`
SAFE_TESTS = ("sign", "bootstrap")


@dataclass(frozen=True)
class SafeEvidence:
    """Per-group paired evidence of the expert's advantage on validation (arrays of length G)."""

    n: np.ndarray  # validation samples of the group
    b: np.ndarray  # expert right, ERM wrong
    c: np.ndarray  # expert wrong, ERM right
    p_value: np.ndarray  # one-sided: H0 "the expert is no better than ERM"
    lower_bound: np.ndarray  # one-sided (1 - delta) lower confidence bound of acc(expert) - acc(ERM)
    accept: np.ndarray  # bool: the advantage holds at level delta
    delta: float
    test: str


def sign_test_p_value(b, c) -> np.ndarray:
    """Exact one-sided sign-test p-value P(Binomial(b + c, 1/2) >= b), elementwise (1 where b + c = 0)."""
    from scipy.stats import binom

    b = np.asarray(b, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    return binom.sf(b - 1, b + c, 0.5)


def check_delta(delta: float) -> float:
    """`delta` as a float when it is a valid level of `safe` (in (0, 0.5)); else a ValueError."""
    delta = float(delta)
    if not 0.0 < delta < 0.5:
        raise ValueError(f"safe selection level delta must be in (0, 0.5), got {delta}")
    return delta


def safe_evidence(expert_correct, erm_correct, groups, n_groups: int, delta: float = SAFE_DELTA,
                  test: str = "sign", n_boot: int = 2000, seed: int = 0) -> SafeEvidence:
    """Paired per-group evidence that the expert beats ERM, from per-sample validation correctness.

    `expert_correct` and `erm_correct` are 0/1 (or boolean) [N] on the same
    validation samples, `groups` int [N] in 0..n_groups-1. `test="sign"` is the
    exact sign test on discordant pairs (false acceptance <= delta for any n);
    `test="bootstrap"` is a paired percentile bootstrap (`n_boot` resamples of
    the per-sample differences, seeded by `seed`; approximately level delta).
    """
    delta = check_delta(delta)
    if test not in SAFE_TESTS:
        raise ValueError(f"unknown safe test {test!r}; choose one of: {', '.join(SAFE_TESTS)}")
    e = np.asarray(expert_correct)
    r = np.asarray(erm_correct)
    g = np.asarray(groups)
    if not (e.ndim == r.ndim == g.ndim == 1 and len(e) == len(r) == len(g)):
        raise ValueError(f"safe selection needs expert_correct, erm_correct and groups as 1-D arrays of one length, "
                         f"got shapes {e.shape}, {r.shape}, {g.shape}")
    for name, arr in (("expert_correct", e), ("erm_correct", r)):
        if len(arr) and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold 0/1 correctness per sample, got values outside {{0, 1}}")
    if len(g) and (not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() >= n_groups):
        raise ValueError(f"groups must be integer ids in 0..{n_groups - 1}")
    e, r = e.astype(bool), r.astype(bool)
    n = np.bincount(g, minlength=n_groups).astype(np.int64)
    b = np.bincount(g, weights=e & ~r, minlength=n_groups).round().astype(np.int64)
    c = np.bincount(g, weights=~e & r, minlength=n_groups).round().astype(np.int64)
    return evidence_from_counts(n, b, c, delta=delta, test=test, n_boot=n_boot, seed=seed)


def evidence_from_counts(n, b, c, delta: float = SAFE_DELTA, test: str = "sign", n_boot: int = 2000,
                         seed: int = 0) -> SafeEvidence:
    """`SafeEvidence` from per-group counts: n samples, b expert-only right, c ERM-only right."""
    from scipy.stats import beta

    delta = check_delta(delta)
    n, b, c = (np.asarray(v, dtype=np.int64) for v in (n, b, c))
    p = sign_test_p_value(b, c)
    d = b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n > 0, d / np.maximum(n, 1), 0.0)  # discordant share of the group
    if test == "sign":
        # Clopper-Pearson lower bound of P(expert right | discordant), mapped to an accuracy difference.
        theta = np.where(b > 0, beta.ppf(delta, np.maximum(b, 1), c + 1), 0.0)
        lower = np.where(d > 0, share * (2 * theta - 1), 0.0)
        accept = (d > 0) & (p <= delta)
    elif test == "bootstrap":
        rng = np.random.default_rng(seed)
        lower = np.zeros(len(n))
        for a in np.flatnonzero(n > 0):  # G draws of size n_boot: cheap, and seeded in group order
            probs = np.array([b[a], c[a], n[a] - d[a]], dtype=np.float64) / n[a]
            draws = rng.multinomial(n[a], probs, size=int(n_boot))
            lower[a] = np.quantile((draws[:, 0] - draws[:, 1]) / n[a], delta)
        accept = lower > 0
    else:
        raise ValueError(f"unknown safe test {test!r}; choose one of: {', '.join(SAFE_TESTS)}")
    return SafeEvidence(n=n, b=b, c=c, p_value=p, lower_bound=lower, accept=accept, delta=delta, test=test)


def select_safe(expert_correct, erm_correct, groups, n_groups: int, delta: float = SAFE_DELTA,
                test: str = "sign", n_boot: int = 2000, seed: int = 0) -> SelectionResult:
    """`safe` on per-sample validation correctness: a group takes its expert only when the advantage is significant.

    See `safe_evidence` for the inputs. The result's values, gap and utility
    are validation accuracies (size-weighted utility); a group without
    validation samples keeps ERM.
    """
    ev = safe_evidence(expert_correct, erm_correct, groups, n_groups, delta=delta, test=test, n_boot=n_boot, seed=seed)
    e = np.asarray(expert_correct, dtype=np.float64)
    r = np.asarray(erm_correct, dtype=np.float64)
    g = np.asarray(groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_e = np.bincount(g, weights=e, minlength=n_groups) / ev.n
        acc_r = np.bincount(g, weights=r, minlength=n_groups) / ev.n
    problem = make_problem(acc_e, acc_r, np.maximum(ev.n, 1), "accuracy")
    values = problem.values(ev.accept)
    return SelectionResult(
        use_expert=tuple(bool(u) for u in ev.accept), values=tuple(float(v) for v in values),
        status=f"{test} test, delta={ev.delta:g}", gap=problem.gap(values), utility=problem.utility(values),
        strategy="safe",
    )


def worst_case_p_value(expert_acc: float, erm_acc: float, n: int) -> float:
    """Largest sign-test p-value over every pairing consistent with two accuracies on n samples.

    From accuracies alone the discordant counts are unknown; with k_e, k_r
    correct samples, b - c = k_e - k_r and b ranges over max(0, k_e - k_r) ..
    min(k_e, n - k_r). The true pairing is one of them, so rejecting only when
    the largest p-value is <= delta keeps the test's level (conservatively).
    """
    k_e, k_r = int(round(expert_acc * n)), int(round(erm_acc * n))
    k = k_e - k_r
    if k <= 0:
        return 1.0
    b = np.arange(max(0, k), min(k_e, n - k_r) + 1)
    return float(sign_test_p_value(b, b - k).max()) if len(b) else 1.0


@register_strategy("safe")
def _safe(problem: SelectionProblem) -> tuple[np.ndarray, str]:
    # The registry only sees per-group accuracies: use the worst-case pairing (valid, conservative).
    # With per-sample correctness at hand, `select_safe` runs the exact paired test instead.
    if problem.metric != "accuracy":
        raise ValueError(f"selection strategy 'safe' tests paired accuracy; got metric {problem.metric!r}: "
                         "use metric 'accuracy', or greedy / ip-gap / ip-utility for AUC")
    use = np.zeros(problem.n_groups, bool)
    for a in np.flatnonzero(problem.improves):
        use[a] = worst_case_p_value(problem.expert[a], problem.erm[a], int(round(problem.sizes[a]))) <= SAFE_DELTA
    return use, f"worst-case sign test, delta={SAFE_DELTA:g}"


# --- group-blind application (`blind`) -----------------------------------------
#
# Without the sensitive attribute at inference, a sample is routed by a
# *predicted* group h (FairSDE's discriminator, or a group classifier): it gets
# the expert of h when the per-group choice takes h's expert, and ERM
# otherwise. The choice itself is any strategy's, made on validation with the
# true groups; only its application is blind. It is not a `STRATEGIES` entry
# because it needs the predicted group of every test sample, which per-group
# metrics do not carry.


def apply_blind(use_expert, predicted_group, routed_proba, erm_proba) -> np.ndarray:
    """[N, C] scores of the blind composition: the predicted group's expert where chosen, else ERM.

    `use_expert` bool [G] (a strategy's choice), `predicted_group` int [N],
    `routed_proba` [N, C] the expert of each sample's *predicted* group,
    `erm_proba` [N, C].
    """
    use = np.asarray(use_expert, dtype=bool)
    h = np.asarray(predicted_group)
    routed, erm = np.asarray(routed_proba), np.asarray(erm_proba)
    if routed.shape != erm.shape or routed.ndim != 2 or len(h) != len(routed):
        raise ValueError(f"blind routing needs routed_proba and erm_proba [N, C] and predicted_group [N], got shapes "
                         f"{routed.shape}, {erm.shape}, {h.shape}")
    if len(h) and (h.min() < 0 or h.max() >= len(use)):
        raise ValueError(f"predicted groups must lie in 0..{len(use) - 1} (one choice per group), got {h.min()}..{h.max()}")
    return np.where(use[h][:, None], routed, erm)


def routing_accuracy(predicted_group, group, n_groups: int) -> tuple[float, np.ndarray]:
    """(overall share of samples routed to their true group, the same share per true group [G])."""
    h, g = np.asarray(predicted_group), np.asarray(group)
    if h.shape != g.shape or h.ndim != 1:
        raise ValueError(f"predicted_group and group must be 1-D of one length, got {h.shape} and {g.shape}")
    hit = (h == g).astype(np.float64)
    overall = float(hit.mean()) if len(hit) else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        per_group = np.bincount(g, weights=hit, minlength=n_groups) / np.bincount(g, minlength=n_groups)
    return overall, per_group


def blind_report(y, group, predicted_group, use_expert, routed_proba, erm_proba, group_names,
                 tolerance: float = 0.0):
    """Per true group: samples, routing accuracy, accuracy of the blind composition and of ERM, harm.

    Returns a pandas DataFrame indexed by group name with columns n,
    routing_accuracy, blind, erm, harm (= erm - blind) and harmed (harm >
    `tolerance`).
    """
    import pandas as pd

    names = [str(n) for n in group_names]
    y, g = np.asarray(y), np.asarray(group)
    mixed = apply_blind(use_expert, predicted_group, routed_proba, erm_proba)
    _, per_group = routing_accuracy(predicted_group, g, len(names))
    n = np.bincount(g, minlength=len(names))
    with np.errstate(invalid="ignore", divide="ignore"):
        blind = np.bincount(g, weights=mixed.argmax(1) == y, minlength=len(names)) / n
        erm = np.bincount(g, weights=np.asarray(erm_proba).argmax(1) == y, minlength=len(names)) / n
    harm = erm - blind
    return pd.DataFrame({"n": n, "routing_accuracy": per_group, "blind": blind, "erm": erm, "harm": harm,
                         "harmed": harm > tolerance}, index=names)
