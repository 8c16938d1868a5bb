"""A whole `noharm trial` against a bare PyTorch script doing the same work, end to end.

Run by hand from the repository root:

    .venv/bin/python -m bench.perf.end_to_end [--n 400] [--sizes 64 224] [--precisions fp32 bf16]

Work on both sides: a UTKFace-layout folder of `--n` JPEG faces (200x200, the release's size), one
published split (a CSV given to noharm as `--option split_file=...` and read by the bare script),
ResNet-18 from scratch, SGD (lr 0.01, momentum 0.9, weight decay 1e-4), batch 64, one epoch with
the face protocol's random-resized-crop + flip, then validation and test scored once. Each side runs
in its own process, timed from the command's start (interpreter, imports and start-up included) to
its exit, with its peak RSS. The image cache is measured cold (empty cache folder: decode every
image) and warm (second run).

The bare script decodes with the same PIL calls into a `.npy` file, memory-maps it, and runs a plain
loop: no early stopping, no predictions table, no metrics. Appends a table to bench/perf/RESULTS.md.
Goals (issue 17): end-to-end wall ratio bare/noharm >= 0.9 in fp32, noharm peak RSS <= 1.2x the
bare script's at 224 px, inference per image >= 2x faster than training per image.
Also the saving of not scoring training rows (issue 18): the warm trial with `--train-predictions`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 64
LR = 0.01


# ---- the fixture ----------------------------------------------------------------------------------
def write_faces(root: Path, n: int, seed: int = 0) -> list[str]:
    """`n` UTKFace-named JPEG faces (200x200) in root/UTKFace, balanced over gender and race; returns the names."""
    from tests.real_layouts import save_image

    rng = np.random.default_rng(seed)
    folder = root / "UTKFace"
    names = []
    for i in range(n):
        age, gender, race = 18 + (i * 7) % 60, i % 2, (i // 2) % 5
        name = f"{age}_{gender}_{race}_2017011{i % 10}{i:08d}.jpg.chip.jpg"
        save_image(folder / name, rng, size=(200, 200))
        names.append(name)
    return names


def write_split(path: Path, names: list[str], seed: int = 0) -> None:
    """80/10/10 by a seeded permutation, as a split file both sides read."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    split = np.empty(len(names), dtype=object)
    cut1, cut2 = int(0.8 * len(names)), int(0.9 * len(names))
    split[order[:cut1]], split[order[cut1:cut2]], split[order[cut2:]] = "train", "val", "test"
    path.write_text("sample_id,split\n" + "".join(f"{n},{s}\n" for n, s in zip(names, split)))


# ---- the two sides (each runs in its own process) ----------------------------------------------------
def child_noharm(argv: list[str], report: Path) -> None:
    from noharm.bench.cli import main

    code = main(argv)
    report.write_text(json.dumps({"code": code, "peak_rss_mb": _peak_mb()}))


