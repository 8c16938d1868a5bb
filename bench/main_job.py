"""The main job behind `make bench`: ERM on every embedded dataset and attribute (until sweeps land)."""

from __future__ import annotations

from pathlib import Path


def run_main_job(out: str = "results", seeds: list[int] | None = None) -> int:
    from bench.console import trial_report
    from bench.trial import TrialConfig, run_trial, save_trial
    from datasets import DATASETS

    plan = [("adult", a, {}) for a in ("sex", "race", "race5", "age")]
    plan += [("digits-shift", "style", {"backbone": "cnn"})]
    for seed in seeds or [0]:
        for dataset, attribute, hp in plan:
            assert dataset in DATASETS
            cfg = TrialConfig(dataset=dataset, attribute=attribute, method="erm", seed=seed, hparams=hp)
            result = run_trial(cfg)
            print(f"\n== erm on {dataset} ({attribute}), seed {seed}")
            print(trial_report(result.metrics, ["model"], list(result.group_names), splits=("test",)))
            save_trial(result, Path(out) / f"{dataset}-{attribute}-erm-s{seed}", force=True)
    print(f"\nresults in {out}/")
    return 0
