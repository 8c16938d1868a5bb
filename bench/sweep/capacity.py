"""How many trials a sweep runs at once: from the machine (or cluster), unless the suite or the CLI says.

Each trial asks Ray for the suite's `resources` (CPUs and GPUs per trial; `gpu: auto`, the default, is
one GPU per trial when the cluster has GPUs and none otherwise). Without a `max_concurrent` (suite or
`--max-concurrent`) a sweep runs as many trials as fit on the nodes, node by node: a 16-core machine
runs 16 one-CPU trials, a box with 4 GPUs runs 4 one-GPU trials, `gpu: 0.25` puts 4 trials on each GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from noharm.bench.errors import ConfigError

AUTO = "auto"
# Resource amounts are floats (fractional GPUs): a node of 1 GPU fits four trials of 0.25 exactly.
EPS = 1e-9


@dataclass(frozen=True)
class Capacity:
    """The sweep's concurrency and why: `trials` at a time on `cpus` CPUs and `gpus` GPUs."""

    trials: int
    cpus: float
    gpus: float
    cpu_per_trial: float
    gpu_per_trial: float
    fits: int  # trials the nodes hold at once
    limit: int | None = None  # max_concurrent from the suite or --max-concurrent
    limit_from: str = ""  # "the suite's max_concurrent" or "--max-concurrent"

    @property
    def tune_limit(self) -> int:
        """Tune's `max_concurrent_trials`: a stated limit, else what fits now.

        Always set: with a custom searcher and no limit Tune keeps a single trial pending, so a worker
        that finishes a short trial (a copy, a composition) is torn down and the next trial waits for a
        new worker process (measured: one training at a time for most of a sweep's evaluate stage). A
        limit above what fits now lets nodes that join a cluster later take the extra trials.
        """
        return self.limit or self.trials

    def describe(self) -> str:
        """e.g. `2 trials at a time: 2 CPUs, 1 CPU per trial, no GPU`."""
        gpus = f"{_amount(self.gpus)} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else "no GPU"
        per = f"{_amount(self.cpu_per_trial)} CPU"
        if self.gpu_per_trial:
            per += f" and {_amount(self.gpu_per_trial)} GPU"
        head = f"{self.trials} trial{'s' if self.trials != 1 else ''} at a time"
        if self.limit is not None:
            head += f" ({self.limit_from} {self.limit}; the machine fits {self.fits})"
        return f"{head}: {_amount(self.cpus)} CPUs, {per} per trial, {gpus}"


def _amount(x: float) -> str:
    return f"{x:g}"


def gpu_per_trial(requested: float | str, gpus: float) -> float:
    """The GPUs each trial asks for: `auto` is one when the cluster has a GPU, none otherwise."""
    if requested == AUTO:
        return 1.0 if gpus >= 1 - EPS else 0.0
    return float(requested)


def plan(nodes: Iterable[tuple[float, float]], cpu: float, gpu: float | str,
         suite_max: int | None = None, cli_max: int | None = None) -> Capacity:
    """The concurrency of a sweep on `nodes` [(CPUs, GPUs) of each live node] with `cpu` and `gpu` per trial.

    A stated limit (`cli_max` beats `suite_max`) caps it; otherwise as many trials run as the nodes fit.
    Raises ConfigError when no node can hold one trial (Ray would wait forever).
    """
    nodes = [(float(c), float(g)) for c, g in nodes]
    total_cpus, total_gpus = sum(c for c, _ in nodes), sum(g for _, g in nodes)
    per_gpu = gpu_per_trial(gpu, total_gpus)
    fits = 0
    for cpus, gpus in nodes:  # a trial runs on one node: count per node, not on the totals
        by_cpu = math.floor(cpus / cpu + EPS)
        by_gpu = math.floor(gpus / per_gpu + EPS) if per_gpu > 0 else by_cpu
        fits += min(by_cpu, by_gpu)
    if fits == 0:
        biggest = max(nodes, default=(0.0, 0.0))
        raise ConfigError(f"resources: each trial asks for {cpu:g} CPU and {per_gpu:g} GPU, but no node has that "
                          f"much (largest: {biggest[0]:g} CPUs, {biggest[1]:g} GPUs); lower `resources` in the suite")
    limit, limit_from = (cli_max, "--max-concurrent") if cli_max else (suite_max, "the suite's max_concurrent")
    trials = min(limit, fits) if limit else fits
    return Capacity(trials=trials, cpus=total_cpus, gpus=total_gpus, cpu_per_trial=cpu, gpu_per_trial=per_gpu,
                    fits=fits, limit=limit or None, limit_from=limit_from if limit else "")


def ray_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of every live node of the Ray cluster this process is connected to."""
    import ray  # lazy: Ray reads its environment when imported

    return [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]


def trial_device(requested: str, assigned_gpus: list | None) -> str:
    """The device a sweep trial trains on: `auto` in a Ray trial that was given no GPU is the CPU.

    Ray leaves every GPU visible to a trial that asked for none, so `auto` alone would put all the
    CPU trials (`gpu: 0`) on the first GPU, outside Ray's accounting. `assigned_gpus` is None outside Ray.
    """
    if requested == AUTO and assigned_gpus is not None and not assigned_gpus:
        return "cpu"
    return requested