def child_bare(root: Path, split_file: Path, cache: Path, size: int, precision: str, report: Path) -> None:
    """The same work as the trial, written plainly."""
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageOps

    from noharm.datasets.augment import apply_augment
    from noharm.methods.backbones import build_backbone
    from noharm.methods.training import Classifier

    t0 = time.perf_counter()
    rows = [line.split(",") for line in split_file.read_text().split("\n")[1:] if line]
    names = [r[0] for r in rows]
    split = np.array([r[1] for r in rows])
    y = np.array([int(n.split("_")[1]) for n in names])
    file = cache / f"bare-{size}.npy"
    built = not file.exists()
    if built:
        from concurrent.futures import ThreadPoolExecutor

        out = np.lib.format.open_memmap(cache / "partial.npy", mode="w+", dtype=np.uint8, shape=(len(names), 3, size, size))

        def decode(i: int) -> None:
            with Image.open(root / "UTKFace" / names[i]) as img:
                img.draft("RGB", (size, size))
                img = ImageOps.fit(img.convert("RGB"), (size, size), method=Image.Resampling.BILINEAR)
                out[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(decode, range(len(names))))
        out.flush()
        del out
        os.replace(cache / "partial.npy", file)
    x = torch.from_numpy(np.load(file, mmap_mode="c"))
    t_cache = time.perf_counter() - t0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    yt = torch.from_numpy(y)
    torch.manual_seed(0)
    model = Classifier(build_backbone("resnet18", (3, size, size), "image"), 2)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    train = np.flatnonzero(split == "train")
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    t1 = time.perf_counter()
    model.train()
    order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
    for i in range(0, len(order), BATCH):
        idx = order[i:i + BATCH]
        xb = apply_augment((x[idx].float() - mean) / std, "resized_crop_flip", gen)
        with torch.autocast(**amp):
            loss = F.cross_entropy(model(xb), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    model.eval()
    scored = {}
    with torch.no_grad():
        for name in ("val", "test"):
            idx = torch.from_numpy(np.flatnonzero(split == name))
            parts = []
            for i in range(0, len(idx), BATCH):
                with torch.autocast(**amp):
                    logits = model((x[idx[i:i + BATCH]].float() - mean) / std)
                parts.append(torch.softmax(logits.float(), 1))
            scored[name] = torch.cat(parts).numpy()
    t_eval = time.perf_counter() - t2
    acc = float((scored["test"].argmax(1) == y[split == "test"]).mean())
    report.write_text(json.dumps({
        "code": 0, "peak_rss_mb": _peak_mb(), "cache_seconds": t_cache, "cache_built": built,
        "train_seconds": t_train, "train_rows": len(train), "eval_seconds": t_eval,
        "eval_rows": int(sum(len(v) for v in scored.values())), "test_acc": acc,
    }))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the driver -------------------------------------------------------------------------------------
def run_child(args: list[str]) -> tuple[float, dict]:
    """Run this module as a child with `args`; (wall seconds, the child's report)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report = Path(f.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "noharm.bench.perf.end_to_end", *args, "--report", str(report)],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(report.read_text())
    report.unlink()
    return wall, out


def noharm_run(root: Path, split_file: Path, cache: Path, out: Path, size: int, precision: str,
               train_rows: bool = False) -> dict:
    argv = ["trial", "--dataset", "utkface", "--attribute", "race", "--method", "erm", "--seed", "0",
            "--data-root", str(root), "--option", f"image_size={size}", "--option", f"cache_dir={cache}",
            "--option", f"split_file={split_file}", "--set", "backbone=resnet18", "--set", "optimizer=sgd",
            "--set", f"lr={LR}", "--set", f"batch_size={BATCH}", "--set", "epochs=1", "--set", "schedule=none",
            "--precision", precision, "--selectors", "none", "--device", "cpu", "--quiet", "--force", "--out", str(out)]
    if train_rows:
        argv.append("--train-predictions")
    wall, rep = run_child(["--child-noharm", json.dumps(argv)])
    cost = json.loads((out / "metrics.json").read_text())["cost"]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return {"wall": wall, "peak": rep["peak_rss_mb"], "cost": cost, "test_acc": metrics["test/model/acc"],
            "preds_kb": (out / "predictions.parquet").stat().st_size / 1024}


def bare_run(root: Path, split_file: Path, cache: Path, size: int, precision: str) -> dict:
    wall, rep = run_child(["--child-bare", str(root), str(split_file), str(cache), str(size), precision])
    return {"wall": wall, **rep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="images in the fixture")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--work", help="folder for the fixture and caches (default: a temporary one)")
    parser.add_argument("--child-noharm", help=argparse.SUPPRESS)
    parser.add_argument("--child-bare", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_noharm:
        return child_noharm(json.loads(args.child_noharm), Path(args.report))
    if args.child_bare:
        root, split_file, cache, size, precision = args.child_bare
        return child_bare(Path(root), Path(split_file), Path(cache), int(size), precision, Path(args.report))

    from noharm.bench.perf.common import append_results

    work = Path(args.work or tempfile.mkdtemp(prefix="noharm-e2e-"))
    root, split_file = work / "utkface", work / "split.csv"
    if not root.exists():
        write_split(split_file, write_faces(root, args.n))
    load_before = os.getloadavg()
    rows = ["| px | precision | side | cache | wall (s) | start-up to 1st step (s) | data load (s) | train (img/s) | "
            "eval (img/s) | eval/train speed | peak RSS (MB) | test acc |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for size in args.sizes:
        for precision in args.precisions:
            ncache, bcache = work / f"nc-{size}-{precision}", work / f"bc-{size}-{precision}"
            ncache.mkdir(exist_ok=True)
            bcache.mkdir(exist_ok=True)
            res = {}
            # Interleaved: noharm cold, bare cold, noharm warm, bare warm.
            for state in ("cold", "warm"):
                res[("noharm", state)] = noharm_run(root, split_file, ncache, work / "out", size, precision)
                res[("bare", state)] = bare_run(root, split_file, bcache, size, precision)
            for (side, state), r in res.items():
                if side == "noharm":
                    c = r["cost"]
                    train_rate, eval_rate = c["train_samples_per_second"], c["eval_samples_per_second"]
                    first = c["time_to_first_step_seconds"]
                    rows.append(f"| {size} | {precision} | noharm trial | {state} | {r['wall']:.1f} | {first:.1f} | "
                                f"{c['load_seconds']:.2f} | {train_rate:.1f} | {eval_rate:.1f} | {eval_rate / train_rate:.1f}x | "
                                f"{r['peak']:.0f} | {r['test_acc']:.3f} |")
                else:
                    train_rate = r["train_rows"] / r["train_seconds"]
                    eval_rate = r["eval_rows"] / r["eval_seconds"]
                    rows.append(f"| {size} | {precision} | bare script | {state} | {r['wall']:.1f} | | "
                                f"{r['cache_seconds']:.2f} | {train_rate:.1f} | {eval_rate:.1f} | "
                                f"{eval_rate / train_rate:.1f}x | {r['peak_rss_mb']:.0f} | {r['test_acc']:.3f} |")
                print(rows[-1], flush=True)
            for state in ("cold", "warm"):
                n, b = res[("noharm", state)], res[("bare", state)]
                notes.append(f"- {size} px {precision} {state}: wall bare/noharm {b['wall'] / n['wall']:.2f}, "
                             f"peak RSS noharm/bare {n['peak'] / b['peak_rss_mb']:.2f}")
            if size == max(args.sizes):
                with_train = noharm_run(root, split_file, ncache, work / "out-train", size, precision, train_rows=True)
                warm = res[("noharm", "warm")]
                notes.append(
                    f"- {size} px {precision}, warm trial scoring the training rows too (`--train-predictions`): "
                    f"wall {with_train['wall']:.1f} s vs {warm['wall']:.1f} s without, scoring "
                    f"{with_train['cost']['predict_seconds']:.1f} s vs {warm['cost']['predict_seconds']:.1f} s, "
                    f"peak RSS {with_train['peak']:.0f} vs {warm['peak']:.0f} MB, predictions.parquet "
                    f"{with_train['preds_kb']:.0f} vs {warm['preds_kb']:.0f} KB")
                print(notes[-1], flush=True)
    load_after = os.getloadavg()
    body = "\n".join(rows) + "\n\n" + "\n".join(notes) + (
        f"\n\n{args.n} UTKFace-layout JPEG faces (200x200), split 80/10/10 from one split file; ResNet-18 from "
        f"scratch, SGD lr {LR}, batch {BATCH}, one epoch with random-resized-crop + flip, then validation and "
        "test scored once; CPU. Wall: the whole command in its own process (interpreter, imports, data, "
        "training, scoring, writing the run folder for noharm). 'start-up to 1st step' is noharm's time from "
        "the trial's start to its first training step; 'data load' is reading the images (decoding them into "
        "the cache when cold, memory-mapping it when warm). noharm's eval img/s "
        "is its test pass; the bare script's counts validation and test. Load average before/after: "
        f"{load_before[0]:.1f}/{load_after[0]:.1f} (2 cores shared with other jobs: single runs, noisy).")
    append_results("end_to_end.py: a whole noharm trial vs a bare PyTorch script", body)


if __name__ == "__main__":
    main()
